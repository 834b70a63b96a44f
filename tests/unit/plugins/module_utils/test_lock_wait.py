"""Waiting for a lock another run holds (`_io.flocked` with a LockWait): said at once, bounded by a timeout."""

from __future__ import annotations

import fcntl
import os
import signal

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _stop
from ansible_collections.ironcore.image.plugins.module_utils._io import LockTimeout, LockWait, flocked


def test_a_free_lock_is_taken_without_a_warning(tmp_path):
    warnings: list[str] = []
    with flocked(str(tmp_path / "lock"), wait=LockWait("another fetch into /srv/boot", 0.2, warnings.append)):
        pass
    assert warnings == []


def test_a_held_lock_warns_at_once_and_the_timeout_fails_in_one_line(tmp_path):
    path = str(tmp_path / "lock")
    warnings: list[str] = []
    with flocked(path):
        # Another open file description: flock locks conflict between them even in one process.
        with pytest.raises(LockTimeout) as raised:
            with flocked(path, wait=LockWait("another fetch into /srv/boot", 0.3, warnings.append)):
                pass
    (warning,) = warnings
    assert warning.startswith("waiting for another fetch into /srv/boot since ") and path in warning
    message = str(raised.value)
    assert message.startswith("gave up waiting for another fetch into /srv/boot after 0.3 seconds (lock_timeout")
    assert "\n" not in message and message.endswith("or raise lock_timeout")
    # Released once the holder is gone.
    with flocked(path, wait=LockWait("another fetch", 0.3)):
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_the_interruption_line_names_the_signal():
    assert _stop.message(signal.SIGTERM) == (
        "interrupted by SIGTERM; partial downloads are kept and the next run resumes"
    )
    assert _stop.message(signal.SIGHUP).startswith("interrupted by SIGHUP; ")
