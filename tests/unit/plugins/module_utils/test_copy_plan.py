"""The copy engine's planning and order, and a layout-to-layout copy on real files (no network)."""

from __future__ import annotations

import os
import types

import pytest
from helpers.images import build_ours

from ansible_collections.ironcore.image.plugins.module_utils import _copy as engine
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore, StoreError
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter, StreamSlice

NAME = "registry.example.com/os/unit:1.0"
PLATFORM_NAMES = [
    NAME + "-baremetal-amd64",
    NAME + "-virtualization-arm64",
    NAME + "-baremetal",
]


@pytest.fixture
def source(tmp_path):
    layout = str(tmp_path / "source")
    build_ours(layout, NAME, tmp_path)
    return LayoutStore(layout)


def pairs(names):
    return [(name, name) for name in names]


def test_plan_reads_everything_and_keeps_the_main_name_last(source):
    plan = engine.plan_copy(source, pairs([*PLATFORM_NAMES, NAME]))
    assert [root.name for root in plan.roots] == [*PLATFORM_NAMES, NAME]
    assert plan.main.name == NAME and plan.main.document.is_index
    # Every document after the documents it names.
    seen = set()
    for document in plan.graph.documents:
        for child in engine.walk(
            lambda digest, size: plan.graph.by_digest[digest].data, [document.descriptor], "x"
        ).documents[:-1]:
            assert child.digest in seen
        seen.add(document.digest)
    # config per architecture + kernel, initramfs, rootfs, squashfs per architecture
    assert len(plan.graph.blobs) == 2 + 4 * 2
    assert plan.main.descriptor["digest"] == plan.main.document.digest


def test_plan_refuses_a_missing_or_shrunken_blob_before_anything_is_written(source, tmp_path):
    plan = engine.plan_copy(source, pairs([NAME]))
    digest, size = engine.blob_order(plan.graph.blobs)[0]
    path = source.layout.blob_path(digest)
    with open(path, "r+b") as stream:
        stream.truncate(size - 1)
    with pytest.raises(StoreError) as error:
        engine.plan_copy(source, pairs([NAME]))
    assert "is %d bytes, but its descriptor says %d" % (size - 1, size) in str(error.value)
    os.unlink(path)
    with pytest.raises(StoreError) as error:
        engine.plan_copy(source, pairs([NAME]))
    assert "is missing from layout" in str(error.value)


def test_blob_order_is_largest_first_then_by_digest():
    assert engine.blob_order({"sha256:b": 5, "sha256:a": 5, "sha256:c": 9, "sha256:d": 1}) == [
        ("sha256:c", 9),
        ("sha256:a", 5),
        ("sha256:b", 5),
        ("sha256:d", 1),
    ]


def test_moved_names_and_the_overwrite_refusal(source):
    plan = engine.plan_copy(source, pairs([*PLATFORM_NAMES, NAME]))
    digests = {root.name: root.document.digest for root in plan.roots}
    current = dict(digests, **{PLATFORM_NAMES[0]: None, PLATFORM_NAMES[1]: "sha256:" + "1" * 64})
    assert engine.moved_names(plan, current) == PLATFORM_NAMES[:2]
    assert engine.moved_names(plan, digests) == []
    # A name that does not exist yet may be written; one that points elsewhere may not.
    engine.refuse_moves(plan, dict(digests, **{PLATFORM_NAMES[0]: None}), "here")
    with pytest.raises(engine.CopyError) as error:
        engine.refuse_moves(plan, current, "here")
    assert str(error.value).startswith(PLATFORM_NAMES[1] + " in here points at sha256:" + "1" * 64)
    # The main name is told first.
    with pytest.raises(engine.CopyError) as error:
        engine.refuse_moves(plan, dict(current, **{NAME: "sha256:" + "2" * 64}), "here")
    assert str(error.value).startswith(NAME + " in here points at sha256:" + "2" * 64)
    assert error.value.option == "overwrite"


def test_documents_to_put_are_children_first_without_the_main_one(source):
    plan = engine.plan_copy(source, pairs([*PLATFORM_NAMES, NAME]))
    documents = engine.documents_to_put(plan)
    assert plan.main.document not in documents
    assert documents == plan.graph.documents[:-1]
    assert all(document.digest in {d.digest for d in documents} for document in (r.document for r in plan.roots[:-1]))


def test_mount_candidates():
    def store(registry, repository):
        return types.SimpleNamespace(registry=registry, repository=repository)

    same = engine.mount_candidates(store("r:5000", "os/dev"), store("r:5000", "os/prod"), ["os/other", "os/dev"])
    assert same == ["os/dev", "os/other"]
    other_registry = engine.mount_candidates(store("r:5000", "os/dev"), store("m:5000", "os/prod"), ["os/x"])
    assert other_registry == ["os/x"]
    # Never from the destination repository itself; never into a layout.
    assert engine.mount_candidates(store("r:5000", "os/dev"), store("r:5000", "os/dev"), ["os/dev"]) == []
    assert engine.mount_candidates(store("r:5000", "os/dev"), store(None, None), ["os/x"]) == []
    assert engine.mount_candidates(store(None, None), store("r:5000", "os/prod"), []) == []


