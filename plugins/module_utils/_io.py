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

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import queue
import secrets
import stat
import threading
import time
import typing as t
import weakref
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, one_line

# Large enough that per-call overhead vanishes next to hashing; small enough
# that memory stays flat whatever the blob size.
CHUNK_SIZE = 4 * 1024 * 1024
# Bytes an AtomicFile takes before it asks the kernel to start writing them out (see AtomicFile.write).
WRITEBACK_STEP = 8 * 1024 * 1024

# Every file we create or reuse is opened through these: never through a symlink,
# never inherited by a child process, and without blocking on a planted FIFO.
_SAFE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafeFileError(ImageError, OSError):
    """A file or directory we were about to use is not what it must be (a symlink, a hard link, someone else's).

    Still an OSError (EPERM), so callers that handle a failed open handle this too.
    """

    def __init__(self, message: str):
        OSError.__init__(self, errno.EPERM, one_line(message))
        self.retryable = False
        self.option = None


class TooLargeError(UnsafeFileError):
    """A file that is read whole is larger than its cap."""


def open_directory(path: str, follow_symlinks: bool = True) -> int:
    """A descriptor of a directory, so that what is done inside it stays inside it even if its path is swapped."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except OSError as exc:
        # Linux says ENOTDIR, not ELOOP, for a symlink opened with O_DIRECTORY | O_NOFOLLOW.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise UnsafeFileError("%s is a symbolic link, not a directory; refusing to use it" % path) from exc
        raise


def shared_directory_reason(path: str | int) -> str | None:
    """Why another user could plant or swap files in `path` (a path or an open directory), else None."""
    status = os.stat(path)
    if status.st_uid not in (0, os.geteuid()):
        return "it is owned by uid %d" % status.st_uid
    if status.st_mode & 0o022 and not status.st_mode & stat.S_ISVTX:
        return "it is writable by its group or others (mode %04o)" % (status.st_mode & 0o7777)
    return None


def _check_private(fd: int, name: str, require_owner: bool = True) -> os.stat_result:
    """The open file must be a regular file of ours with no other name (a hard link would let us write elsewhere)."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise UnsafeFileError("%s is not a regular file; refusing to use it" % name)
    if status.st_nlink != 1:
        raise UnsafeFileError("%s has %d hard links; refusing to write to it" % (name, status.st_nlink))
    if require_owner and status.st_uid != os.geteuid():
        raise UnsafeFileError("%s is owned by uid %d, not by us; refusing to use it" % (name, status.st_uid))
    return status


