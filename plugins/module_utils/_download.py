# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Verified, resumable delivery of one layer blob to one file.

The blob streams into a partial file beside the destination, hashed as it
arrives; only a blob of the right size and digest is renamed into place (or,
for a tar+gzip layer, unpacked into place). The partial file has a stable
name, so an interrupted transfer continues with an HTTP Range request, both
within a run and on the next one.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import re
import typing as t
import zlib
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, one_line
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    AtomicFile,
    BackgroundHashingCounter,
    HashingCounter,
    resume_hash,
)
from ansible_collections.ironcore.image.plugins.module_utils._progress import ProgressRecorder
from ansible_collections.ironcore.image.plugins.module_utils._select import SelectedLayer
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageSource
from ansible_collections.ironcore.image.plugins.module_utils._tar import (
    TarError,
    check_end,
    padded,
    read_exact,
    read_member,
)
from ansible_collections.ironcore.image.plugins.module_utils._transfer import RECEIVE_CHUNK, BlobStream, ResumableRead

PARTIAL_PREFIX = ".ironcore-fetch."
# Read size for unpacking and hashing local files; the network reads RECEIVE_CHUNK.
DOWNLOAD_CHUNK = RECEIVE_CHUNK
PARTIAL_SUFFIX = ".partial"
# Default bound on what a tar+gzip layer may unpack to, as a multiple of its blob. Deflate itself
# cannot exceed about 1032:1, and a raw disk image that is mostly unwritten (zeros) comes close to
# that, so a lower multiple would refuse real disk images; twice it refuses only what deflate cannot
# make (sparse members, made-up size fields), and the cap bounds the rest.
UNPACKED_SIZE_MULTIPLE = 2048
UNPACKED_SIZE_CAP = 64 * 1024**3


class DeliveryError(ImageError):
    """The layer could not be delivered; the destination file is untouched."""


class _Corrupt(DeliveryError):
    """The received bytes are wrong: the partial file is worthless."""


@dataclass
class _Tally:
    """Bytes received over every attempt, wasted ones included, and each resume after a broken transfer."""

    received: int = 0
    resumes: list[str] = field(default_factory=list)


@dataclass
class Delivered:
    content_digest: str
    size: int
    bytes_downloaded: int
    # One line per broken transfer that was resumed; they count in the result's `retries`.
    resumes: list[str] = field(default_factory=list)


def partial_path(directory: str, filename: str, digest: str) -> str:
    """Stable per file and blob, so the next run finds what this one left."""
    return os.path.join(
        directory, "%s%s.%s%s" % (PARTIAL_PREFIX, filename, digest.split(":", 1)[-1][:16], PARTIAL_SUFFIX)
    )


def remove_stale_partials(directory: str, filename: str) -> None:
    """Partial files of older blobs for this file name will never be resumed.

    Matched exactly as partial_path() names them: a prefix match would take
    the partials of `rootfs.raw` for those of `rootfs`.
    """
    pattern = re.compile(re.escape(PARTIAL_PREFIX + filename) + r"\.[0-9a-f]{16}" + re.escape(PARTIAL_SUFFIX))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if pattern.fullmatch(name):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


