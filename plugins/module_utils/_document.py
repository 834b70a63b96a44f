# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The one way a manifest or index is read: checked, parsed, and told index from manifest.

Every reader of a document (the walk, prune's reachability walk, selection,
referrers, signatures, a mirror's `index.json`, the delta index lookup) goes
through `parse_document()`: the 4 MiB cap, the descriptor's size and digest,
JSON with a depth guard, and `is_index()`, the one rule for what a document
is. `check_descriptor()` is the one descriptor validator. Pure: no I/O.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    MAX_DOCUMENT_SIZE,
    SHA256_DIGEST_RE,
    document_kind,
)

# An OCI document nests a handful of levels (index -> entry -> annotations); anything
# far deeper is hostile, and would make every later recursive reader (json.dumps, a
# schema check) fail with a RecursionError instead of a message.
MAX_DOCUMENT_DEPTH = 64


class DocumentError(ImageError):
    """A manifest or index (or its descriptor) is missing, corrupt, too large or malformed."""


@dataclass(frozen=True)
class ParsedDocument:
    """A manifest or index: its exact bytes, its parsed body and what it is."""

    digest: str
    media_type: str
    data: bytes
    is_index: bool
    # The body parse_document() parsed; a document built from bytes we wrote is parsed when asked.
    parsed: dict[str, t.Any] | None = field(default=None, compare=False, repr=False)

    @property
    def body(self) -> dict[str, t.Any]:
        return self.parsed if self.parsed is not None else load_json(self.data, "document %s" % self.digest)

    @property
    def descriptor(self) -> dict[str, t.Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


def check_descriptor(descriptor: t.Any, what: str) -> tuple[str, int]:
    """(digest, size) of a descriptor, refused when either is not valid (never a size made up)."""
    if not isinstance(descriptor, t.Mapping):
        raise DocumentError("%s is not a descriptor object" % what)
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not SHA256_DIGEST_RE.fullmatch(digest):
        raise DocumentError("%s has no valid sha256 digest (%r)" % (what, digest))
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DocumentError("%s (%s) has no valid size (%r)" % (what, digest, size))
    return digest, size


def check_document(data: bytes, digest: str, size: int, where: str) -> bytes:
    """The cap, the declared size and the digest, in that order: the bytes, or a one-line refusal."""
    if len(data) > MAX_DOCUMENT_SIZE or size > MAX_DOCUMENT_SIZE:
        raise DocumentError("document %s in %s is more than 4 MiB; refusing it" % (digest, where))
    if len(data) != size:
        raise DocumentError(
            "document %s in %s is %d bytes, but its descriptor says %d" % (digest, where, len(data), size)
        )
    if sha256_digest(data) != digest:
        raise DocumentError("document %s in %s does not match its digest; the source is corrupt" % (digest, where))
    return data


def load_json(data: bytes | str, what: str) -> dict[str, t.Any]:
    """A JSON object, or a one-line DocumentError: not JSON, not an object, or nested too deeply."""
    try:
        body = json.loads(data)
    except RecursionError as exc:
        raise DocumentError("%s is nested too deeply to be a manifest or index; refusing it" % what) from exc
    except ValueError as exc:
        raise DocumentError("%s is not JSON: %s" % (what, exc)) from exc
    if not isinstance(body, dict):
        raise DocumentError("%s is not a JSON object" % what)
    if _deeper_than(body, MAX_DOCUMENT_DEPTH):
        raise DocumentError(
            "%s is nested more than %d levels deep, more than a manifest or index may be; refusing it"
            % (what, MAX_DOCUMENT_DEPTH)
        )
    return body


def _deeper_than(value: t.Any, limit: int) -> bool:
    """Whether a parsed JSON value nests more than `limit` containers (iteratively: no recursion to overflow)."""
    pending: list[tuple[t.Any, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        children = current.values() if isinstance(current, dict) else current if isinstance(current, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                pending.append((child, depth + 1))
    return False


def is_index(body: t.Mapping[str, t.Any], media_type: str | None = None) -> bool:
    """The one rule: `_model.document_kind()` (the document's own mediaType, then the
    descriptor's, then its shape); a document that is neither is read as a manifest."""
    return document_kind(body, media_type) == "index"


def parse_document(data: bytes, descriptor: t.Mapping[str, t.Any], where: str) -> ParsedDocument:
    """The document a descriptor names: checked (cap, size, digest), parsed (depth-guarded), classified."""
    digest, size = check_descriptor(descriptor, "the descriptor of a document in %s" % where)
    check_document(data, digest, size, where)
    body = load_json(data, "document %s in %s" % (digest, where))
    declared = descriptor.get("mediaType")
    if not (isinstance(declared, str) and declared):
        declared = body.get("mediaType")
    media_type = declared if isinstance(declared, str) else ""
    return ParsedDocument(digest, media_type, data, is_index(body, media_type), body)
