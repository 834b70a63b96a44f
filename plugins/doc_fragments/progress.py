# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""The progress record of push and copy, documented once."""

from __future__ import annotations


class ModuleDocFragment:
    # Push and copy: the same record ironcore_image_fetch keeps in its state directory, at a path of the task's choice.
    DOCUMENTATION = r"""
options:
  progress_file:
    description:
      - While it runs (not in check mode), keep a progress record at this path, the same record
        M(ironcore.image.ironcore_image_fetch) keeps in its state directory. Unset, no record is kept.
      - "The record is JSON, replaced atomically at most every half second (or every 64 MiB), never more than half
        a second behind the bytes (also while a transfer stalls), and once at the end:
        C(phase) (V(plan), V(copy) while blobs move, V(commit) while documents and names are written, then
        V(finished) or V(failed)), C(done) (V(true) once the names are set), C(started) and C(updated) (Unix
        time), C(bytes_done) and C(bytes_total) of the blobs this run sends (blobs the destination has, or
        mounts, count for nothing), and the same two per blob under C(layers.<digest>)."
      - "The first record replaces an earlier run's as the task starts, so with C(async) and C(poll: 0) a play can
        read it with M(ansible.builtin.slurp) while the transfer runs; the C(build) role does so."
      - The directory must exist; a record that cannot be written when the task starts fails it in one line.
    type: path
    version_added: 0.2.0
"""