class _Receiver(ResumableRead):
    """Appends a blob's bytes to an open partial file, resuming after interruptions."""

    def __init__(
        self,
        source: ImageSource,
        layer: SelectedLayer,
        out: AtomicFile,
        counter: HashingCounter,
        retries: int,
        backoff: float,
        tally: _Tally,
        progress: ProgressRecorder | None = None,
    ):
        super().__init__("blob %s" % layer.digest, 0, layer.size, retries, backoff)
        self.source = source
        self.layer = layer
        self.out = out
        # Hashed in a second thread, beside the receive and the write.
        self.counter: HashingCounter = BackgroundHashingCounter(counter)
        self.received = self.counter.size
        self.tally = tally
        self.progress = progress

    def restart(self) -> None:
        """The server answered the whole blob: drop what we had."""
        self.out.file.seek(0)
        self.out.file.truncate()
        self.counter = BackgroundHashingCounter()
        if self.progress is not None:
            self.progress.start(self.layer.role, self.layer.size)

    def open_at(self, offset: int, length: int | None) -> BlobStream:
        """Open at `offset`; the source has already retried the request itself, so a failure here is final."""
        try:
            return self.source.open_blob(self.layer.digest, offset, length)
        except ImageError as exc:
            if offset > 0:
                raise DeliveryError(
                    "%s; %d of %d bytes are kept, run again to resume" % (exc, offset, self.layer.size)
                ) from exc
            raise DeliveryError(str(exc)) from exc

    def resumed(self, exc: ImageError) -> None:
        # Every resume is a retry the user is told of, even one that gained bytes.
        self.tally.resumes.append(
            "resuming %s (%s) at byte %d of %d: %s"
            % (self.layer.role, self.layer.digest, self.received, self.layer.size, one_line(exc))
        )

    def accept(self, chunk: t.Any) -> None:
        self.out.write(chunk)
        self.counter.update(chunk)
        self.tally.received += len(chunk)
        if self.progress is not None:
            self.progress.advance(self.layer.role, len(chunk))

    def mismatch(self, answered: int, asked: int) -> ImageError:
        return DeliveryError(
            "blob %s: the source answered from byte %d when asked for byte %d" % (self.layer.digest, answered, asked)
        )

    def overrun(self) -> ImageError:
        return _Corrupt(
            "blob %s is larger than the %d bytes its descriptor says; refusing it"
            % (self.layer.digest, self.layer.size)
        )

    def give_up(self, exc: ImageError) -> ImageError:
        return DeliveryError(
            "%s; gave up after %d retries, %d of %d bytes are kept: run again to resume"
            % (exc, self.retries, self.received, self.layer.size)
        )

    def receive(self) -> HashingCounter:
        try:
            self.run()
        except DeliveryError:
            raise
        except ImageError as exc:
            # Not retryable (the loop retries the others): the delivery fails with the source's reason.
            raise DeliveryError(str(exc)) from exc
        return self.counter


def _verify(layer: SelectedLayer, counter: HashingCounter) -> None:
    if counter.size != layer.size:
        raise _Corrupt("blob %s: received %d bytes, expected %d" % (layer.digest, counter.size, layer.size))
    if counter.digest != layer.digest:
        raise _Corrupt(
            "blob %s failed verification: its content hashes to %s; the source is corrupt, nothing was replaced"
            % (layer.digest, counter.digest)
        )


def default_max_unpacked_size(blob_size: int) -> int:
    """What a tar+gzip layer of `blob_size` bytes may unpack to when `max_unpacked_size` is not given."""
    return min(blob_size * UNPACKED_SIZE_MULTIPLE, UNPACKED_SIZE_CAP)


def _check_room(size: int, max_size: int | None, directory: str | None) -> None:
    """Refuse a member before its first byte is written: over the bound, or more than dest can hold."""
    if max_size is not None and size > max_size:
        raise DeliveryError(
            "the tar+gzip layer unpacks to %d bytes, more than max_unpacked_size (%d bytes); "
            "raise max_unpacked_size if the image is trusted" % (size, max_size)
        )
    if directory is not None:
        stats = os.statvfs(directory)
        free = stats.f_bavail * stats.f_frsize
        if size > free:
            raise DeliveryError(
                "the tar+gzip layer unpacks to %d bytes but %s has %d bytes free; free %d bytes and run again"
                % (size, directory, free, size - free)
            )


def _copy_exact(stream: t.Any, size: int, out: t.Any) -> HashingCounter:
    # Hashed in a second thread while this one inflates and writes.
    counter = BackgroundHashingCounter()
    while counter.size < size:
        chunk = stream.read(min(DOWNLOAD_CHUNK * 4, size - counter.size))
        if not chunk:
            raise DeliveryError(
                "the tar+gzip layer ends after %d of the %d bytes its file declares" % (counter.size, size)
            )
        out.write(chunk)
        counter.update(chunk)
    return counter


