# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""Options of the modules that change a layout, documented once: the shared-directory refusal and the lock wait."""

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

    # ironcore.image.shared_layout.lock_timeout: every module that waits for a layout's locks.
    LOCK_TIMEOUT = r"""
options:
  lock_timeout:
    description:
      - Seconds to wait for another run that changes the same layout (a build, a copy into it, a tag, a remove, a
        sign or a prune) before failing in one line. Unset waits as long as that run takes.
      - Only a layout has these locks; with a registry the option changes nothing.
      - A run that has to wait says so at once in a warning naming the layout and since when.
    type: float
    version_added: 0.2.0
"""
