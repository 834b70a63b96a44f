#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_prune
short_description: Delete the blobs of an OCI image layout that no name reaches
version_added: 0.2.0
description:
  - Walks every entry of the layout's C(index.json) (named or not) through its indexes and manifests to the
    configs and layers, and deletes every blob under C(blobs/sha256) that none of them reaches.
  - Safe beside M(ironcore.image.ironcore_image_build) runs into the same layout, and beside
    M(ironcore.image.ironcore_image_copy) and M(ironcore.image.ironcore_image_sign) runs into it. Each holds the
    layout's blob lock (shared) from the first blob it looks at until its names are recorded; a prune takes that
    lock exclusively, so it waits for running writers to name their blobs, and writers that start meanwhile wait
    for the prune. Names cannot change while a prune runs.
  - Lists and deletes blobs through descriptors of C(blobs) and C(blobs/sha256) opened without following links,
    so nothing outside the layout is deleted; see O(allow_shared_dest).
  - Writers that do not take the lock (C(skopeo copy) into the layout, older releases of this collection) are
    covered by O(grace_period) instead; see there.
  - Refuses to delete anything when a name reaches a document that is missing or damaged, and says which name,
    because what such a document would reach cannot be known.
  - Signatures (C(sha256-<hex>.sig)) and referrers tag-schema indexes (C(sha256-<hex>)) are kept, with what they
    reach, as long as the digest they are about is reached; they never keep that digest alive themselves. Those
    whose digest no name reaches any more (and whose document is older than O(grace_period)) are dropped from
    C(index.json) and listed in RV(names_removed), and their blobs are freed.
author:
  - IronCore image collection maintainers (@ironcore-dev)
extends_documentation_fragment:
  - ironcore.image.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be deleted (RV(blobs_removed), RV(bytes_freed), RV(digests)); takes no lock.
  diff_mode:
    support: full
    details: Lists the blobs deleted (capped like RV(digests)) and the signature and referrers names dropped.
  idempotent:
    support: full
    details: Once the unreachable blobs are gone, a second run reports RV(ignore:changed=false).
options:
  layout:
    description: Path of the OCI image layout directory.
    type: path
    required: true
  allow_shared_dest:
    description:
      - Work in a O(layout) whose directory, or whose C(blobs) or C(blobs/sha256) directory, other users can write
        to (writable by its group or others without the sticky bit, or owned by another user than root or the one
        running the module).
      - By default such a layout is refused, since whoever can write there could plant links or swap files where
        the module deletes blobs and writes C(index.json), as root.
      - A symbolic link at C(blobs) or C(blobs/sha256) is refused even then.
      - Set it only when everyone who can write to the directory is trusted.
    type: bool
    default: false
    version_added: 0.2.0
  grace_period:
    description:
      - Seconds. An unreachable blob whose modification time is more recent than this is kept, and counted
        in RV(blobs_kept_young).
      - It protects blobs that a writer which does not take the layout's blob lock has stored and not yet named.
        The default of one hour is well above the time such a writer needs between its first blob and its name
        for an IronCore image of a few GiB (minutes, even when pulled over a slow link), and keeping a blob one
        prune longer costs only disk space.
      - V(0) relies on the lock alone; use it when only this collection writes into the layout.
      - A writer without the lock that finds an old blob already stored reuses it without touching it, so no
        grace period covers it; do not prune while such a tool writes into the layout.
    type: int
    default: 3600
seealso:
  - module: ironcore.image.ironcore_image_remove
  - module: ironcore.image.ironcore_image_tag
  - module: ironcore.image.ironcore_image_build
  - module: ironcore.image.ironcore_image_info
"""

EXAMPLES = r"""
- name: What would a prune free?
  ironcore.image.ironcore_image_prune:
    layout: /var/lib/ironcore/layout
  check_mode: true
  register: would

- name: Free the blobs of removed images; only this collection writes here
  ironcore.image.ironcore_image_prune:
    layout: /var/lib/ironcore/layout
    grace_period: 0
  register: pruned

- name: Report
  ansible.builtin.debug:
    msg: "{{ pruned.blobs_removed }} blobs, {{ pruned.bytes_freed }} bytes freed"
"""

RETURN = r"""
blobs_removed:
  description: How many blobs were deleted (in check mode, would be).
  returned: always
  type: int
  sample: 7
bytes_freed:
  description: Their size in bytes.
  returned: always
  type: int
  sample: 1073741824
digests:
  description: The digests of the deleted blobs, sorted, at most the first 100.
  returned: always
  type: list
  elements: str
digests_truncated:
  description: True when more blobs were deleted than RV(digests) lists.
  returned: always
  type: bool
blobs_kept_young:
  description: Unreachable blobs kept because they are younger than O(grace_period).
  returned: always
  type: int
names_removed:
  description:
    - The signature and referrers names dropped because the digest they are about is no longer reached, sorted.
  returned: always
  type: list
  elements: str
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._lifecycle import prune_layout
from ansible_collections.ironcore.image.plugins.module_utils._module import run


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "layout": {"type": "path", "required": True},
            "allow_shared_dest": {"type": "bool", "default": False},
            "grace_period": {"type": "int", "default": 3600},
        },
        supports_check_mode=True,
    )
    run(module, lambda: prune_layout(module.params, module.check_mode))


if __name__ == "__main__":
    main()
