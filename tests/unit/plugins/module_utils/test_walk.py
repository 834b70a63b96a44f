"""The image graph walk: post-order, each document once, every document checked."""

from __future__ import annotations

import json

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._layout import MAX_DOCUMENT_SIZE
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX, OCI_MANIFEST
from ansible_collections.ironcore.image.plugins.module_utils._walk import WalkError, walk


class Store:
    """Documents by digest, and which were read (a walk reads each once)."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.reads: list[str] = []

    def add(self, document: dict | bytes, media_type: str | None = None) -> dict:
        data = document if isinstance(document, bytes) else canonical_json(document)
        digest = sha256_digest(data)
        self.documents[digest] = data
        descriptor = {"digest": digest, "size": len(data)}
        if media_type:
            descriptor["mediaType"] = media_type
        return descriptor

    def read(self, digest: str, size: int) -> bytes:
        self.reads.append(digest)
        return self.documents[digest]


def blob(name: str, size: int) -> dict:
    return {"mediaType": "application/octet-stream", "digest": sha256_digest(name.encode()), "size": size}


def manifest(store: Store, *layers: dict, config: dict | None = None) -> dict:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config or blob("config", 2),
        "layers": list(layers),
    }
    return store.add(body, OCI_MANIFEST)


def index(store: Store, *entries: dict) -> dict:
    return store.add({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}, OCI_INDEX)


def test_documents_come_children_first_each_once_and_blobs_after():
    store = Store()
    rootfs = blob("rootfs", 300)
    amd64 = manifest(store, blob("kernel-amd64", 10), rootfs)
    arm64 = manifest(store, blob("kernel-arm64", 11), rootfs)
    virtualization = manifest(store, rootfs)
    per_platform = index(store, amd64, arm64)
    combined = index(store, amd64, arm64, virtualization)

    # The names as push and copy give them: per-architecture first, the main index last.
    graph = walk(store.read, [amd64, per_platform, combined], "test")

    order = [document.digest for document in graph.documents]
    assert order == [
        amd64["digest"],
        arm64["digest"],
        per_platform["digest"],
        virtualization["digest"],
        combined["digest"],
    ]
    assert sorted(store.reads) == sorted(order)  # every document read once, though named up to three times
    assert [document.is_index for document in graph.documents] == [False, False, True, False, True]
    assert graph.blobs == {
        blob("config", 2)["digest"]: 2,
        blob("kernel-amd64", 10)["digest"]: 10,
        rootfs["digest"]: 300,
        blob("kernel-arm64", 11)["digest"]: 11,
    }
    assert graph.by_digest[combined["digest"]].data == store.documents[combined["digest"]]


def test_media_type_comes_from_the_document_when_the_descriptor_has_none():
    store = Store()
    entry = manifest(store, blob("rootfs", 3))
    root = index(store, entry)
    root.pop("mediaType")
    graph = walk(store.read, [root], "test")
    assert graph.documents[-1].media_type == OCI_INDEX and graph.documents[-1].is_index


def flip(store: Store, root: dict) -> bytes:
    """The document with one byte changed: same size, other digest."""
    return store.documents[root["digest"]].replace(b'"schemaVersion":2', b'"schemaVersion":3')


@pytest.mark.parametrize(
    "spoil, message",
    [
        (
            lambda store, root: store.documents.__setitem__(root["digest"], flip(store, root)),
            "does not match its digest",
        ),
        (lambda store, root: root.__setitem__("size", root["size"] + 1), "but its descriptor says"),
        (lambda store, root: root.__setitem__("size", MAX_DOCUMENT_SIZE + 1), "more than 4 MiB"),
        (lambda store, root: root.__setitem__("size", -1), "has no valid size"),
        (lambda store, root: root.__setitem__("size", True), "has no valid size"),
        (lambda store, root: root.__setitem__("digest", "sha512:" + "0" * 128), "no valid sha256 digest"),
    ],
)
def test_a_document_that_fails_its_checks_is_refused(spoil, message):
    store = Store()
    root = manifest(store, blob("rootfs", 3))
    spoil(store, root)
    with pytest.raises(WalkError) as error:
        walk(store.read, [root], "layout x")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_oversized_document_is_refused_before_it_is_read():
    store = Store()
    root = manifest(store, blob("rootfs", 3))
    root["size"] = MAX_DOCUMENT_SIZE + 1
    with pytest.raises(WalkError):
        walk(store.read, [root], "test")
    assert store.reads == []


def test_a_child_that_fails_its_checks_is_refused_too():
    store = Store()
    child = manifest(store, blob("rootfs", 3))
    store.documents[child["digest"]] = b'{"schemaVersion": 2}'
    with pytest.raises(WalkError) as error:
        walk(store.read, [index(store, child)], "test")
    assert child["digest"] in str(error.value)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (json.dumps({"mediaType": OCI_INDEX, "manifests": {"a": 1}}).encode(), "manifests that is not a list"),
        (json.dumps({"mediaType": OCI_MANIFEST, "layers": [{"digest": "sha256:x"}]}).encode(), "no valid sha256"),
    ],
)
def test_malformed_documents_are_refused(body, message):
    store = Store()
    with pytest.raises(WalkError) as error:
        walk(store.read, [store.add(body)], "test")
    assert message in str(error.value)


def test_a_blob_described_with_two_sizes_is_refused():
    store = Store()
    first = manifest(store, blob("rootfs", 3))
    second = manifest(store, blob("rootfs", 4))
    with pytest.raises(WalkError) as error:
        walk(store.read, [index(store, first, second)], "test")
    assert "two sizes, 3 and 4" in str(error.value)


def test_a_deeply_nested_document_is_refused_in_one_line_not_a_recursion_error():
    # Digest-correct and under 4 MiB: push, copy and sign used to end in a raw MODULE FAILURE on it.
    store = Store()
    root = store.add(b'{"mediaType":"%s","a":' % OCI_MANIFEST.encode() + b"[" * 200_000 + b"]" * 200_000 + b"}")
    with pytest.raises(WalkError, match="nested too deeply") as error:
        walk(store.read, [root], "layout x")
    assert "\n" not in str(error.value)