def open_private(name: str, dir_fd: int, exclusive: bool = False, require_owner: bool = True) -> int:
    """Open (creating it 0600 when missing) a file of ours inside `dir_fd`, read-write, never through a link.

    With `exclusive`, the file must not exist yet. A file that does exist is
    used only when it is a regular file with a single link, which we own
    unless `require_owner` is False (a lock file, which is never written).
    """
    flags = os.O_RDWR | _SAFE_FLAGS
    try:
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        if exclusive:
            raise
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeFileError("%s is a symbolic link; refusing to follow it" % name) from exc
            raise
    try:
        _check_private(fd, name, require_owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str, limit: int, follow_symlinks: bool = True, private: bool = False) -> bytes:
    """A small regular file read whole, refused when larger than `limit` (whatever its size looks like).

    `private` also requires that it is ours and not writable by others, for a
    record whose content we rely on.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError("%s is a symbolic link; refusing to follow it" % path) from exc
        raise
    with os.fdopen(fd, "rb") as stream:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise UnsafeFileError("%s is not a regular file; refusing to read it" % path)
        if private and (status.st_uid != os.geteuid() or status.st_mode & 0o022):
            raise UnsafeFileError("%s is not ours alone to write; refusing to trust it" % path)
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError("%s is larger than %d bytes; refusing to read it" % (path, limit))
    return data


def parse_json(data: bytes | str) -> t.Any:
    """json.loads, with a document nested too deeply for the parser reported as a ValueError, not a traceback."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("the JSON document is nested too deeply") from exc


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(document: t.Mapping[str, t.Any]) -> bytes:
    """Sorted keys, no insignificant white space, UTF-8: same input, same bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def file_identity(path: str) -> list[int]:
    """What must all stay equal for a cached digest of the file to be trusted."""
    return stat_identity(os.stat(path))


def stat_identity(status: os.stat_result) -> list[int]:
    """Device, inode, size, mtime and ctime: an in-place rewrite that restores the mtime still moves the ctime."""
    return [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


class LockTimeout(ImageError):
    """Another run held the lock for longer than the caller was willing to wait (`lock_timeout`)."""


@dataclass
class LockWait:
    """How a caller waits for a lock another run holds: told at once, and for at most `timeout` seconds.

    `holder` names that other run for people ("another fetch into /srv/boot").
    `warn` is told as soon as the lock turns out to be held, so a run that
    waits says so rather than sitting silent. `timeout` None waits as long as
    it takes; otherwise LockTimeout ends the wait.
    """

    holder: str
    timeout: float | None = None
    warn: t.Callable[[str], None] | None = None


@contextlib.contextmanager
def flocked(path: str, operation: int = fcntl.LOCK_EX, wait: LockWait | None = None) -> t.Iterator[None]:
    """Hold an flock on the lock file at path (created when missing) for the block.

    Opened like every file here, never through a link someone planted at the
    lock's name; only flocked, never written, so another user's lock file in a
    shared directory is fine. The kernel releases the lock when the process
    ends, however it ends.
    """
    directory = open_directory(os.path.dirname(path) or ".")
    try:
        lock = open_private(os.path.basename(path), directory, require_owner=False)
    finally:
        os.close(directory)
    try:
        _acquire(lock, operation, path, wait)
        yield
    finally:
        os.close(lock)


def _acquire(lock: int, operation: int, path: str, wait: LockWait | None) -> None:
    if wait is None:
        fcntl.flock(lock, operation)
        return
    try:
        fcntl.flock(lock, operation | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if wait.warn is not None:
        wait.warn("waiting for %s since %s (it holds %s)" % (wait.holder, since, path))
    if wait.timeout is None:
        fcntl.flock(lock, operation)
        return
    deadline = time.monotonic() + wait.timeout
    while True:
        # Polled: a blocking flock cannot be given a deadline.
        time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
        try:
            fcntl.flock(lock, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    "gave up waiting for %s after %g seconds (lock_timeout; waiting since %s, it holds %s): "
                    "let that run finish or stop it, or raise lock_timeout" % (wait.holder, wait.timeout, since, path)
                ) from None


class NoRoomError(ImageError):
    """The filesystem cannot hold what a run is about to write; refused before the first byte."""


def human_size(size: int) -> str:
    """Bytes for people: 512 bytes, 8.0 KiB, 10.5 MiB, 3.2 GiB."""
    if size < 1024:
        return "%d bytes" % size
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return "%.1f %s" % (value, unit)


def _nearest_existing(path: str) -> str:
    """`path`, or its closest ancestor that exists: where a directory not yet created would be made."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path: str) -> int:
    """What an unprivileged writer may still store on the filesystem that holds (or would hold) `path`."""
    stats = os.statvfs(_nearest_existing(path))
    return stats.f_bavail * stats.f_frsize


def check_room(path: str, needed: int, what: str, advice: str) -> None:
    """Refuse, in one line, `needed` bytes that the filesystem of `path` cannot hold.

    `what` says what would be written ("fetch into /srv/boot"), `advice` what
    else to do besides freeing space ("or choose another dest"). Called
    before anything is written, so a full disk is found before the first
    byte rather than half-way through the largest layer.
    """
    if needed <= 0:
        return
    free = free_bytes(path)
    if needed <= free:
        return
    raise NoRoomError(
        "%s needs %s (%d bytes) but %s has %s free, %s short; free at least %s %s and run again; nothing was written"
        % (
            what,
            human_size(needed),
            needed,
            _nearest_existing(path),
            human_size(free),
            human_size(needed - free),
            human_size(needed - free),
            advice,
        )
    )