def unpack_stream(
    raw: t.Any, out: t.Any, max_size: int | None = None, free_space_in: str | None = None
) -> HashingCounter:
    """Stream the one regular file out of a tar+gzip stream into `out`; memory stays bounded.

    The member's declared size is checked against `max_size` and the free
    space in `free_space_in` before anything is written.
    """
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            member = read_member(stream)
            _check_room(member.size, max_size, free_space_in)
            counter = _copy_exact(stream, member.size, out)
            read_exact(stream, padded(member.size) - member.size, "the padding of %s" % member.name)
            check_end(stream)
    except TarError as exc:
        raise DeliveryError(str(exc)) from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DeliveryError("the tar+gzip layer cannot be unpacked: %s" % exc) from exc
    return counter


def unpack_single_file(blob_path: str, out: t.Any, max_size: int | None = None) -> HashingCounter:
    """Stream the one regular file out of a tar+gzip layer file into `out`, an AtomicFile (or any writer)."""
    directory = os.path.dirname(out.path) if isinstance(out, AtomicFile) else None
    with open(blob_path, "rb") as raw:
        return unpack_stream(raw, out, max_size, directory)


class _Discard:
    """A writer that keeps nothing: for hashing what a layer unpacks to."""

    def write(self, data: t.Any) -> int:
        return len(data)


class _BlobReader:
    """A source's blob stream as a file object, hashed and bounded by the descriptor's size as it is read."""

    def __init__(self, stream: t.Any, layer: SelectedLayer):
        self._chunks = iter(stream.iter_chunks(DOWNLOAD_CHUNK))
        self._buffer = memoryview(b"")
        self._layer = layer
        self.counter = HashingCounter()

    def read(self, size: int = -1) -> bytes:
        if not self._buffer:
            chunk = next(self._chunks, b"")
            if self.counter.size + len(chunk) > self._layer.size:
                raise _Corrupt(
                    "blob %s is larger than the %d bytes its descriptor says; refusing it"
                    % (self._layer.digest, self._layer.size)
                )
            self.counter.update(chunk)
            self._buffer = memoryview(bytes(chunk))
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(data)

    def drain(self) -> None:
        while self.read(DOWNLOAD_CHUNK):
            pass


def derive_content_digest(source: ImageSource, layer: SelectedLayer, max_size: int | None) -> str:
    """What a packed layer unpacks to, from the blob itself: read again, verified, nothing written.

    With verify, this is what an unpacked file is checked against, so that a
    forged or stale state record cannot vouch for a file.
    """
    try:
        stream = source.open_blob(layer.digest, 0)
    except ImageError as exc:
        raise DeliveryError(str(exc)) from exc
    try:
        reader = _BlobReader(stream, layer)
        content = unpack_stream(reader, _Discard(), max_size)
        reader.drain()
    except DeliveryError:
        raise
    except ImageError as exc:
        raise DeliveryError(str(exc)) from exc
    finally:
        stream.close()
    _verify(layer, reader.counter)
    return content.digest


class Staged:
    """A verified layer waiting in dest under a temporary name; commit() puts it in place.

    Every layer of a fetch is staged before any is committed, so a failure in
    one layer leaves all files as they were.
    """

    def __init__(self, out: AtomicFile, delivered: Delivered, blob: AtomicFile | None = None):
        self._out = out
        self._blob = blob
        self.delivered = delivered

    def commit(self, mode: int | None = None) -> None:
        """Put the file in place, with `mode` already set when given; then, after every layer, sweep()."""
        if mode is not None:
            self._out.mode = mode
        self._out.commit()
        if self._blob is not None:
            self._blob.keep_partial = False
            self._blob.discard()

    def sweep(self) -> None:
        """Remove partial files of other blobs for this file name, which no run will resume."""
        partial = (self._blob or self._out).temp_path
        remove_stale_partials(os.path.dirname(partial), os.path.basename(self._out.path))

    def discard(self) -> None:
        """Keep the verified blob as a partial file: the next run picks it up without a download."""
        self._out.discard()
        if self._blob is not None:
            self._blob.discard()


