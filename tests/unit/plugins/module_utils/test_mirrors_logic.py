"""The mirrored source's rules on in-memory stores: order, failover at a byte, Range ignored, length, blame."""

from __future__ import annotations

import pytest
from helpers.memory_store import MemoryStore, MemoryStream

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._manifest import sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import (
    MirrorConfigError,
    MirroredSource,
    MirrorUnreachable,
    open_mirror,
)
from ansible_collections.ironcore.image.plugins.module_utils._model import ImageReference
from ansible_collections.ironcore.image.plugins.module_utils._store import StoreError
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobLocation

BLOB = bytes(range(256)) * 64
DIGEST = sha256_digest(BLOB)
REF = ImageReference.parse("origin.example:5000/os/image:1.0")


class Memory(MemoryStore):
    """A store holding BLOB (as a blob and as a document): it may break at a byte, ignore Range, or have nothing."""

    def __init__(self, url: str, break_at: int | None = None, ignore_range: bool = False, empty: bool = False):
        super().__init__(REF.registry, REF.repository, piece=1000)
        self.url = url
        self.break_at = break_at
        self.ignore_range = ignore_range
        self.empty = empty
        self.blobs[DIGEST] = BLOB
        self.documents[DIGEST] = BLOB
        self.names["1.0"] = {"mediaType": None, "digest": DIGEST, "size": len(BLOB)}
        self.opened: list[int] = []
        # (offset, length) of every open_blob
        self.asked: list[tuple[int, int | None]] = []
        self.resolved = 0

    def source_url(self) -> str:
        return self.url

    def describe(self) -> str:
        return self.url

    def resolve(self, name: str) -> dict:
        self.resolved += 1
        return super().resolve(name)

    def read_document(self, digest: str, size: int) -> bytes:
        if self.empty:
            raise StoreError("HTTP 404")
        return super().read_document(digest, size)

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> MemoryStream:
        self.opened.append(offset)
        self.asked.append((offset, length))
        if self.empty:
            raise StoreError("HTTP 404")
        if self.ignore_range:
            offset, length = 0, None
        cut = None if self.break_at is None else self.break_at - offset
        return MemoryStream(BLOB, offset, length, self.piece, cut)

    def blob_location(self, digest: str) -> BlobLocation:
        return BlobLocation(self.url, {})


def read_all(source: MirroredSource, offset: int = 0, length: int | None = None) -> bytes:
    stream = source.open_blob(DIGEST, offset, length)
    try:
        return b"".join(stream.iter_chunks(1000))
    finally:
        stream.close()


def test_a_break_continues_at_the_same_byte_on_the_next_source():
    first, second, origin = Memory("m1", break_at=5000), Memory("m2"), Memory("origin")
    source = MirroredSource(origin, [first, second], resolve_tags=False, pinned=None)
    assert read_all(source) == BLOB
    assert second.opened == [5000]
    assert origin.opened == []
    assert source.served(DIGEST) == [{"url": "m1", "bytes": 5000}, {"url": "m2", "bytes": len(BLOB) - 5000}]
    assert [error["url"] for error in source.errors] == ["m1"]


def test_a_mirror_answering_a_range_with_the_whole_blob_is_never_read_past_a_prefix():
    first, second, origin = Memory("m1", break_at=3000), Memory("m2", ignore_range=True), Memory("origin")
    source = MirroredSource(origin, [first, second], resolve_tags=False, pinned=None)
    assert read_all(source) == BLOB
    # m2's whole-blob answer was dropped unread: the origin served the rest from the byte where m1 broke.
    assert source.served(DIGEST) == [{"url": "m1", "bytes": 3000}, {"url": "origin", "bytes": len(BLOB) - 3000}]
    assert origin.opened == [3000]
    assert "whole blob" in source.errors[1]["reason"] and source.errors[1]["url"] == "m2"
    # For the rest of the run m2 is not asked for a range at all, but still serves a blob from byte 0.
    assert read_all(source, offset=100, length=50) == BLOB[100:150]
    assert second.opened == [3000]
    assert read_all(source) == BLOB
    assert second.opened == [3000, 0]


def test_length_ends_the_stream_and_offset_is_kept():
    source = MirroredSource(Memory("origin"), [Memory("m1")], resolve_tags=False, pinned=None)
    assert read_all(source, offset=100, length=50) == BLOB[100:150]


def test_a_bounded_range_is_asked_bounded_of_every_source():
    first, origin = Memory("m1", break_at=120), Memory("origin")
    source = MirroredSource(origin, [first], resolve_tags=False, pinned=None)
    assert read_all(source, offset=100, length=50) == BLOB[100:150]
    assert first.asked == [(100, 50)]
    # The break at byte 120 continues on the origin for exactly the 30 bytes still missing.
    assert origin.asked == [(120, 30)]