def test_layout_to_layout_copy_check_mode_idempotence_and_overwrite(source, tmp_path):
    names = pairs([*PLATFORM_NAMES, NAME])
    destination = LayoutStore(str(tmp_path / "destination"))

    plan = engine.plan_copy(source, names)
    checked = engine.copy(source, destination, plan, check_mode=True)
    assert checked.moved == [*PLATFORM_NAMES, NAME] and checked.blobs.copied == len(plan.graph.blobs)
    assert checked.blobs.bytes == sum(plan.graph.blobs.values())
    assert not os.path.exists(destination.layout.path)

    copied = engine.copy(source, destination, plan, concurrency=3)
    assert copied.changed and copied.digest == plan.main.document.digest
    assert copied.blobs.as_dict() == {
        "copied": len(plan.graph.blobs),
        "bytes": sum(plan.graph.blobs.values()),
        "skipped": 0,
        "mounted": 0,
    }
    recorded = OciLayout(destination.layout.path).refs()
    for root in plan.roots:
        assert recorded[root.name]["digest"] == root.document.digest
    for document in plan.graph.documents:
        assert destination.layout.read_document(document.digest) == document.data
    for digest, size in plan.graph.blobs.items():
        assert destination.layout.has_blob(digest, size)

    again = engine.copy(source, destination, engine.plan_copy(source, names), overwrite=False)
    assert not again.changed and again.blobs.skipped == len(plan.graph.blobs) and again.blobs.bytes == 0

    # Another image under the same main name: refused without overwrite, and nothing written.
    other = LayoutStore(str(tmp_path / "other"))
    build_ours(other.layout.path, NAME, tmp_path, tag="other")
    other_plan = engine.plan_copy(other, pairs([NAME]))
    with pytest.raises(engine.CopyError):
        engine.copy(other, destination, other_plan, overwrite=False)
    assert OciLayout(destination.layout.path).refs()[NAME]["digest"] == plan.main.document.digest
    assert not any(
        destination.layout.has_blob(digest) for digest in set(other_plan.graph.blobs) - set(plan.graph.blobs)
    )


class ListStream:
    """A blob stream from `offset` on, in fixed pieces (what a registry or a layout hands out)."""

    def __init__(self, data: bytes, offset: int, piece: int = 7):
        self.data, self.offset, self.piece, self.closed = data, offset, piece, False

    def iter_chunks(self, size: int):
        for start in range(self.offset, len(self.data), self.piece):
            yield self.data[start : start + self.piece]

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("answered_from", [10, 0])
def test_stream_slice_sends_exactly_its_window(answered_from):
    data = bytes(range(100))
    counter = ByteCounter()
    stream = ListStream(data, answered_from)
    # Asked from byte 10: a source that ignored the offset (answered from 0) is skipped forward.
    body = StreamSlice(stream, 10, 50, counter)
    assert len(body) == 50
    received = b""
    while True:
        part = body.read(8)
        if not part:
            break
        received += part
    assert received == data[10:60] and counter.value == 50
    body.close()
    assert stream.closed


def test_stream_slice_fails_when_the_source_ends_early():
    body = StreamSlice(ListStream(bytes(20), 0), 0, 30, ByteCounter())
    received = 0
    with pytest.raises(OSError, match="ended 10 bytes early"):
        while True:
            received += len(body.read(30))
    assert received == 20


@pytest.mark.parametrize("kept", ["prefix", "garbage", "too long"])
def test_layout_put_blob_resumes_a_kept_partial_and_recovers_from_a_bad_one(source, tmp_path, kept):
    plan = engine.plan_copy(source, pairs([NAME]))
    digest, size = engine.blob_order(plan.graph.blobs)[0]
    with open(source.layout.blob_path(digest), "rb") as stream:
        data = stream.read()
    destination = LayoutStore(str(tmp_path / "destination"))
    destination.prepare()
    partial = destination.partial_path(digest)
    half = size // 2
    content = {"prefix": data[:half], "garbage": bytes(half), "too long": data + b"x"}[kept]
    with open(partial, "wb") as stream:
        stream.write(content)

    counter = ByteCounter()
    destination.put_blob(source, digest, size, counter, retries=0)

    with open(destination.layout.blob_path(digest), "rb") as stream:
        assert stream.read() == data
    assert not os.path.exists(partial)
    # A good prefix is continued; bad kept bytes cost one clean transfer from byte 0.
    assert counter.value == {"prefix": size - half, "garbage": (size - half) + size, "too long": size}[kept]