def _attempt(
    source: ImageSource,
    layer: SelectedLayer,
    path: str,
    partial: str,
    retries: int,
    backoff: float,
    resume: bool,
    tally: _Tally,
    max_unpacked_size: int | None = None,
    progress: ProgressRecorder | None = None,
) -> Staged:
    out = AtomicFile(path, temp_path=partial, append=resume)
    # Kept unless the bytes turn out wrong, so the next run can resume.
    out.keep_partial = True
    try:
        counter = resume_hash(out, layer.size) if resume else None
        if progress is not None:
            progress.start(layer.role, layer.size)
            # What a kept partial file already holds counts as done.
            progress.advance(layer.role, counter.size if counter else 0)
        receiver = _Receiver(source, layer, out, counter or HashingCounter(), retries, backoff, tally, progress)
        try:
            counter = receiver.receive()
            _verify(layer, counter)
        except _Corrupt:
            out.keep_partial = False
            raise
        if not layer.packed:
            return Staged(out, Delivered(layer.digest, layer.size, tally.received, tally.resumes))
        out.file.flush()
        return _unpack_staged(out, path, partial, tally, max_unpacked_size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A partial no run can finish would keep the disk full for everything else on the node.
        out.keep_partial = False
        # A close whose flush fails for want of space still closes the file; discard() then removes it.
        with contextlib.suppress(OSError):
            out.file.close()
        out.discard()
        raise _disk_full(layer, partial, exc) from exc
    except BaseException:
        out.discard()
        raise


def _disk_full(layer: SelectedLayer, partial: str, error: OSError) -> DeliveryError:
    """The one line for a full disk: how much the layer needs, how much is free now that its partial is gone."""
    directory = os.path.dirname(partial)
    needs = "at least %d bytes (the blob; more once unpacked)" % layer.size if layer.packed else "%d bytes" % layer.size
    try:
        stats = os.statvfs(directory)
    except OSError:
        room = "free space there"
    else:
        free = stats.f_bavail * stats.f_frsize
        room = "%d bytes are free there: free at least %d bytes more" % (free, max(layer.size - free, 0))
    return DeliveryError(
        "%s: %s while writing blob %s; the partial file was removed; the layer needs %s and %s"
        " (or choose another dest) and run again"
        % (directory, error.strerror or "no space left on device", layer.digest, needs, room)
    )


def _unpack_staged(blob: AtomicFile, path: str, partial: str, tally: _Tally, max_size: int | None) -> Staged:
    unpacked = AtomicFile(path)
    try:
        content = unpack_single_file(partial, unpacked, max_size)
    except BaseException:
        unpacked.discard()
        # A verified blob that does not unpack will not unpack next time either.
        blob.keep_partial = False
        raise
    return Staged(unpacked, Delivered(content.digest, content.size, tally.received, tally.resumes), blob)


def stage(
    source: ImageSource,
    layer: SelectedLayer,
    path: str,
    retries: int,
    backoff: float = 0.5,
    max_unpacked_size: int | None = None,
    partial_dir: str | None = None,
    progress: ProgressRecorder | None = None,
) -> Staged:
    """Download and verify `layer` for `path`, resuming a kept partial file when there is one.

    A tar+gzip layer may unpack to at most `max_unpacked_size` bytes (None: no bound but free space).
    The partial file sits in `partial_dir` (by default beside `path`), which
    must be on the same filesystem as `path` for the final rename. `progress`,
    when given, is told the layer's bytes under its role as they arrive.
    """
    directory, filename = os.path.split(path)
    partial = partial_path(partial_dir or directory, filename, layer.digest)
    resumed = os.path.lexists(partial)
    tally = _Tally()
    resume = True
    while True:
        try:
            return _attempt(source, layer, path, partial, retries, backoff, resume, tally, max_unpacked_size, progress)
        except _Corrupt as exc:
            if resume and resumed:
                # The kept bytes may be what was wrong: one clean attempt from byte 0.
                resume = False
                continue
            # A mirrored source (_mirrors) drops the mirrors that served wrong bytes and offers the next source.
            if not source.reject_blob(layer.digest, str(exc)):
                raise
            resume = False