class AtomicFile:
    """A file written beside its destination and renamed over it on commit.

    Used as a context manager; leaving the block without commit() (an
    exception, a digest mismatch) removes the temporary file, so the
    destination keeps whatever it held before.

    Both directories are opened once and everything after works relative to
    those descriptors, and the temporary file is opened without following
    links: someone who can write to the directory can neither redirect our
    writes, nor have us chmod or truncate another file.
    """

    def __init__(self, path: str, mode: int | None = None, temp_path: str | None = None, append: bool = False):
        self.path = os.path.abspath(path)
        self.mode = mode
        self._dir_fd = open_directory(os.path.dirname(self.path))
        self._temp_dir_fd = self._dir_fd
        try:
            if temp_path is None:
                temp_path = os.path.join(
                    os.path.dirname(self.path), ".%s.%s.tmp" % (os.path.basename(self.path), secrets.token_hex(8))
                )
                fd = open_private(os.path.basename(temp_path), self._dir_fd, exclusive=True)
            else:
                # A caller-chosen temporary name lets a download resume it later; it may
                # sit in another directory of the same filesystem (a private one).
                temp_path = os.path.abspath(temp_path)
                if os.path.dirname(temp_path) != os.path.dirname(self.path):
                    self._temp_dir_fd = open_directory(os.path.dirname(temp_path))
                fd = open_private(os.path.basename(temp_path), self._temp_dir_fd)
            try:
                # Private until commit, like mkstemp: the file may become a VM disk with mode 0600,
                # and a partial kept by an older run may have been created with a wider mode.
                os.fchmod(fd, 0o600)
                if not append:
                    os.ftruncate(fd, 0)
                self.file: t.BinaryIO = os.fdopen(fd, "r+b")
            except BaseException:
                os.close(fd)
                raise
            self.file.seek(0, os.SEEK_END)
        except BaseException:
            self._close_directories()
            raise
        self.temp_path = temp_path
        self.keep_partial = False
        self._done = False
        self._unhinted = 0
        self._hinted_to = self.file.tell()

    def __enter__(self) -> AtomicFile:
        return self

    def write(self, data: t.Any) -> int:
        written = self.file.write(data)
        self._unhinted += written
        if self._unhinted >= WRITEBACK_STEP:
            self._hint_writeback()
        return written

    def _hint_writeback(self) -> None:
        # What has been written so far goes to disk while the rest arrives (a download, a copy),
        # so the fsync at commit waits only for the tail instead of the whole file.
        self._unhinted = 0
        self.file.flush()
        end = self.file.tell()
        if end > self._hinted_to:
            start_writeback(self.file.fileno(), self._hinted_to, end - self._hinted_to)
        self._hinted_to = end

    def commit(self, path: str | None = None) -> None:
        """Make the complete file visible under its final name.

        `path` names the destination when it was only known once the data
        was seen (a blob named by its digest); it must be in the same
        directory as the first one.
        """
        if path is not None:
            path = os.path.abspath(path)
            if os.path.dirname(path) != os.path.dirname(self.path):
                raise ValueError("%s is not in the directory of %s" % (path, self.path))
            self.path = path
        name = os.path.basename(self.path)
        self.file.flush()
        os.fchmod(self.file.fileno(), self.mode if self.mode is not None else self._inherited_mode(name))
        os.fsync(self.file.fileno())
        self.file.close()
        os.rename(os.path.basename(self.temp_path), name, src_dir_fd=self._temp_dir_fd, dst_dir_fd=self._dir_fd)
        try:
            os.fsync(self._dir_fd)
        except OSError:
            pass
        self._done = True
        self._close_directories()

    def _inherited_mode(self, name: str) -> int:
        """The mode of the file of ours being replaced; otherwise (none, a link, someone else's) the umask-derived one.

        A file planted by another user must not hand its mode (0777, setuid)
        to the file we put in its place.
        """
        try:
            existing = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISREG(existing.st_mode) and existing.st_uid == os.geteuid():
            return existing.st_mode & 0o7777
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        if not self.file.closed:
            self.file.close()
        if not self.keep_partial:
            try:
                os.unlink(os.path.basename(self.temp_path), dir_fd=self._temp_dir_fd)
            except FileNotFoundError:
                pass
        self._close_directories()

    def _close_directories(self) -> None:
        if self._temp_dir_fd not in (-1, self._dir_fd):
            os.close(self._temp_dir_fd)
        if self._dir_fd != -1:
            os.close(self._dir_fd)
        self._dir_fd = self._temp_dir_fd = -1

    def __exit__(self, *exc_info: t.Any) -> None:
        self.discard()


