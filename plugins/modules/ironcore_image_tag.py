#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_tag
short_description: Add names to an IronCore OS image in an OCI image layout or a registry
version_added: 0.2.0
description:
  - Points each name of O(tags) at the image that O(name) already names in a local OCI image layout, the way
    C(docker tag) does for a local image. No blob is copied or written; only C(index.json) changes.
  - With O(platform_tags=true), the platform names of O(name) follow, for example C(1.0-baremetal) and
    C(1.0-virtualization-amd64) give C(1.1-baremetal) and C(1.1-virtualization-amd64) for the tag C(1.1). Which
    ones there are is read off the layout, as every C(<tag>-<suffix>) name that points at one of the image's
    manifests, or at an index made only of them, so aliases follow too and other images (C(1.0-rc1)) never do.
  - A name that already points at another digest is left alone and the task fails, unless O(force=true).
  - Decided and written under the layout's lock, so concurrent builds, tags and removes cannot lose names.
  - Without O(layout), O(name) is a registry name (V(registry.example.com/os/gardenlinux:1.0)) and each new tag is
    put into its repository by putting the existing manifests under the new tag, byte for byte; no blob moves. The
    platform tags and aliases of O(name) follow (every C(<tag>-<suffix>) tag whose manifests all belong to the image,
    as M(ironcore.image.ironcore_image_info) groups a release). Manifests are tagged before the indexes that list
    them, the new name last. See C(docs/lifecycle.md).
author:
  - IronCore image collection maintainers (@ironcore-dev)
extends_documentation_fragment:
  - ironcore.image.shared_layout
  - ironcore.image.shared_layout.lock_timeout
  - ironcore.image.attributes
  - ironcore.image.registry
attributes:
  check_mode:
    support: full
    details: Reports the names that would be added or moved; writes nothing.
  diff_mode:
    support: full
    details: Shows each added or moved name with the digest it pointed at before (null when new) and after.
  idempotent:
    support: full
    details: Names that already point at the image are not rewritten; a second run reports RV(ignore:changed=false).
options:
  layout:
    description:
      - Path of the OCI image layout directory, as written by M(ironcore.image.ironcore_image_build).
      - Without it, O(name) is a registry name and the tags are added in the registry.
    type: path
  name:
    description:
      - A name the layout already records, for example V(registry.example.com/os/gardenlinux:1.0). Without a tag,
        V(latest) is meant.
      - Without O(layout), a name in a registry; a digest (V(registry.example.com/os/gardenlinux@sha256:0f3c...))
        works too, without platform tags.
    type: str
    required: true
  tags:
    description:
      - The new names. A bare tag such as V(1.1) or V(stable) is a tag in the repository of O(name); anything else
        is a full reference such as V(registry.example.com/os/gardenlinux:stable), in any repository.
      - On a registry (without O(layout)), a full reference must be in the repository of O(name), as a tag there moves
        no blob; M(ironcore.image.ironcore_image_copy) puts an image into another repository.
      - An entry that is neither a valid tag nor a valid reference, or that names a digest, fails the task before
        anything changes.
    type: list
    elements: str
    required: true
  platform_tags:
    description: Give every new name the counterparts of the platform names O(name) has in the layout (or registry).
    type: bool
    default: true
  force:
    description:
      - Move names that already point at a different digest. Without it such a name fails the task, with the
        digest it points at, and nothing changes.
    type: bool
    default: false
    aliases: [overwrite]
seealso:
  - module: ironcore.image.ironcore_image_build
  - module: ironcore.image.ironcore_image_remove
  - module: ironcore.image.ironcore_image_prune
  - module: ironcore.image.ironcore_image_info
  - module: ironcore.image.ironcore_image_push
"""

EXAMPLES = r"""
- name: Promote a build to stable, with its platform names
  ironcore.image.ironcore_image_tag:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.0
    tags: [stable, registry.example.com/os/gardenlinux:1.0.1]

- name: Move latest to the new build
  ironcore.image.ironcore_image_tag:
    layout: /var/lib/ironcore/layout
    name: registry.example.com/os/gardenlinux:1.1
    tags: [latest]
    force: true

- name: Tag release 1.0 as stable in the registry, with its platform tags and aliases
  ironcore.image.ironcore_image_tag:
    name: registry.example.com/os/gardenlinux:1.0
    tags: [stable]
    overwrite: true
"""

RETURN = r"""
name:
  description: O(name) as the layout records it.
  returned: always
  type: str
  sample: registry.example.com/os/gardenlinux:1.0
digest:
  description: Digest of the image O(name) points at, which every added name now points at too.
  returned: always
  type: str
  sample: sha256:0f3c...
names:
  description: The names added or moved by this run (platform names included), sorted; empty when none changed.
  returned: always
  type: list
  elements: str
  sample: [registry.example.com/os/gardenlinux:stable, registry.example.com/os/gardenlinux:stable-baremetal]
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._layout import wait_for_layout_locks
from ansible_collections.ironcore.image.plugins.module_utils._lifecycle import tag_image
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    REGISTRY_REQUIRED_TOGETHER,
    REQUEST_ARGUMENT_SPEC,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            **REQUEST_ARGUMENT_SPEC,
            "layout": {"type": "path"},
            "allow_shared_dest": {"type": "bool", "default": False},
            "lock_timeout": {"type": "float"},
            "name": {"type": "str", "required": True},
            "tags": {"type": "list", "elements": "str", "required": True},
            "platform_tags": {"type": "bool", "default": True},
            "force": {"type": "bool", "default": False, "aliases": ["overwrite"]},
        },
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    wait_for_layout_locks(module.params["lock_timeout"], module.warn)
    run(module, lambda: _tag(module.params, module.check_mode))


def _tag(params: dict, check_mode: bool) -> dict:
    if params["layout"]:
        return tag_image(params, check_mode)
    from ansible_collections.ironcore.image.plugins.module_utils._registry_lifecycle import tag_registry

    return tag_registry(params, check_mode)


if __name__ == "__main__":
    main()
