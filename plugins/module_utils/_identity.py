# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Which signed identity a verifier accepts for an image: containers-policy.json's `signedIdentity`.

A signature names a reference (the simple-signing payload's
`docker-reference`, the bundle statement's subject name); the image is
fetched under another. The rules are those of containers/image
(docs/containers-policy.json.5.md), for the four kinds fetch offers:

- matchRepoDigestOrExact (the default): fetched by digest, the signed
  repository must be the image's; fetched by tag, a signed reference with a
  tag must be exactly the image's. Our signatures, like cosign's, name only
  the repository; that names the image's repository whichever way it is
  fetched (the digest is checked apart), so the default stays as strict as
  the collection always was.
- matchRepository: the signed repository is the image's; tags are ignored.
- exactRepository: the signed repository is `repository`, whatever the
  image is called (a layout on a disk, a mirror under another name).
- remapIdentity: when the image's repository is `prefix` or lies under it
  (`prefix` then `/`), that prefix is replaced by `signed_prefix`, and the
  result is matched as matchRepoDigestOrExact; any other image as it is.

References are compared as written (fully qualified, as this collection's
names always are): `docker.io/library` is not expanded. Pure.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError

IDENTITY_TYPES = ("matchRepoDigestOrExact", "matchRepository", "exactRepository", "remapIdentity")
DEFAULT_TYPE = "matchRepoDigestOrExact"

# The option every verifying module and role takes (doc fragment: signature_identity).
SIGNATURE_IDENTITY_SPEC: dict[str, t.Any] = {
    "type": "dict",
    "options": {
        "type": {"type": "str", "default": DEFAULT_TYPE, "choices": list(IDENTITY_TYPES)},
        "repository": {"type": "str"},
        "prefix": {"type": "str"},
        "signed_prefix": {"type": "str"},
    },
}


class IdentityError(ImageError):
    """signature_identity is not a policy that can be applied; one line."""


def split_reference(reference: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of a reference as written; tag and digest None when absent."""
    name, _at, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def _check_repository(value: t.Any, option: str) -> str:
    """A repository or prefix: a non-empty name without a tag or digest."""
    if not isinstance(value, str) or not value.strip("/"):
        raise IdentityError("signature_identity.%s must be a repository such as registry.example.com/os" % option)
    repository, tag, digest = split_reference(value)
    if tag is not None or digest is not None or repository != value or value.endswith("/"):
        raise IdentityError(
            "signature_identity.%s %s must name a host, namespace or repository, without a tag, digest or"
            " trailing /" % (option, value)
        )
    return value


def matches_prefix(repository: str, prefix: str) -> bool:
    """Whether `repository` is `prefix` or lies under it (the next character a /), as containers/image matches."""
    return repository == prefix or (repository.startswith(prefix) and repository[len(prefix)] == "/")


@dataclass(frozen=True)
class SignedIdentity:
    """A signedIdentity policy; `accepts` decides for one signed reference."""

    type: str = DEFAULT_TYPE
    repository: str | None = None
    prefix: str | None = None
    signed_prefix: str | None = None

    @classmethod
    def from_params(cls, value: t.Mapping[str, t.Any] | None) -> SignedIdentity:
        """The policy of a signature_identity option (None: the default); IdentityError when it is incomplete."""
        if not value:
            return cls()
        kind = value.get("type") or DEFAULT_TYPE
        if kind not in IDENTITY_TYPES:
            raise IdentityError("signature_identity.type %s is none of %s" % (kind, ", ".join(IDENTITY_TYPES)))
        wanted = {"exactRepository": ("repository",), "remapIdentity": ("prefix", "signed_prefix")}.get(kind, ())
        for option in ("repository", "prefix", "signed_prefix"):
            given = value.get(option) is not None
            if given and option not in wanted:
                raise IdentityError("signature_identity.%s does not apply to type %s; leave it out" % (option, kind))
            if not given and option in wanted:
                raise IdentityError("signature_identity type %s needs %s" % (kind, " and ".join(wanted)))
        checked = {option: _check_repository(value[option], option) for option in wanted}
        return cls(kind, **checked)

    def intended(self, repository: str) -> str:
        """The repository a signature must name for an image in `repository` (remapped for remapIdentity)."""
        if self.type == "exactRepository":
            return str(self.repository)
        if self.type == "remapIdentity" and matches_prefix(repository, str(self.prefix)):
            return str(self.signed_prefix) + repository[len(str(self.prefix)) :]
        return repository

    def accepts(self, repository: str, tag: str | None, signed: str) -> bool:
        """Whether a signature naming `signed` holds for the image in `repository`, fetched by `tag` (None: digest)."""
        signed_repository, signed_tag, signed_digest = split_reference(signed)
        intended = self.intended(repository)
        if signed_repository != intended:
            return False
        if self.type in ("matchRepository", "exactRepository"):
            return True
        # matchRepoDigestOrExact, also after a remap: a tag or digest in the signed reference must be exact.
        if tag is None:
            return True
        if signed_digest is not None:
            return False
        return signed_tag is None or signed_tag == tag

    def describe(self, repository: str) -> str:
        """What the policy wants, for a refusal: `signature_identity <type> expects <repository>`."""
        return "signature_identity %s expects %s" % (self.type, self.intended(repository))
