#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_copy
short_description: Copy an IronCore OS image between registries and OCI image layouts, digests preserved
version_added: 0.2.0
description:
  - Copies the image O(source.name) names, with every manifest, index and blob it reaches, to
    O(destination.name). Either side is a registry repository or, with C(layout), an OCI image layout, so one
    module pulls (registry to layout), mirrors or promotes (registry to registry), publishes (layout to
    registry) and copies layouts.
  - Manifests and indexes are copied as their exact bytes, so every digest at the destination is the source's.
    Every document is checked against its digest and size (and refused above 4 MiB) before anything is written.
  - Order is blobs, then child manifests, then indexes, then the names with the main name last; a failure
    leaves every name at the destination where it was.
  - Blobs the destination already has are skipped. When both sides are on the same registry, blobs are mounted
    from the source repository instead of uploaded (a registry that refuses the mount gets them uploaded). The
    rest are streamed, O(concurrency) at a time, with memory use independent of their size.
  - Into a layout, each blob streams into a partial file beside the blob store, is hashed as it arrives,
    checked, synced and renamed into place; an interrupted copy continues with an HTTP C(Range) request, in the
    same run and on the next one.
  - Into a layout, the bytes of every blob and document the layout lacks (less what kept partial files hold)
    are added up before the first write; when the layout's filesystem has less free space, the copy fails in one
    line giving what is needed, what is free and the shortfall, and writes nothing (not even the layout's
    directories or lock file).
  - When every name at the destination already points at the source's digests nothing is copied and the
    result is not changed.
extends_documentation_fragment:
  - ironcore.image.attributes
  - ironcore.image.shared_layout.lock_timeout
  - ironcore.image.registry.endpoints
  - ironcore.image.progress
author:
  - IronCore image collection maintainers (@ironcore-dev)
attributes:
  check_mode:
    support: full
    details: Reads the source and asks the destination what it has; reports which names would move and which
      blobs would be copied, mounted or skipped, and writes nothing, not even a destination layout.
  diff_mode:
    support: full
    details: Shows the names whose digest moves.
  idempotent:
    support: full
    details: A second copy of an unchanged image reports RV(ignore:changed=false) and moves nothing.
