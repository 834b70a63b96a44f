# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Image signatures as Sigstore bundles v0.3, the format cosign 3 writes for `cosign sign`.

A bundle is keyed (`verificationMaterial.publicKey.hint`, no certificate)
and has no transparency-log entry. It holds a DSSE envelope, the same one a
provenance carries (`_provenance.envelope_document()`), around an in-toto
Statement whose predicate type is `https://sigstore.dev/cosign/sign/v1` and
whose subject names the repository and the signed digest. It travels as an
OCI referrer of that digest (`_signatures.py` attaches it). Pure: bytes in,
bytes or a verdict out.
"""

from __future__ import annotations

import base64
import json
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils import _provenance
from ansible_collections.ironcore.image.plugins.module_utils._identity import SignedIdentity
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json
from ansible_collections.ironcore.image.plugins.module_utils._sign import DEFAULT_IDENTITY, SignatureError, fingerprint

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIGN_PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"
# cosign's specs/BUNDLE_SPEC.md: the referrer's annotations say what the bundle holds.
CONTENT_ANNOTATION = "dev.sigstore.bundle.content"
PREDICATE_TYPE_ANNOTATION = "dev.sigstore.bundle.predicateType"
REFERRER_ANNOTATIONS = {CONTENT_ANNOTATION: "dsse-envelope", PREDICATE_TYPE_ANNOTATION: SIGN_PREDICATE_TYPE}
# A bundle is a few KiB; anything far larger is not one we read.
MAX_BUNDLE_SIZE = 256 * 1024


def key_hint(key: t.Any) -> str:
    """The bundle's `publicKey.hint`: the base64 SHA-256 of the DER SubjectPublicKeyInfo (a name, not the key)."""
    return base64.b64encode(bytes.fromhex(fingerprint(key).split(":", 1)[1])).decode("ascii")


def sign_statement(repository: str, digest: str) -> bytes:
    """The in-toto statement `cosign sign` signs: this repository and digest, an empty predicate."""
    return canonical_json(
        {
            "_type": _provenance.STATEMENT_TYPE,
            "subject": [{"name": repository, "digest": {"sha256": digest.split(":", 1)[1]}}],
            "predicateType": SIGN_PREDICATE_TYPE,
            "predicate": {},
        }
    )


def make_bundle(key: t.Any, repository: str, digest: str) -> bytes:
    """The bundle of `digest` in `repository`, signed by `key` (the signature differs each time: ECDSA)."""
    return canonical_json(
        {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": key_hint(key)}, "tlogEntries": []},
            "dsseEnvelope": _provenance.envelope_document(key, sign_statement(repository, digest)),
        }
    )


def open_bundle(data: bytes) -> _provenance.OpenedEnvelope:
    """The DSSE envelope of a bundle, not yet trusted; SignatureError when `data` is no DSSE bundle v0.3."""
    try:
        document = json.loads(data)
        media_type, envelope = document["mediaType"], document["dsseEnvelope"]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise SignatureError("malformed Sigstore bundle: not JSON with mediaType and dsseEnvelope") from exc
    if media_type != BUNDLE_MEDIA_TYPE:
        raise SignatureError(
            "malformed Sigstore bundle: mediaType is %r, not %s" % (str(media_type)[:80], BUNDLE_MEDIA_TYPE)
        )
    return _provenance.envelope_parts(envelope)


def signed_for(data: bytes, public: t.Any, repository: str, digest: str) -> bool:
    """Whether a bundle verifies with `public` for this repository and digest (sign's "already signed")."""
    try:
        check_bundles(digest, repository, [data], [public])
    except SignatureError:
        return False
    return True


def check_bundles(
    digest: str,
    repository: str,
    bundles: t.Sequence[bytes],
    keys: t.Sequence[t.Any],
    identity: SignedIdentity = DEFAULT_IDENTITY,
    tag: str | None = None,
) -> str:
    """The fingerprint of the key whose bundle signs `digest` for `repository`, or SignatureError saying why none does.

    As for the legacy format, the most telling failure is reported: a trusted
    key's statement about another digest or repository says more than an
    unknown key's signature.
    """
    where = "%s@%s" % (repository, digest)
    refusals = _provenance.Refusals()
    other_digests: list[str] = []
    other_repositories: list[str] = []
    other_types: list[str] = []
    for data in bundles:
        try:
            opened = open_bundle(data)
            signer = _provenance.envelope_signer(opened, keys, refusals)
            if signer is None:
                continue
            subjects, predicate_type = _provenance.statement_subjects(opened.payload)
        except SignatureError as exc:
            refusals.malformed.append(str(exc))
            continue
        names = [name for name, named in subjects if named == digest]
        if not names:
            other_digests.extend(named for _name, named in subjects)
        elif predicate_type != SIGN_PREDICATE_TYPE:
            other_types.append(predicate_type[:120])
        elif not any(identity.accepts(repository, tag, name) for name in names):
            other_repositories.extend(names)
        else:
            return fingerprint(signer)
    raise _refusal(where, other_digests, other_repositories, other_types, refusals, identity.describe(repository))


def _refusal(
    where: str,
    other_digests: list[str],
    other_repositories: list[str],
    other_types: list[str],
    refusals: _provenance.Refusals,
    expected: str,
) -> SignatureError:
    if other_digests:
        return SignatureError(
            "%s has a Sigstore bundle for another digest (%s); refusing it"
            % (where, ", ".join(sorted(set(other_digests))))
        )
    if other_repositories:
        return SignatureError(
            "%s has a Sigstore bundle whose statement is for another repository (%s), where %s; refusing it"
            % (where, ", ".join(sorted(set(other_repositories))), expected)
        )
    if other_types:
        return SignatureError(
            "%s has a trusted Sigstore bundle whose predicate type is %s, not %s; refusing it"
            % (where, ", ".join(sorted(set(other_types))), SIGN_PREDICATE_TYPE)
        )
    if refusals.changed:
        return SignatureError(
            "%s has a Sigstore bundle whose payload was changed: the signature by %s does not match it; refusing it"
            % (where, ", ".join(sorted(set(refusals.changed))))
        )
    if refusals.unknown:
        return SignatureError(
            "%s has a Sigstore bundle signed by an unknown key (%s); add its public key to signature_keys"
            " if you trust it" % (where, ", ".join(sorted(set(refusals.unknown))))
        )
    if refusals.malformed:
        return SignatureError("%s has a %s" % (where, refusals.malformed[0]))
    return SignatureError("%s has no Sigstore bundle" % where)
