# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The image graph, walked once: documents children first, then the blobs.

From a set of root descriptors, every index and manifest they reach is read
through one callable, checked here against its descriptor's digest and size
and the 4 MiB cap, parsed, and put in post-order (a document after every
document it names), each once. The config and layer blobs are collected on
the way with their sizes. Knows nothing of where the bytes come from, so the
order and the checks are unit-tested with a dictionary.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_DOCUMENT_SIZE,
    SHA256_DIGEST_RE,
    declared_media_type,
)

Descriptor = t.Mapping[str, t.Any]


class WalkError(ImageError):
    """A document of the image is missing, corrupt, too large or malformed."""


@dataclass(frozen=True)
class Document:
    """A manifest or index with its exact bytes."""

    digest: str
    media_type: str
    data: bytes
    is_index: bool

    @property
    def descriptor(self) -> dict[str, t.Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass
class Graph:
    """What the roots reach: documents in post-order, blobs (digest -> size) in first-seen order."""

    documents: list[Document] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)
    by_digest: dict[str, Document] = field(default_factory=dict)


def check_descriptor(descriptor: t.Any, what: str) -> tuple[str, int]:
    """(digest, size) of a descriptor, refused when either is not valid."""
    if not isinstance(descriptor, t.Mapping):
        raise WalkError("%s is not a descriptor object" % what)
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not SHA256_DIGEST_RE.match(digest):
        raise WalkError("%s has no valid sha256 digest (%r)" % (what, digest))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise WalkError("%s (%s) has no valid size (%r)" % (what, digest, size))
    return digest, size


def check_document(data: bytes, digest: str, size: int, where: str) -> bytes:
    """The one check every document passes: the cap, its declared size, its digest."""
    if len(data) > MAX_DOCUMENT_SIZE or size > MAX_DOCUMENT_SIZE:
        raise WalkError("document %s in %s is larger than 4 MiB; refusing it" % (digest, where))
    if len(data) != size:
        raise WalkError("document %s in %s is %d bytes, but its descriptor says %d" % (digest, where, len(data), size))
    if sha256_digest(data) != digest:
        raise WalkError("document %s in %s does not match its digest; the source is corrupt" % (digest, where))
    return data


def _media_type(descriptor: Descriptor, data: bytes) -> str:
    declared = descriptor.get("mediaType")
    return declared if isinstance(declared, str) and declared else declared_media_type(data)


def _is_index(media_type: str, body: t.Mapping[str, t.Any]) -> bool:
    return media_type in INDEX_MEDIA_TYPES or (media_type not in MANIFEST_MEDIA_TYPES and "manifests" in body)


class _Walker:
    def __init__(self, read: t.Callable[[str, int], bytes], where: str):
        self.read = read
        self.where = where
        self.graph = Graph()

    def document(self, descriptor: Descriptor, what: str) -> Document:
        digest, size = check_descriptor(descriptor, what)
        if digest in self.graph.by_digest:
            return self.graph.by_digest[digest]
        if size > MAX_DOCUMENT_SIZE:
            raise WalkError("document %s in %s is %d bytes, more than 4 MiB; refusing it" % (digest, self.where, size))
        data = check_document(self.read(digest, size), digest, size, self.where)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise WalkError("document %s in %s is not JSON" % (digest, self.where)) from exc
        if not isinstance(body, dict):
            raise WalkError("document %s in %s is not a JSON object" % (digest, self.where))
        media_type = _media_type(descriptor, data)
        is_index = _is_index(media_type, body)
        # No cycle is possible: a document would have to contain its own digest.
        if is_index:
            for child in _entries(body, "manifests", digest, self.where):
                self.document(child, "an entry of index %s" % digest)
        else:
            config = body.get("config")
            for blob in ([config] if config is not None else []) + _entries(body, "layers", digest, self.where):
                self.blob(blob, "a blob of manifest %s" % digest)
        document = Document(digest, media_type, data, is_index)
        self.graph.by_digest[digest] = document
        self.graph.documents.append(document)
        return document

    def blob(self, descriptor: Descriptor, what: str) -> None:
        digest, size = check_descriptor(descriptor, what)
        known = self.graph.blobs.setdefault(digest, size)
        if known != size:
            raise WalkError("blob %s in %s is described with two sizes, %d and %d" % (digest, self.where, known, size))


def _entries(body: t.Mapping[str, t.Any], key: str, digest: str, where: str) -> list[t.Any]:
    entries = body.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise WalkError("document %s in %s has a %s that is not a list" % (digest, where, key))
    return entries


def walk(read: t.Callable[[str, int], bytes], roots: t.Iterable[Descriptor], where: str) -> Graph:
    """Read every document the roots reach (read(digest, size) -> bytes), children before parents."""
    walker = _Walker(read, where)
    for root in roots:
        walker.document(root, "the descriptor of a name")
    return walker.graph


def root_documents(graph: Graph, roots: t.Iterable[Descriptor]) -> list[Document]:
    """The walked documents of the given roots, in their order."""
    return [graph.by_digest[str(root["digest"])] for root in roots]
