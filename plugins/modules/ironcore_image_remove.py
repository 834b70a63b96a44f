#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_remove
short_description: Remove names of IronCore OS images from an OCI image layout or releases from a registry
version_added: 0.2.0
description:
  - Removes each name of O(names) from the C(index.json) of a local OCI image layout.
  - With O(platform_tags=true) the platform names of each (C(<tag>-<platform>) and C(<tag>-<platform>-<arch>), and
    any other C(<tag>-<suffix>) name holding one of the image's manifests or an index made only of them) go too.
  - Blobs stay where they are, so the image can still be named again; M(ironcore.image.ironcore_image_prune)
    frees the ones no name reaches any more.
  - A name the layout does not record is skipped with a warning that names it; it is not an error, and a run that
    removes nothing reports RV(ignore:changed=false).
  - The signatures (C(sha256-<hex>.sig)) and referrers tag-schema indexes (C(sha256-<hex>)) of the digests that only
    the removed names reached go too, and are listed in RV(removed).
  - Without O(layout), O(names) are registry names (V(registry.example.com/os/gardenlinux:1.0)) and each one's whole
    release goes from its repository (its name, every platform tag and alias pointing into the same image, as
    M(ironcore.image.ironcore_image_info) groups them). The manifests no remaining tag reaches are deleted by digest,
    roots first, then their C(.sig) manifests, referrers-tag-schema indexes and referrers. A manifest a kept tag
    still reaches is never deleted, and before each deletion the tags are listed again, so a tag pushed meanwhile
    keeps what it reaches. The registry must allow deletes (distribution's C(REGISTRY_STORAGE_DELETE_ENABLED=true));
    a registry that does not fails in one line. Its blobs are freed by the registry's own garbage collection. See
    C(docs/lifecycle.md).
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
    details: Reports the names (and on a registry the manifests) that would go; writes nothing.
  diff_mode:
    support: full
    details: Shows each removed name with the digest it pointed at.
  idempotent:
    support: full
    details: Once the names are gone, a second run reports RV(ignore:changed=false).
options:
  layout:
    description:
      - Path of the OCI image layout directory.
      - Without it, O(names) are registry names and their releases are deleted from the registry.
    type: path
  names:
    description:
      - The names to remove, as recorded or in their normalised form (V(registry.example.com/os/gardenlinux)
        means V(registry.example.com/os/gardenlinux:latest)).
    type: list
    elements: str
    required: true
  platform_tags:
    description: Also remove the platform names of each name.
    type: bool
    default: true
seealso:
  - module: ironcore.image.ironcore_image_prune
  - module: ironcore.image.ironcore_image_tag
  - module: ironcore.image.ironcore_image_info
"""

EXAMPLES = r"""
- name: Forget an old build and free its blobs
  block:
    - name: Remove the name and its platform names
      ironcore.image.ironcore_image_remove:
        layout: /var/lib/ironcore/layout
        names: [registry.example.com/os/gardenlinux:0.9]

    - name: Delete the blobs no name reaches
      ironcore.image.ironcore_image_prune:
        layout: /var/lib/ironcore/layout

- name: Delete release 0.9, its platform tags, aliases, signatures and referrers from the registry
  ironcore.image.ironcore_image_remove:
    names: [registry.example.com/os/gardenlinux:0.9]
"""

RETURN = r"""
manifests_deleted:
  description: On a registry, the digests of the manifests deleted (in check mode, that would be), in order.
  returned: without O(layout)
  type: list
  elements: str
  version_added: 0.2.0
removed:
  description:
    - The names removed by this run, platform names, signatures and referrers included, sorted; empty when none
      was there.
  returned: always
  type: list
  elements: str
  sample: [registry.example.com/os/gardenlinux:0.9, registry.example.com/os/gardenlinux:0.9-baremetal]
"""


import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._layout import wait_for_layout_locks
from ansible_collections.ironcore.image.plugins.module_utils._lifecycle import remove_names
from ansible_collections.ironcore.image.plugins.module_utils._module import run
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    REGISTRY_REQUIRED_TOGETHER,
    REQUEST_ARGUMENT_SPEC,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            REQUEST_ARGUMENT_SPEC,
            layout={"type": "path"},
            allow_shared_dest={"type": "bool", "default": False},
            lock_timeout={"type": "float"},
            names={"type": "list", "elements": "str", "required": True},
            platform_tags={"type": "bool", "default": True},
        ),
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    wait_for_layout_locks(module.params["lock_timeout"], module.warn)
    run(module, lambda: _remove(module.params, module.check_mode, module.warn))


def _remove(params: dict, check_mode: bool, warn: t.Callable[[str], None]) -> dict:
    if params["layout"]:
        return remove_names(params, check_mode, warn)
    from ansible_collections.ironcore.image.plugins.module_utils._registry_lifecycle import remove_registry_names

    return remove_registry_names(params, check_mode)


if __name__ == "__main__":
    main()