def test_a_bounded_range_the_origin_answers_whole_is_refused_for_the_caller_to_fetch_whole():
    origin = Memory("origin", ignore_range=True)
    source = MirroredSource(origin, [Memory("m1", ignore_range=True)], resolve_tags=False, pinned=None)
    with pytest.raises(ImageError, match="whole blob") as caught:
        read_all(source, offset=100, length=50)
    assert not caught.value.retryable
    # A resumed whole-blob read still takes the origin's whole answer, skipping what the caller has.
    assert read_all(source, offset=100) == BLOB[100:]


def test_blob_location_is_the_origin_s_unless_a_mirror_is_asked_for_and_never_http_for_https():
    origin, plain, tls = Memory("https://origin.example"), Memory("http://plain.example"), Memory("https://m.example")
    assert MirroredSource(origin, [plain, tls], False, None).blob_location(DIGEST).url == "https://origin.example"
    asked = MirroredSource(origin, [plain, tls], False, None, url_from="mirror")
    assert asked.blob_location(DIGEST).url == "https://m.example"
    only_plain = MirroredSource(origin, [plain], False, None, url_from="mirror")
    assert only_plain.blob_location(DIGEST).url == "https://origin.example"
    plain_origin = MirroredSource(Memory("http://origin.example"), [plain], False, None, url_from="mirror")
    assert plain_origin.blob_location(DIGEST).url == "http://plain.example"


def test_missing_everywhere_but_the_origin():
    origin = Memory("origin")
    source = MirroredSource(origin, [Memory("m1", empty=True)], resolve_tags=False, pinned=None)
    assert read_all(source) == BLOB
    assert source.bytes_from_origin() == len(BLOB)
    assert source.read_document(DIGEST, len(BLOB)) == BLOB


def test_the_origin_failing_mid_stream_is_left_to_the_caller_to_resume():
    source = MirroredSource(Memory("origin", break_at=10), [], resolve_tags=False, pinned=None)
    with pytest.raises(ImageError) as caught:
        read_all(source)
    assert caught.value.retryable


def test_wrong_bytes_blame_the_mirrors_that_served_them_and_never_the_origin_alone():
    mirror, origin = Memory("m1"), Memory("origin")
    source = MirroredSource(origin, [mirror], resolve_tags=False, pinned=None)
    read_all(source)
    assert source.reject_blob(DIGEST, "hashes to sha256:0") is True
    assert read_all(source) == BLOB
    assert origin.opened == [0]
    assert source.reject_blob(DIGEST, "hashes to sha256:0") is False
    assert source.errors[0]["url"] == "m1" and "failed verification" in source.errors[0]["reason"]


def test_a_digest_or_a_pin_never_asks_the_origin_and_a_tag_asks_only_it():
    origin, mirror = Memory("origin"), Memory("m1")
    pinned = MirroredSource(origin, [mirror], resolve_tags=False, pinned=DIGEST)
    assert pinned.resolve("1.0")["digest"] == DIGEST
    assert origin.resolved == 0 and mirror.resolved == 0
    tagged = MirroredSource(origin, [mirror], resolve_tags=False, pinned=None)
    tagged.resolve("1.0")
    assert (origin.resolved, mirror.resolved) == (1, 0)
    trusting = MirroredSource(origin, [mirror], resolve_tags=True, pinned=None)
    trusting.resolve("1.0")
    assert (origin.resolved, mirror.resolved) == (1, 1)


class Gone(Memory):
    def read_document(self, digest: str, size: int) -> bytes:
        self.opened.append(-1)
        raise MirrorUnreachable("connection refused")

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> MemoryStream:
        self.opened.append(offset)
        raise MirrorUnreachable("connection refused")


def test_an_unreachable_mirror_is_asked_once_per_run():
    gone = Gone("m1")
    source = MirroredSource(Memory("origin"), [gone, Memory("m2")], resolve_tags=False, pinned=None)
    source.read_document(DIGEST, len(BLOB))
    assert read_all(source) == BLOB
    assert gone.opened == [-1]
    assert [error["url"] for error in source.errors] == ["m1"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"url": "ftp://mirror.example"}, "is not an http(s) URL"),
        ({"url": "https://user:pw@mirror.example"}, "carries credentials"),
        ({"url": "https://mirror.example/v2/os"}, "a registry mirror is a base URL"),
        ({"url": "https://mirror.example/os", "type": "layout", "repository": "os"}, "applies to a registry"),
        ({"url": "https://mirror.example", "username": "u"}, "username and password must be given together"),
    ],
)
def test_unusable_mirror_entries_are_refused(entry, message):
    with pytest.raises(MirrorConfigError) as caught:
        open_mirror(entry, 0, REF, {})
    assert message in str(caught.value)
