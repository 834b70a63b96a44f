#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_push
short_description: Push an IronCore OS image from an OCI image layout to a registry
version_added: 0.1.0
description:
  - Pushes the image recorded under O(name) in an OCI image layout (as written by
    M(ironcore.image.ironcore_image_build)) to an OCI registry, as O(destination).
  - Order is blobs, then child manifests, then indexes, then the tags with the main tag last; a failure leaves
    every tag where it was. Manifests and indexes are sent as the exact bytes of the layout, so the digest at the
    registry is the layout's.
  - Blobs the repository already has are skipped after a C(HEAD). Blobs found in another repository of the
    destination registry are mounted instead of uploaded, from the repository of O(name) when O(name) is on
    the destination registry, then from the repositories of O(mount_from); a registry that refuses the mount gets
    the blob uploaded. The rest are streamed from disk, O(concurrency) at a time, with memory use independent
    of their size.
  - When every tag already points at the image's digest nothing is sent and the result is not changed.
  - The push is a copy from the layout to the registry by the same engine as M(ironcore.image.ironcore_image_copy).
extends_documentation_fragment:
  - ironcore.image.attributes
  - ironcore.image.registry
  - ironcore.image.registry.transfer
  - ironcore.image.progress
author:
  - IronCore image collection maintainers (@ironcore-dev)
attributes:
  check_mode:
    support: full
    details: Sends only C(HEAD) and C(GET) requests and reports which tags would move and which blobs would be
      uploaded, mounted or skipped.
  diff_mode:
    support: full
    details: Shows the tags whose digest moves.
  idempotent:
    support: full
    details: A second push of the same image reports RV(ignore:changed=false) and uploads nothing.
options:
  layout:
    description:
      - Path of the OCI image layout directory holding the image.
    type: path
    required: true
  name:
    description:
      - The reference the image is recorded under in the layout, for example V(registry.example.com/os/gardenlinux:1.0).
    type: str
    required: true
  destination:
    description:
      - Registry reference to push to, C(host[:port]/repository[:tag]). Defaults to O(name).
      - Without a tag, the tag of O(name) is used. A digest is refused.
    type: str
  platform_tags:
    description:
      - Also push the C(<tag>-<platform>) and C(<tag>-<platform>-<arch>) names recorded by the build, as the same
        suffixes of the destination tag.
    type: bool
    default: true
  platform_tag_aliases:
    description:
      - With O(platform_tags=true), also push the os-images names C(<tag>-metal), C(<tag>-kvm),
        C(<tag>-metal-<arch>) and C(<tag>-kvm-<arch>) that the build recorded (its O(platform_tags=true) and
        O(ironcore.image.ironcore_image_build#module:platform_tag_aliases=true)). They point at the same
        digests as the C(-baremetal) and C(-virtualization) names, so no blob is sent twice.
    type: bool
    default: true
    version_added: 0.2.0
  chunk_size:
    description:
      - V(0) sends each blob in one streaming C(PUT).
      - A positive number of bytes sends blobs in C(PATCH) chunks of that size (or the registry's
        C(OCI-Chunk-Min-Length) when larger), following the C(Range) the registry answers with; an interrupted
        chunk resumes where the registry says the data ends.
    type: int
    default: 0
  mount_from:
    description:
      - Repositories on the same registry to mount blobs from instead of uploading them, tried in order.
    type: list
    elements: str
    default: []
  overwrite:
    description:
      - With V(false), a tag that already points at a different digest is not moved; the push fails, naming the
        digest the tag points at now, and changes nothing.
      - With V(true), tags are moved to the image.
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
    type: bool
    default: true
notes:
  - Credentials come from O(username)/O(password), else from O(docker_config); the password is never logged or
    returned.
seealso:
  - module: ironcore.image.ironcore_image_build
  - module: ironcore.image.ironcore_image_fetch
  - module: ironcore.image.ironcore_image_copy
"""

EXAMPLES = r"""
- name: Push an image to the registry its name points at
  ironcore.image.ironcore_image_push:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.0
    username: builder
    password: "{{ registry_password }}"

- name: Publish the same image under another repository, mounting the blobs pushed before
  ironcore.image.ironcore_image_push:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.0
    destination: registry.example.com/os/stable:1.0
    mount_from: [os/gardenlinux]
    ca_cert: /etc/pki/registry-ca.pem
  register: pushed
"""

RETURN = r"""
destination:
  description: The normalised destination reference, with its tag.
  returned: always
  type: str
  sample: registry.example.com/os/gardenlinux:1.0
digest:
  description: Digest of the image (usually its index) as stored by the registry; identical to the layout's.
  returned: always
  type: str
  sample: sha256:0f3c...
tags:
  description:
    - The tags pushed, that is, those that did not already point at the image (in check mode, those that would be).
    - Platform tags first, the main tag last. Empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["1.0-baremetal-amd64", "1.0-virtualization-amd64", "1.0-baremetal", "1.0-virtualization", "1.0"]
blobs:
  description:
    - What happened to the image's blobs, and to those of its signatures and referrers (in check mode, what would
      happen).
  returned: always
  type: dict
  contains:
    uploaded:
      description: Blobs uploaded.
      type: int
    bytes_uploaded:
      description: Bytes sent for blob uploads, including resent bytes after a failure.
      type: int
    skipped:
      description: Blobs the repository already had.
      type: int
    mounted:
      description: Blobs mounted from a repository of O(mount_from).
      type: int
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
retries:
  description:
    - How many registry requests were retried (after a connection error, a timeout or an answer of 429 or 5xx).
    - Each retry is also reported as a warning naming the operation, the attempt and the reason.
  returned: always
  type: int
  sample: 0
elapsed:
  description: Seconds the transfer took, from the first tag comparison to the last tag set.
  returned: always
  type: float
  sample: 12.5
bytes_per_second:
  description: RV(blobs.bytes_uploaded) divided by RV(elapsed); V(0) when nothing was sent.
  returned: always
  type: int
  sample: 83886080
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._deps import require
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._push import push_image
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    REGISTRY_ARGUMENT_SPEC,
    REGISTRY_REQUIRED_TOGETHER,
)


def main() -> None:
    argument_spec = dict(REGISTRY_ARGUMENT_SPEC)
    argument_spec.update(
        layout={"type": "path", "required": True},
        name={"type": "str", "required": True},
        destination={"type": "str"},
        platform_tags={"type": "bool", "default": True},
        platform_tag_aliases={"type": "bool", "default": True},
        chunk_size={"type": "int", "default": 0},
        mount_from={"type": "list", "elements": "str", "default": []},
        overwrite={"type": "bool", "default": True},
        progress_file={"type": "path"},
        carry_referrers={"type": "bool", "default": True},
    )
    module = AnsibleModule(
        argument_spec=argument_spec, required_together=REGISTRY_REQUIRED_TOGETHER, supports_check_mode=True
    )
    require(module, "requests")
    run(module, lambda: push_image(module.params, module.check_mode, module.warn))


if __name__ == "__main__":
    main()
