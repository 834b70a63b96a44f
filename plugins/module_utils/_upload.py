# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Blob uploads: one streaming PUT, or PATCH chunks that follow the registry.

The data is read from the file while it is sent, one block at a time, so
memory stays flat for any blob size. A failed monolithic upload starts again
from a fresh session (re-reading the file from its start); a failed PATCH
asks the registry how much it has and resumes there.
"""

from __future__ import annotations

import re
import threading
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._client import (
    RegistryClient,
    RegistryError,
    UploadSession,
)
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobStream

OCTET_STREAM = "application/octet-stream"
# Codes after which a new upload session may well succeed.
_RESTARTABLE_CODES = frozenset({"BLOB_UPLOAD_UNKNOWN", "RANGE_INVALID"})
_RANGE_RE = re.compile(r"(\d+)-(\d+)")


class ByteCounter:
    """Bytes handed to the network, summed across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, count: int) -> None:
        with self._lock:
            self.value += count


class FileSlice:
    """A window of an open file as a request body: len() for Content-Length, read() in blocks."""

    def __init__(self, stream: t.BinaryIO, start: int, length: int, counter: ByteCounter):
        stream.seek(start)
        self._stream = stream
        self._length = length
        self._remaining = length
        self._counter = counter

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        if size is None or size < 0 or size > self._remaining:
            size = self._remaining
        data = self._stream.read(size)
        if not data:
            # The file shrank under us: fail instead of letting the request hang.
            raise OSError("the file ended %d bytes early" % self._remaining)
        self._remaining -= len(data)
        self._counter.add(len(data))
        return data


class StreamSlice:
    """Bytes [start, start+length) of a blob read from a stream, as a request body.

    The stream is opened at `start` by the caller; a source that ignored the
    offset (answered from byte 0) is skipped forward here.
    """

    def __init__(self, stream: BlobStream, start: int, length: int, counter: ByteCounter):
        self._stream = stream
        self._chunks = stream.iter_chunks(SLICE_READ_SIZE)
        self._skip = start - stream.offset
        self._length = length
        self._remaining = length
        self._buffer = memoryview(b"")
        self._counter = counter
        if self._skip < 0:
            raise OSError("the source answered from byte %d when asked for byte %d" % (stream.offset, start))

    def __len__(self) -> int:
        return self._length

    def _fill(self) -> None:
        while not self._buffer or self._skip:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise OSError("the source blob ended %d bytes early" % self._remaining)
            view = memoryview(chunk)
            dropped = min(self._skip, len(view))
            self._skip -= dropped
            self._buffer = view[dropped:]

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        self._fill()
        if size is None or size < 0 or size > self._remaining:
            size = self._remaining
        data = bytes(self._buffer[:size])
        self._buffer = self._buffer[len(data) :]
        self._remaining -= len(data)
        self._counter.add(len(data))
        return data

    def close(self) -> None:
        self._stream.close()


# A body is opened per request: (start, length) -> an object with len() and read().
OpenBody = t.Callable[[int, int], t.Any]
SLICE_READ_SIZE = 1024 * 1024


def upload_blob(
    client: RegistryClient,
    repository: str,
    digest: str,
    size: int,
    path: str,
    chunk_size: int = 0,
    counter: ByteCounter | None = None,
    session: UploadSession | None = None,
) -> None:
    """Upload the file at `path` as blob `digest`; retried up to the client's `retries`."""
    counter = counter or ByteCounter()
    with open(path, "rb") as stream:
        upload_from(
            client,
            repository,
            digest,
            size,
            lambda start, length: FileSlice(stream, start, length, counter),
            chunk_size,
            session,
        )


def upload_stream(
    client: RegistryClient,
    repository: str,
    digest: str,
    size: int,
    open_at: t.Callable[[int], BlobStream],
    counter: ByteCounter,
    session: UploadSession | None = None,
) -> None:
    """Upload a blob read from a stream that `open_at(offset)` opens (another registry, say)."""
    upload_from(
        client,
        repository,
        digest,
        size,
        lambda start, length: StreamSlice(open_at(start), start, length, counter),
        0,
        session,
    )


def upload_from(
    client: RegistryClient,
    repository: str,
    digest: str,
    size: int,
    open_body: OpenBody,
    chunk_size: int = 0,
    session: UploadSession | None = None,
) -> None:
    """Upload blob `digest`, each request's body opened by `open_body(start, length)`."""
    _BlobUpload(client, repository, digest, size, open_body).run(chunk_size, session)