def write_bytes_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` so that no reader ever sees a partial file."""
    with AtomicFile(path, mode=mode) as out:
        out.write(data)
        out.commit()


# Handed every chunk a HashingCounter or a copy hashes, in order (the build's block index rides on it). The
# view may be of a reused buffer, valid only during the call, and the call may come from a copy's hasher
# thread: an exception it raises fails the copy.
ChunkHook = t.Callable[[memoryview], None]


class HashingCounter:
    """sha256 and byte count of everything that passes through.

    `on_chunk`, when given, sees each chunk right after it is hashed, so a
    second digest of the same bytes (a block index) costs no second read.
    The chunk's buffer may be reused once the call returns.
    """

    def __init__(self, on_chunk: ChunkHook | None = None) -> None:
        self._sha = hashlib.sha256()
        self.size = 0
        self._on_chunk = on_chunk

    def update(self, data: t.Any) -> None:
        self._sha.update(data)
        self.size += len(data)
        if self._on_chunk is not None:
            self._on_chunk(memoryview(data))

    @property
    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


class HashingWriter:
    """A file-like sink that hashes what it forwards to `out` (tarfile, gzip, an index being encoded)."""

    def __init__(self, out: t.Any, on_chunk: ChunkHook | None = None):
        self._out = out
        self.counter = HashingCounter(on_chunk)

    def write(self, data: t.Any) -> int:
        self.counter.update(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        pass


# Batches a background hasher may hold, not yet hashed, and how large a batch grows before it
# is handed over: memory stays at a few MiB, and small network reads (64 KiB) cost one
# hand-off per batch, not one each.
_HASH_QUEUE_BATCHES = 3
_HASH_BATCH_SIZE = 1024 * 1024


class BackgroundHashingCounter(HashingCounter):
    """A HashingCounter that hashes in a second thread: update() queues the chunk and returns.

    On two cores the hash then overlaps the receive and the write instead of
    adding to them. `size` counts at once; `digest` waits for every queued
    chunk. The chunks must not change after update() (bytes from a socket or a
    decompressor, not a reused buffer): anything else is copied first.
    """

    def __init__(self, start: HashingCounter | None = None) -> None:
        super().__init__()
        if start is not None:
            # Continue a kept partial file's hash.
            self._sha = start._sha.copy()
            self.size = start.size
        self._batches: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=_HASH_QUEUE_BATCHES)
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._thread: threading.Thread | None = None

    def update(self, data: t.Any) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)
        self._batch.append(data)
        self._batch_size += len(data)
        self.size += len(data)
        if self._batch_size >= _HASH_BATCH_SIZE:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._batch:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=_hash_queued, args=(self._sha, self._batches), name="hash", daemon=True
            )
            self._thread.start()
            # A counter dropped without its digest read (an aborted transfer) still ends its thread.
            weakref.finalize(self, self._batches.put, None)
        self._batches.put(self._batch)
        self._batch, self._batch_size = [], 0

    @property
    def digest(self) -> str:
        self._hand_over()
        self._batches.join()
        return "sha256:" + self._sha.hexdigest()


def _hash_queued(sha: t.Any, batches: queue.Queue[list[bytes] | None]) -> None:
    """The background hasher's loop: knows only the hash and the queue, so the counter can be collected."""
    while True:
        batch = batches.get()
        try:
            if batch is None:
                return
            for data in batch:
                sha.update(data)
        finally:
            batches.task_done()


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


class FileStream:
    """A file streamed from an offset, the way a blob stream of a registry is read (a layout's blobs)."""

    def __init__(self, path: str, offset: int, length: int | None = None):
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        # Like a registry that ignores Range: past the end, start again at 0 (and send it all).
        self.offset = offset if 0 <= offset <= size else 0
        self._left = length if length is not None and self.offset == offset else None
        self._file.seek(self.offset)

    def iter_chunks(self, size: int) -> t.Iterator[t.Any]:
        if self._left is None:
            yield from iter_chunks(self._file, size)
            return
        for chunk in iter_chunks(self._file, size):
            if self._left <= 0:
                return
            chunk = chunk[: self._left]
            self._left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self._file.close()


def hash_file(path: str, on_chunk: ChunkHook | None = None) -> tuple[str, int]:
    """The sha256 digest and size of a file, read once in chunks."""
    with open(path, "rb") as stream:
        return hash_stream(stream, on_chunk)


def hash_stream(stream: t.BinaryIO, on_chunk: ChunkHook | None = None) -> tuple[str, int]:
    """The sha256 digest and size of what is left in an open stream."""
    counter = HashingCounter(on_chunk)
    for chunk in iter_chunks(stream):
        counter.update(chunk)
    return counter.digest, counter.size


def resume_hash(out: AtomicFile, size: int) -> HashingCounter | None:
    """Hash what a kept partial file (opened with append) holds when it can be continued; else empty it.

    Read through the descriptor the download appends to, so what is hashed is
    the very file that is continued, never a file a link points at.
    """
    have = out.file.seek(0, os.SEEK_END)
    out.file.seek(0)
    if have == 0 or have > size:
        out.file.truncate()
        return None
    counter = HashingCounter()
    for chunk in iter_chunks(out.file):
        counter.update(chunk)
    return counter


# copy_file_range errors meaning "not between these two files": copy through user space instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM})
# Copied ranges the hasher may lag behind: a few chunks, so it reads them back while they are in the cache.
_READ_BACK_LAG = 4
# The ring a copy's chunk hook (the block index) runs over in its own thread: the read-back hasher fills
# a buffer, hashes it and hands it on, so the hook's hashing overlaps the layer's; memory stays at 4 MiB.
_HOOK_BUFFERS = 4
_HOOK_BUFFER_SIZE = 1024 * 1024


def copy_and_hash(source: t.BinaryIO, out: t.Any, on_chunk: ChunkHook | None = None) -> HashingCounter:
    """Stream `source` into `out` (an AtomicFile or any writer), hashing what `out` receives.

    Between two regular files the kernel copies (copy_file_range: the bytes
    never pass through this process), while a second thread reads each copied
    range back from the destination (the page cache) and hashes it: the digest
    is that of the bytes the blob file holds, and hashing overlaps the copy.
    Otherwise: one read per chunk, hashed and written. `on_chunk` sees every
    hashed chunk in order either way.
    """
    if isinstance(out, AtomicFile) and _kernel_copy_possible(source):
        out.file.flush()
        start = out.file.seek(0, os.SEEK_END)
        try:
            position = source.tell()
            counter = _kernel_copy(source.fileno(), position, out.file.fileno(), start, on_chunk)
        except _NoKernelCopy:
            pass
        else:
            # Both files where a read and a write would have left them.
            source.seek(position + counter.size)
            out.file.seek(0, os.SEEK_END)
            return counter
    counter = HashingCounter()
    for chunk in iter_chunks(source):
        counter.update(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
        out.write(chunk)
    return counter


class _NoKernelCopy(Exception):
    """copy_file_range cannot copy between these files; nothing was copied."""


def _kernel_copy_possible(source: t.Any) -> bool:
    fileno = getattr(source, "fileno", None)
    if fileno is None or not hasattr(os, "copy_file_range"):
        return False
    status = os.fstat(fileno())
    # Not for special files: copy_file_range reports 0 bytes for some of them (procfs), which is no EOF.
    return stat.S_ISREG(status.st_mode) and status.st_size > 0


def _kernel_copy(source_fd: int, position: int, out_fd: int, start: int, on_chunk: ChunkHook | None) -> HashingCounter:
    """copy_file_range from `position` of the source to `out_fd` at `start`, hashed by reading back what landed.

    Explicit offsets: neither file's own position moves.
    """
    hasher = _ReadBackHasher(out_fd, on_chunk)
    copied = 0
    try:
        while True:
            try:
                count = os.copy_file_range(source_fd, out_fd, CHUNK_SIZE, position + copied, start + copied)
            except OSError as exc:
                if copied == 0 and exc.errno in _NO_KERNEL_COPY:
                    raise _NoKernelCopy() from exc
                raise
            if count == 0:
                break
            hasher.hash_range(start + copied, count)
            copied += count
    finally:
        counter = hasher.finish()
    return counter


class _ReadBackHasher:
    """A thread hashing ranges of a file, in order, as they are handed to it.

    A chunk hook, when given, runs in a third thread (_HookThread) over the
    buffers read back, so its own hashing does not wait for the layer's.
    """

    def __init__(self, fd: int, on_chunk: ChunkHook | None):
        self._fd = fd
        self._hook = _HookThread(on_chunk) if on_chunk is not None else None
        self.counter = HashingCounter()
        self._ranges: queue.Queue[tuple[int, int] | None] = queue.Queue(maxsize=_READ_BACK_LAG)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hash-read-back", daemon=True)
        self._thread.start()

    def hash_range(self, offset: int, length: int) -> None:
        if self._failure is not None:
            raise self._failure
        self._ranges.put((offset, length))

    def finish(self) -> HashingCounter:
        self._ranges.put(None)
        self._thread.join()
        if self._hook is not None:
            # Joined whatever happened, so no thread outlives the copy; the first failure wins.
            self._hook.finish(raise_failure=self._failure is None)
        if self._failure is not None:
            raise self._failure
        return self.counter

    def _run(self) -> None:
        # With a hook, the buffers are the hook's ring.
        buffer = memoryview(bytearray(CHUNK_SIZE if self._hook is None else 0))
        while True:
            item = self._ranges.get()
            if item is None:
                return
            if self._failure is not None:
                continue  # drain, so that the copying thread never blocks on a full queue
            try:
                self._hash(buffer, *item)
            except BaseException as exc:  # pylint: disable=broad-exception-caught  # re-raised in the caller
                self._failure = exc
            else:
                start_writeback(self._fd, *item)

    def _hash(self, own_buffer: memoryview, offset: int, length: int) -> None:
        hook = self._hook
        while length > 0:
            buffer = own_buffer if hook is None else hook.free_buffer()
            count = os.preadv(self._fd, [buffer[: min(length, len(buffer))]], offset)
            if count == 0:
                if hook is not None:
                    hook.give_back(buffer)
                raise OSError(errno.EIO, "the copy ended %d bytes early when read back" % length)
            self.counter.update(buffer[:count])
            if hook is not None:
                hook.submit(buffer, count)
            offset += count
            length -= count


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range to disk now, not at the commit's fsync.

    The disk then writes while the rest is copied, received or hashed, and the
    fsync before the rename waits only for the tail. POSIX_FADV_DONTNEED starts
    that writeback (and does not wait for it); it drops only pages already
    clean: none of a range just written, and, for the build's copy, those of a
    range the hashers have read by now. A hint: where it fails, the fsync
    still writes everything.
    """
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


class _HookThread:
    """Runs a chunk hook in its own thread over a small ring of buffers, in the order they are submitted.

    The producer takes a free buffer, fills it, and submits it; the hook sees
    it and the buffer goes back to the ring. The ring bounds both memory and
    how far the hook may lag. A hook that raises fails the producer at its
    next free_buffer() and at finish(); the buffers keep circulating, so the
    producer never blocks on a failed hook.
    """

    def __init__(self, hook: ChunkHook, buffers: int = _HOOK_BUFFERS, size: int = _HOOK_BUFFER_SIZE):
        self._hook = hook
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _buffer in range(buffers):
            self._free.put(memoryview(bytearray(size)))
        self._filled: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-hook", daemon=True)
        self._thread.start()

    def free_buffer(self) -> memoryview:
        if self.failure is not None:
            raise self.failure
        return self._free.get()

    def give_back(self, buffer: memoryview) -> None:
        self._free.put(buffer)

    def submit(self, buffer: memoryview, length: int) -> None:
        self._filled.put((buffer, length))

    def finish(self, raise_failure: bool = True) -> None:
        """Wait until the hook has seen every submitted buffer; raise what it raised."""
        self._filled.put(None)
        self._thread.join()
        if raise_failure and self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        while True:
            item = self._filled.get()
            if item is None:
                return
            buffer, length = item
            if self.failure is None:
                try:
                    self._hook(buffer[:length])
                except BaseException as exc:  # pylint: disable=broad-exception-caught  # re-raised in the producer
                    self.failure = exc
            self._free.put(buffer)
