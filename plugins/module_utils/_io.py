# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The one safe-write helper, and streaming hashing.

Every file this collection writes goes through AtomicFile: a temporary file
in the target directory, fsync, then rename. A reader (a PXE server, a
hypervisor, skopeo) therefore sees either the old file or the complete new
one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import typing as t

# Large enough that per-call overhead vanishes next to hashing; small enough
# that memory stays flat whatever the blob size.
CHUNK_SIZE = 4 * 1024 * 1024


def fsync_directory(path: str) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file written beside its destination and renamed over it on commit.

    Used as a context manager; leaving the block without commit() (an
    exception, a digest mismatch) removes the temporary file, so the
    destination keeps whatever it held before.
    """

    def __init__(self, path: str, mode: int | None = None, temp_path: str | None = None, append: bool = False):
        self.path = path
        self.mode = mode
        directory = os.path.dirname(os.path.abspath(path))
        if temp_path is None:
            fd, temp_path = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
            self.file: t.BinaryIO = os.fdopen(fd, "wb")
        else:
            # A caller-chosen temporary name lets a download resume it later. Like
            # mkstemp, private until commit: the file may become a VM disk with mode 0600.
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            fd = os.open(temp_path, flags, 0o600)
            try:
                # A partial kept by an older run may have been created with a wider mode.
                os.fchmod(fd, 0o600)
                self.file = os.fdopen(fd, "ab" if append else "wb")
            except BaseException:
                os.close(fd)
                raise
        self.temp_path = temp_path
        self.keep_partial = False
        self._done = False

    def __enter__(self) -> AtomicFile:
        return self

    def write(self, data: t.Any) -> int:
        return self.file.write(data)

    def commit(self, path: str | None = None) -> None:
        """Make the complete file visible under its final name.

        `path` names the destination when it was only known once the data
        was seen (a blob named by its digest); it must be in the same
        directory as the temporary file.
        """
        if path is not None:
            self.path = path
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.mode is not None:
            os.chmod(self.temp_path, self.mode)
        elif not os.path.exists(self.path):
            # mkstemp creates 0600; a new file gets the usual umask-derived mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.temp_path, 0o666 & ~umask)
        else:
            os.chmod(self.temp_path, os.stat(self.path).st_mode & 0o7777)
        os.replace(self.temp_path, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        if not self.file.closed:
            self.file.close()
        if not self.keep_partial:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass

    def __exit__(self, *exc_info: t.Any) -> None:
        self.discard()


def write_bytes_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so that no reader ever sees a partial file."""
    with AtomicFile(path, mode=mode) as out:
        out.write(data)
        out.commit()


class HashingCounter:
    """sha256 and byte count of everything that passes through."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, data: t.Any) -> None:
        self._sha.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def iter_chunks(stream: t.BinaryIO, chunk_size: int = CHUNK_SIZE) -> t.Iterator[memoryview]:
    """Read a stream in fixed chunks through one reused buffer."""
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    readinto = getattr(stream, "readinto", None)
    while True:
        if readinto is not None:
            count = readinto(view)
            if not count:
                return
            yield view[:count]
        else:
            data = stream.read(chunk_size)
            if not data:
                return
            yield memoryview(data)


def hash_file(path: str) -> tuple[str, int]:
    """The sha256 digest and size of a file, read once in chunks."""
    counter = HashingCounter()
    with open(path, "rb") as stream:
        for chunk in iter_chunks(stream):
            counter.update(chunk)
    return counter.digest, counter.size


def copy_and_hash(source: t.BinaryIO, out: t.Any) -> HashingCounter:
    """Stream `source` into `out`, hashing on the way: one read of the data."""
    counter = HashingCounter()
    for chunk in iter_chunks(source):
        counter.update(chunk)
        out.write(chunk)
    return counter