options:
  platform_tags:
    description:
      - Also copy the C(<tag>-<platform>) and C(<tag>-<platform>-<arch>) names that exist at the source (as
        M(ironcore.image.ironcore_image_build) records them), as the same suffixes of the destination tag.
      - The os-images names C(<tag>-metal), C(<tag>-kvm) and their C(-<arch>) names are copied too where the
        source has them.
    type: bool
    default: true
  overwrite:
    description:
      - With V(false), a destination name that already points at a different digest is not moved; the copy
        fails, naming the digest the name points at now, and changes nothing.
      - With V(true), names are moved to the source's image.
    type: bool
    default: true
  carry_referrers:
    description:
      - Also copy, for every index and manifest the image reaches, its cosign signatures (the C(sha256-<hex>.sig)
        tag, as M(ironcore.image.ironcore_image_sign) writes it) and its OCI referrers (block indexes, provenance,
        SBOMs; as the referrers API lists them, or the C(sha256-<hex>) tag-schema index), with their blobs, so a
        signed image stays signed where it is copied to.
      - They are sent after the image's blobs and documents and before its names, so whoever sees a name also
        sees its signatures. Each is sent only when the destination lacks it; a destination C(.sig) with signers
        the source lacks keeps them, and the source's signers are appended.
      - Only C(.sig) layers that are simple-signing payloads naming the digest travel (others can never verify),
        and a merged C(.sig) stops at the 64 signers a verifier reads, the destination's own first.
      - A referrer is listed at the destination the way it supports (its referrers API, else the tag schema).
      - With O(source.mirrors), signatures and referrers are listed at the origin, and at the mirrors only when the
        origin cannot answer. From a mirror, only what can be verified on its own is carried (C(.sig) signatures
        and signed provenance of the digest); the rest is reported in RV(referrers_left_out).
    type: bool
    default: true
  resign_key:
    description:
      - Sign the copy at the destination with this key (a PEM EC P-256 private key file, as
        O(ironcore.image.ironcore_image_sign#module:key)), under the destination's repository, instead of carrying
        the source's signatures.
      - The source's C(.sig) signatures and Sigstore bundles stay behind (they name the source's repository); other
        referrers (provenance, SBOM, block indexes) travel as with O(carry_referrers). The image, its platform
        indexes and its manifests are signed in both formats, as M(ironcore.image.ironcore_image_sign) does,
        after the names are set; signing again with the same key changes nothing.
      - Nodes then verify the copy with the key's public key and no
        O(ironcore.image.ironcore_image_fetch#module:signature_identity).
    type: path
    version_added: 0.2.0
  resign_key_passphrase:
    description: The passphrase of an encrypted O(resign_key); never logged or returned.
    type: str
    version_added: 0.2.0
  allow_shared_dest:
    description:
      - Copy into a O(destination.layout) whose directory, or whose C(blobs) or C(blobs/sha256) directory, other
        users can write to (writable by its group or others without the sticky bit, or owned by another user than
        root or the one running the module).
      - By default such a layout is refused, since whoever can write there could plant links or swap files where
        the module writes blobs and C(index.json).
      - A symbolic link at C(blobs) or C(blobs/sha256) is refused even then.
    type: bool
    default: false
notes:
  - SIGINT, SIGTERM and SIGHUP (Ctrl-C in C(ansible-playbook), a cancelled AWX job) end the module within
    seconds with C(interrupted by SIGTERM; partial downloads are kept and the next run resumes); its locks are
    released.
  - Each side has its own credentials (O(source.username), O(destination.username) and so on); passwords are
    never logged or returned.
  - The requirements are only needed when a side is a registry.
seealso:
  - module: ironcore.image.ironcore_image_push
  - module: ironcore.image.ironcore_image_build
"""

EXAMPLES = r"""
- name: Pull an image from a registry into a local layout (an offline mirror)
  ironcore.image.ironcore_image_copy:
    source:
      name: registry.example.com/os/gardenlinux:1.0
      username: reader
      password: "{{ registry_password }}"
    destination:
      layout: /var/lib/ironcore/mirror

- name: Promote dev to prod on the same registry (blobs are mounted, not uploaded)
  ironcore.image.ironcore_image_copy:
    source:
      name: registry.example.com/os/dev:1.0
    destination:
      name: registry.example.com/os/prod:1.0
    overwrite: false

- name: Mirror to a second registry with its own CA and credentials
  ironcore.image.ironcore_image_copy:
    source:
      name: registry.example.com/os/gardenlinux:1.0
    destination:
      name: mirror.internal:5000/os/gardenlinux
      ca_cert: /etc/pki/mirror-ca.pem
      username: mirror
      password: "{{ mirror_password }}"
    concurrency: 8
  register: mirrored
"""

RETURN = r"""
digest:
  description: Digest of the image (usually its index), the same at the source and the destination.
  returned: always
  type: str
  sample: sha256:0f3c...
names:
  description:
    - The destination names that moved (in check mode, that would move); platform names first, the main name
      last. Empty when nothing changed.
    - For a registry, C(host/repository:tag); for a layout, the name recorded in it.
  returned: always
  type: list
  elements: str
  sample: ["registry.example.com/os/prod:1.0-baremetal", "registry.example.com/os/prod:1.0"]
blobs:
  description:
    - What happened to the image's blobs, and to those of its signatures and referrers (in check mode, what would
      happen).
  returned: always
  type: dict
  contains:
    copied:
      description: Blobs copied (uploaded to a registry, or written into a layout).
      type: int
    bytes:
      description: Bytes moved for copied blobs, including bytes sent again after a failure (in check mode, their size).
      type: int
    skipped:
      description: Blobs the destination already had.
      type: int
    mounted:
      description: Blobs mounted from the source repository on the same registry.
      type: int
elapsed:
  description: Seconds the transfer took, from the first name comparison to the last name set.
  returned: always
  type: float
  sample: 12.5
bytes_per_second:
  description: RV(blobs.bytes) divided by RV(elapsed); V(0) when nothing was moved.
  returned: always
  type: int
  sample: 83886080
signatures:
  description:
    - How many C(.sig) signature manifests were copied or extended (in check mode, would be); see
      O(carry_referrers).
  returned: always
  type: int
  sample: 5
referrers:
  description:
    - How many referrers were copied and listed for their subject (in check mode, would be); see
      O(carry_referrers).
  returned: always
  type: int
  sample: 1
bytes_from_origin:
  description:
    - With O(source.mirrors) only. Bytes the source registry served (documents and blobs), what the mirrors did
      not take off it.
  returned: when O(source.mirrors) is given
  type: int
  sample: 0
  version_added: 0.2.0
mirror_errors:
  description:
    - With O(source.mirrors) only. Each time a mirror failed and the next source was asked instead, with C(url),
      C(digest) (the blob or document asked for, or the tag) and C(reason) (one line).
    - Each entry is also reported as a warning naming the mirror, so that a broken site cache does not go
      unnoticed.
  returned: when O(source.mirrors) is given
  type: list
  elements: dict
  sample: []
  version_added: 0.2.0
referrers_left_out:
  description:
    - With O(source.mirrors) only. The referrers a mirror listed, because the origin could not answer, that were
      not copied, since they cannot be verified on their own (an SBOM or a block index carries no signature, so a
      mirror could have made it up). A signed provenance whose statement names the digest, and C(.sig)
      signatures, are carried from a mirror; everything else only from the origin.
    - Each entry has C(subject) (the digest the referrer is about), C(digest) (the referrer manifest),
      C(artifact_type) and C(mirror) (the url of the mirror that listed it). Copy again while the origin answers
      to carry them.
  returned: when O(source.mirrors) is given
  type: list
  elements: dict
  sample: []
  version_added: 0.2.0
resigned:
  description:
    - With O(resign_key), C(fingerprint) (of the key; null in check mode when the destination lacks the image) and
      C(signed) (the digests that got a new signature, or would); null without O(resign_key).
  returned: always
  type: dict
  sample: {"fingerprint": "SHA256:4b1e...", "signed": ["sha256:0f3c..."]}
  version_added: 0.2.0
retries:
  description:
    - How many registry requests were retried, on either side (after a connection error, a timeout or an answer
      of 429 or 5xx), including resumed blob downloads.
    - Each retry is also reported as a warning naming the operation, the attempt and the reason.
  returned: always
  type: int
  sample: 0
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._copy_image import copy_image
from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._layout import wait_for_layout_locks
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import warn_mirror_errors
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    TRANSFER_ARGUMENT_SPEC,
    endpoint_option,
)


def main() -> None:
    argument_spec = dict(TRANSFER_ARGUMENT_SPEC)
    argument_spec.update(
        source=endpoint_option(mirrors=True),
        destination=endpoint_option(),
        platform_tags={"type": "bool", "default": True},
        overwrite={"type": "bool", "default": True},
        progress_file={"type": "path"},
        allow_shared_dest={"type": "bool", "default": False},
        carry_referrers={"type": "bool", "default": True},
        resign_key={"type": "path", "no_log": False},
        resign_key_passphrase={"type": "str", "no_log": True},
        lock_timeout={"type": "float"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not (module.params["source"].get("layout") and module.params["destination"].get("layout")):
        require(module, "requests")
    if module.params["resign_key"]:
        require(module, "cryptography")
    wait_for_layout_locks(module.params["lock_timeout"], module.warn)
    run(module, lambda: warn_mirror_errors(copy_image(module.params, module.check_mode, module.warn), module.warn))


if __name__ == "__main__":
    main()
