# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""The refusal of a layout that other users can write to, documented once for the modules that change a layout."""

from __future__ import annotations


class ModuleDocFragment:
    # Tag, remove, prune and sign: each writes (and prune deletes) as root in a layout it did not create.
    DOCUMENTATION = r"""
options:
  allow_shared_dest:
    description:
      - Work in a O(layout) whose directory, or whose C(blobs) or C(blobs/sha256) directory, other users can write
        to (writable by its group or others without the sticky bit, or owned by another user than root or the one
        running the module).
      - By default such a layout is refused, since whoever can write there could plant links or swap files where
        the module writes blobs and C(index.json), or deletes blobs, as root.
      - A symbolic link at C(blobs) or C(blobs/sha256) is refused even then.
      - Set it only when everyone who can write to the directory is trusted.
    type: bool
    default: false
    version_added: 0.2.0
"""
