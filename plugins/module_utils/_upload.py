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

from ansible_collections.ironcore.image.plugins.module_utils._registry import (
    RegistryClient,
    RegistryError,
    UploadSession,
)

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
    what = "uploading blob %s to %s/%s" % (digest, client.registry, repository)
    attempt = 0
    with open(path, "rb") as stream:
        while True:
            try:
                session = session or client.open_upload(repository, what=what)
                if chunk_size > 0 and size > 0:
                    _upload_chunked(client, repository, digest, size, stream, session, chunk_size, counter, what)
                else:
                    _upload_monolithic(client, repository, digest, size, stream, session, counter, what)
                return
            except RegistryError as exc:
                session = None
                if not (exc.retryable or exc.code in _RESTARTABLE_CODES) or attempt >= client.options.retries:
                    raise
                client.wait_before_retry(attempt)
                attempt += 1
                # The answer may have been lost after the registry stored the blob.
                if client.head_blob(repository, digest, actions=("pull", "push")) == size:
                    return


def _upload_monolithic(
    client: RegistryClient, repository: str, digest: str, size: int, stream: t.BinaryIO,
    session: UploadSession, counter: ByteCounter, what: str,
) -> None:
    def body() -> t.Any:
        return FileSlice(stream, 0, size, counter) if size else b""

    client.request(
        "PUT", session.location, what=what, repository=repository, actions=("pull", "push"),
        params={"digest": digest}, headers={"Content-Type": OCTET_STREAM}, body=body, ok=(201,), safe=False,
    ).close()


def _upload_chunked(
    client: RegistryClient, repository: str, digest: str, size: int, stream: t.BinaryIO,
    session: UploadSession, chunk_size: int, counter: ByteCounter, what: str,
) -> None:
    step = max(chunk_size, session.chunk_min)
    location = session.location
    offset = 0
    resumes = 0
    while offset < size:
        length = min(step, size - offset)
        start = offset

        def body(start: int = start, length: int = length) -> t.Any:
            return FileSlice(stream, start, length, counter)

        try:
            response = client.request(
                "PATCH", location, what=what, repository=repository, actions=("pull", "push"),
                headers={"Content-Type": OCTET_STREAM, "Content-Range": "%d-%d" % (start, start + length - 1)},
                body=body, ok=(202,), safe=False,
            )
        except RegistryError as exc:
            # A PATCH is not blindly resendable: ask what arrived, go on from there.
            if not exc.retryable or resumes >= client.options.retries:
                raise
            client.wait_before_retry(resumes)
            resumes += 1
            try:
                location, offset = upload_status(client, repository, location, what)
            except RegistryError as lost:
                # The session cannot be resumed (distribution refuses a stale
                # location): upload_blob starts over with a new one.
                lost.retryable = True
                raise lost from None
            continue
        response.close()
        location = client.absolute(response.headers.get("Location") or location)
        offset = received_bytes(response.headers.get("Range"), start + length)
    client.request(
        "PUT", location, what=what, repository=repository, actions=("pull", "push"),
        params={"digest": digest}, headers={"Content-Length": "0"}, ok=(201,), safe=False,
    ).close()


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
        "GET", location, what=what + " (asking the registry how much arrived)", repository=repository,
        actions=("pull", "push"), ok=(204,),
    )
    response.close()
    return client.absolute(response.headers.get("Location") or location), received_bytes(response.headers.get("Range"), 0)
