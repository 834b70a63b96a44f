# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The image graph, walked once: documents children first, then the blobs.

From a set of root descriptors, every index and manifest they reach is read
through one callable, checked and parsed by `_document.parse_document()`
(its descriptor's digest and size, the 4 MiB cap, JSON with a depth guard,
index or manifest by the one rule), and put in post-order (a document after every
document it names), each once. The config and layer blobs are collected on
the way with their sizes. Knows nothing of where the bytes come from, so the
order and the checks are unit-tested with a dictionary.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._document import (
    DocumentError,
    ParsedDocument,
    check_descriptor,
    check_document,
    parse_document,
)
from ansible_collections.ironcore.image.plugins.module_utils._model import MAX_DOCUMENT_SIZE

Descriptor = t.Mapping[str, t.Any]

# The walk's refusals are the document parser's; the names stay for the callers that catch them.
WalkError = DocumentError
Document = ParsedDocument
__all__ = [
    "Document",
    "Graph",
    "WalkError",
    "check_descriptor",
    "check_document",
    "parse_document",
    "root_documents",
    "walk",
]


@dataclass
class Graph:
    """What the roots reach: documents in post-order, blobs (digest -> size) in first-seen order."""

    documents: list[Document] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)
    by_digest: dict[str, Document] = field(default_factory=dict)


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
        document = parse_document(self.read(digest, size), descriptor, self.where)
        body, is_index = document.body, document.is_index
        # No cycle is possible: a document would have to contain its own digest.
        if is_index:
            for child in _entries(body, "manifests", digest, self.where):
                self.document(child, "an entry of index %s" % digest)
        else:
            config = body.get("config")
            for blob in ([config] if config is not None else []) + _entries(body, "layers", digest, self.where):
                self.blob(blob, "a blob of manifest %s" % digest)
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
