# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""signature_identity of fetch and info (and the provision role), documented once."""

from __future__ import annotations


class ModuleDocFragment:
    # The option spec is _identity.SIGNATURE_IDENTITY_SPEC; the rules are containers-policy.json's signedIdentity.
    DOCUMENTATION = r"""
options:
  signature_identity:
    description:
      - Which repository a signature must name to count for the image, as containers-policy.json's
        C(signedIdentity). Unset, V(matchRepoDigestOrExact), as strict as before this option existed.
      - References are compared as written (fully qualified; C(docker.io/library) is not expanded). See
        C(docs/signing.md) for promotion and air gaps.
    type: dict
    version_added: 0.2.0
    suboptions:
      type:
        description:
          - V(matchRepoDigestOrExact) - the signed repository is the image's; a signed reference with a tag must
            match the tag O(name) gives exactly (our signatures, like cosign's, name only the repository).
          - V(matchRepository) - the signed repository is the image's; tags are ignored.
          - V(exactRepository) - the signed repository is O(signature_identity.repository), whatever the image is
            called (a layout carried across an air gap, a mirror under another name).
          - V(remapIdentity) - when the image's repository is O(signature_identity.prefix) or lies under it,
            that prefix is replaced by O(signature_identity.signed_prefix) and the result matched as
            V(matchRepoDigestOrExact); an image outside the prefix is matched as it is. For a promoted copy.
        type: str
        choices: [matchRepoDigestOrExact, matchRepository, exactRepository, remapIdentity]
        default: matchRepoDigestOrExact
      repository:
        description: With V(exactRepository) only (and required), the repository the signatures were made for.
        type: str
      prefix:
        description:
          - With V(remapIdentity) only (and required), a host, namespace or repository (no tag, digest or trailing
            C(/)) matched against the image's repository on a C(/) boundary.
        type: str
      signed_prefix:
        description: With V(remapIdentity) only (and required), what replaces O(signature_identity.prefix).
        type: str
"""
