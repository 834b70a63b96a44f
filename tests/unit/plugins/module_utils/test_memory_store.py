"""The copy engine and a layout's receive loop over the shared in-memory store (tests/helpers/memory_store.py)."""

from __future__ import annotations

import os

import pytest
from helpers.memory_store import MemoryStore

from ansible_collections.ironcore.image.plugins.module_utils import _copy as engine
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore, StoreError
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter

NAME = "registry.example.com/os/memory:1.0"


@pytest.fixture
def source() -> MemoryStore:
    store = MemoryStore(repository="os/memory")
    kernel = store.add_blob(os.urandom(70_000), "application/vnd.ironcore.image.kernel")
    rootfs = store.add_blob(os.urandom(300_000), "application/vnd.ironcore.image.rootfs")
    store.names[NAME] = store.add_index(store.add_manifest(kernel, rootfs))
    return store


def test_a_copy_between_memory_stores_carries_every_document_and_blob(source: MemoryStore) -> None:
    destination = MemoryStore(repository="os/copy")
    plan = engine.plan_copy(source, [(NAME, NAME)])
    result = engine.copy(source, destination, plan, concurrency=2)
    assert result.changed and destination.names[NAME]["digest"] == source.names[NAME]["digest"]
    assert destination.blobs == source.blobs
    assert set(destination.documents) == set(source.documents)
    again = engine.copy(source, destination, engine.plan_copy(source, [(NAME, NAME)]))
    assert not again.changed and again.blobs.skipped == len(source.blobs)


def test_a_layout_resumes_a_broken_stream_where_it_broke(source: MemoryStore, tmp_path) -> None:
    destination = LayoutStore(str(tmp_path / "layout"))
    destination.prepare()
    digest, data = max(source.blobs.items(), key=lambda item: len(item[1]))
    # Two breaks that each gained bytes, more than `retries`: progress resets the count.
    source.break_after = [100_000, 100_000]
    counter = ByteCounter()
    destination.put_blob(source, digest, len(data), counter, retries=1)
    with open(destination.layout.blob_path(digest), "rb") as stored:
        assert stored.read() == data
    requests = [read[1:] for read in source.reads if read[0] == "blob"]
    assert requests == [(digest, 0, None), (digest, 100_000, len(data) - 100_000), (digest, 200_000, 100_000)]
    assert source.pauses == 2 and counter.value == len(data)


def test_a_layout_gives_up_when_attempts_gain_nothing_and_keeps_what_it_has(source: MemoryStore, tmp_path) -> None:
    destination = LayoutStore(str(tmp_path / "layout"))
    destination.prepare()
    digest, data = max(source.blobs.items(), key=lambda item: len(item[1]))
    source.break_after = [50_000, 0, 0]
    with pytest.raises(StoreError, match="50000 of %d bytes are kept: run again to resume" % len(data)):
        destination.put_blob(source, digest, len(data), ByteCounter(), retries=1)
    assert os.path.getsize(destination.partial_path(digest)) == 50_000


def test_blob_location_is_a_store_method_with_a_typed_answer(source: MemoryStore, tmp_path) -> None:
    digest = next(iter(source.blobs))
    assert source.blob_location(digest).url.endswith(digest)
    destination = LayoutStore(str(tmp_path / "layout"))
    destination.prepare()
    destination.put_blob(source, digest, len(source.blobs[digest]), ByteCounter(), retries=0)
    location = destination.blob_location(digest)
    assert location.url == "file://" + destination.layout.blob_path(digest) and location.headers == {}
    with pytest.raises(StoreError):
        destination.blob_location("sha256:not-a-digest")
