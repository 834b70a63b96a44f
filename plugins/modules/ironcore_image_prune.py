#!/usr/bin/python
# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0).
# Compatible with the GNU General Public License version 3, ansible-core's license.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ironcore_image_prune
short_description: Delete the blobs of an OCI image layout that no name reaches, or old releases from a registry
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
  - With O(name) a registry repository instead of O(layout), keeps the O(keep) newest releases and those O(keep_tags)
    names, and removes the others with their signatures and referrers, as M(ironcore.image.ironcore_image_remove)
    does. The tags are listed again before each deletion, so a release pushed during the prune is not lost. Check
    mode and diff list what would go. See C(docs/lifecycle.md) for what a registry needs for deletes and for its
    garbage collection.
  - With O(layout) and O(keep), the same selection on the layout, per repository of its names (of O(name) alone
    when given). The names of the other releases are dropped from C(index.json) first, under the layout's locks,
    then the sweep above frees their blobs, signatures and referrers (subject to O(grace_period)).
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
    details: Reports what would be deleted (RV(blobs_removed), RV(bytes_freed), RV(digests)); takes no lock.
  diff_mode:
    support: full
    details: Lists the blobs deleted (capped like RV(digests)) and the signature and referrers names dropped.
  idempotent:
    support: full
    details: Once the unreachable blobs are gone, a second run reports RV(ignore:changed=false).
options:
  layout:
    description:
      - Path of the OCI image layout directory.
      - Without it, O(name) is a registry repository whose old releases are deleted (see O(keep)).
    type: path
  name:
    description:
      - A registry repository without a tag (V(registry.example.com/os/gardenlinux)), instead of O(layout).
      - With O(layout), the repository whose releases O(keep) counts; without it, every repository the layout names,
        each on its own.
      - Its releases (as M(ironcore.image.ironcore_image_info) lists them) are ordered by O(order); the O(keep)
        newest and those with a tag matching O(keep_tags) stay, the others are removed as
        M(ironcore.image.ironcore_image_remove) removes a release, with their signatures and referrers.
    type: str
    version_added: 0.2.0
  keep:
    description:
      - How many of the newest releases to keep (besides those O(keep_tags) keeps), in the registry repository
        O(name) or in O(layout).
      - Without it, a prune of a layout removes no name and frees only what no name reaches.
    type: int
    version_added: 0.2.0
  keep_tags:
    description:
      - With O(keep), shell patterns (V(stable), V(lts-*)); a release with a tag matching one is never removed.
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  order:
    description:
      - With O(keep), what "newest" means. V(semver), the highest version among a release's tags (numbers compare
        as numbers, a leading V(v) ignored, pre-releases before their release); V(created), the creation time the
        image records, then the version; V(tag), the highest tag in plain string order.
    type: str
    choices: [semver, created, tag]
    default: semver
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

- name: Keep the three newest releases and every stable or LTS one in the registry
  ironcore.image.ironcore_image_prune:
    name: registry.example.com/os/gardenlinux
    keep: 3
    keep_tags: [stable, lts-*]

- name: The same retention on a build host's layout, then free what the old releases held
  ironcore.image.ironcore_image_prune:
    layout: /var/lib/ironcore/layout
    keep: 3
    keep_tags: [stable]
"""

RETURN = r"""
releases_removed:
  description:
    - With O(keep), the releases removed (in check mode, that would be), each with C(tags) and C(digest).
    - On a layout the tags are the names as C(index.json) records them.
  returned: with O(keep)
  type: list
  elements: dict
  version_added: 0.2.0
releases_kept:
  description: With O(keep), the releases kept, each with C(tags) and C(digest).
  returned: with O(keep)
  type: list
  elements: dict
  version_added: 0.2.0
manifests_deleted:
  description:
    - With O(keep), the digests of the manifests deleted (in check mode, that would be), in order.
    - On a layout, the documents of the removed releases and of the signatures and referrers dropped with them
      whose blobs were freed.
  returned: with O(keep)
  type: list
  elements: str
  version_added: 0.2.0
removed:
  description:
    - With O(keep), the tags removed (in check mode, that would be), sorted; on a layout, the names of the removed
      releases (their signature and referrers names are in RV(names_removed)).
  returned: with O(keep)
  type: list
  elements: str
  version_added: 0.2.0
blobs_removed:
  description: How many blobs were deleted (in check mode, would be).
  returned: with O(layout)
  type: int
  sample: 7
bytes_freed:
  description: Their size in bytes.
  returned: with O(layout)
  type: int
  sample: 1073741824
digests:
  description: The digests of the deleted blobs, sorted, at most the first 100.
  returned: with O(layout)
  type: list
  elements: str
digests_truncated:
  description: True when more blobs were deleted than RV(digests) lists.
  returned: with O(layout)
  type: bool
blobs_kept_young:
  description: Unreachable blobs kept because they are younger than O(grace_period).
  returned: with O(layout)
  type: int
names_removed:
  description:
    - The signature and referrers names dropped because the digest they are about is no longer reached, sorted.
  returned: with O(layout)
  type: list
  elements: str
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironcore.image.plugins.module_utils._layout import wait_for_layout_locks
from ansible_collections.ironcore.image.plugins.module_utils._lifecycle import prune_layout
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
            grace_period={"type": "int", "default": 3600},
            name={"type": "str"},
            keep={"type": "int"},
            keep_tags={"type": "list", "elements": "str", "default": []},
            order={"type": "str", "choices": ["semver", "created", "tag"], "default": "semver"},
        ),
        required_one_of=[("layout", "name")],
        required_by={"name": "keep"},
        required_together=REGISTRY_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    wait_for_layout_locks(module.params["lock_timeout"], module.warn)
    run(module, lambda: _prune(module.params, module.check_mode))


def _prune(params: dict, check_mode: bool) -> dict:
    if params["layout"]:
        return prune_layout(params, check_mode)
    from ansible_collections.ironcore.image.plugins.module_utils._registry_lifecycle import prune_registry

    return prune_registry(params, check_mode)


if __name__ == "__main__":
    main()