class _BlobUpload:
    """One blob on its way: where its bytes come from, where they go, and the requests that carry them."""

    def __init__(self, client: RegistryClient, repository: str, digest: str, size: int, open_body: OpenBody):
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.open_body = open_body
        self.opened: list[t.Any] = []
        self.what = "uploading blob %s to %s/%s" % (digest, client.registry, repository)

    def run(self, chunk_size: int, session: UploadSession | None) -> None:
        attempt = 0
        while True:
            try:
                session = session or self.client.open_upload(self.repository, what=self.what)
                if session is None:
                    # Without mount, open_upload always opens a session (None means "mounted").
                    raise AssertionError("open_upload without mount_from returned no session")
                if chunk_size > 0 and self.size > 0:
                    self.chunked(session, chunk_size)
                else:
                    self.send(session.location, "PUT", (0, self.size), digest=True).close()
                return
            except RegistryError as exc:
                session = None
                if not (exc.retryable or exc.code in _RESTARTABLE_CODES) or attempt >= self.client.options.retries:
                    raise
                self.client.wait_before_retry(attempt, self.what, _reason(exc))
                attempt += 1
                # The answer may have been lost after the registry stored the blob.
                if self.client.head_blob(self.repository, self.digest, actions=("pull", "push")) == self.size:
                    return

    def send(
        self, location: str, method: str, window: tuple[int, int] | None, digest: bool = False, chunk: bool = False
    ) -> t.Any:
        """One upload request carrying bytes [start, start+length) of the file, or none.

        Never resent blindly (safe=False): the caller decides how to go on.
        """
        headers = {"Content-Type": OCTET_STREAM} if window is not None else {"Content-Length": "0"}
        if window is not None and chunk:
            headers["Content-Range"] = "%d-%d" % (window[0], window[0] + window[1] - 1)

        def body() -> t.Any:
            # A fresh view per send, so a resend after a challenge starts at its beginning.
            if window is None:
                return None
            if not window[1]:
                return b""
            opened = self.open_body(window[0], window[1])
            self.opened.append(opened)
            return opened

        try:
            return self.client.request(
                method,
                location,
                what=self.what,
                repository=self.repository,
                actions=("pull", "push"),
                params={"digest": self.digest} if digest else None,
                headers=headers,
                body=body,
                ok=(201,) if digest else (202,),
                safe=False,
            )
        finally:
            self._close_bodies()

    def _close_bodies(self) -> None:
        """Close the streams the bodies of the last request opened (a file slice has nothing to close)."""
        while self.opened:
            close = getattr(self.opened.pop(), "close", None)
            if close is not None:
                close()

    def chunked(self, session: UploadSession, chunk_size: int) -> None:
        step = max(chunk_size, session.chunk_min)
        location = session.location
        offset = 0
        resumes = 0
        while offset < self.size:
            length = min(step, self.size - offset)
            try:
                response = self.send(location, "PATCH", (offset, length), chunk=True)
            except RegistryError as exc:
                # A PATCH is not blindly resendable: ask what arrived, go on from there.
                if not exc.retryable or resumes >= self.client.options.retries:
                    raise
                self.client.wait_before_retry(resumes, self.what, _reason(exc))
                resumes += 1
                try:
                    location, offset = upload_status(self.client, self.repository, location, self.what)
                except RegistryError as lost:
                    # The session cannot be resumed (distribution refuses a stale
                    # location): run() starts over with a new one.
                    lost.retryable = True
                    raise lost from exc
                continue
            response.close()
            location = self.client.absolute(response.headers.get("Location") or location)
            offset = received_bytes(response.headers.get("Range"), offset + length)
        self.send(location, "PUT", None, digest=True).close()


def _reason(error: RegistryError) -> str:
    """Why a request failed, without the "<what> failed: " its message starts with."""
    text = str(error)
    return text.partition(" failed: ")[2] or text


def received_bytes(range_header: str | None, default: int) -> int:
    """How many bytes an upload holds, from its `Range: 0-<last>` header."""
    match = _RANGE_RE.search(range_header or "")
    if not match:
        return default
    first, last = int(match.group(1)), int(match.group(2))
    # distribution answers "0-0" for an empty upload as well as for one byte.
    return 0 if (first, last) == (0, 0) and default == 0 else last + 1


def upload_status(client: RegistryClient, repository: str, location: str, what: str) -> tuple[str, int]:
    """(location, bytes received) of an upload session, asked of the registry."""
    response = client.request(
        "GET",
        location,
        what=what + " (asking the registry how much arrived)",
        repository=repository,
        actions=("pull", "push"),
        ok=(204,),
    )
    response.close()
    return client.absolute(response.headers.get("Location") or location), received_bytes(
        response.headers.get("Range"), 0
    )
