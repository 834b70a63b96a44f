"""An in-memory image store for unit tests: an `_store.ImageSource` and `ImageDestination` with no files or network.

Documents and blobs live in dicts by digest, names in a dict; every read is recorded, and a
stream can be made to break after some bytes (`break_after`), as a reset connection does.
mypy checks it against the protocols (`_typed` below), so a protocol change shows here first.
"""

from __future__ import annotations

import contextlib
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import MirroredSource
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_INDEX, OCI_MANIFEST, ImageReference
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageDestination, ImageSource, StoreError
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobLocation
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter
from ansible_collections.ironcore.image.plugins.module_utils._walk import Document


class MemoryStream:
    """A blob from `offset` on, in fixed pieces; breaks (retryably) after `cut` bytes when given."""

    def __init__(self, data: bytes, offset: int, length: int | None, piece: int, cut: int | None):
        self.offset = offset
        self._data = data[offset : None if length is None else offset + length]
        self._piece = piece
        self._cut = cut
        self.closed = False

    def iter_chunks(self, size: int) -> t.Iterator[bytes]:
        end = len(self._data) if self._cut is None else min(self._cut, len(self._data))
        for start in range(0, end, self._piece):
            yield self._data[start : min(start + self._piece, end)]
        if self._cut is not None:
            raise ImageError("connection reset (injected)", retryable=True)

    def close(self) -> None:
        self.closed = True


class MemoryStore:
    """One image store in memory, as a source and as a destination."""

    def __init__(self, registry: str | None = None, repository: str | None = None, piece: int = 4096):
        self.registry = registry
        self.repository = repository
        self.documents: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.names: dict[str, dict[str, t.Any]] = {}
        self.piece = piece
        # What was asked, in order: ("document", digest), ("blob", digest, offset, length).
        self.reads: list[tuple[t.Any, ...]] = []
        # Cuts for the next streams, one per open_blob: None streams the whole rest.
        self.break_after: list[int | None] = []
        self.pauses = 0

    # ---- building content --------------------------------------------------

    def add_blob(self, data: bytes, media_type: str = "application/octet-stream") -> dict[str, t.Any]:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_document(self, body: t.Mapping[str, t.Any] | bytes, media_type: str | None = None) -> dict[str, t.Any]:
        data = body if isinstance(body, bytes) else canonical_json(body)
        digest = sha256_digest(data)
        self.documents[digest] = data
        return {"mediaType": media_type or OCI_MANIFEST, "digest": digest, "size": len(data)}

    def add_manifest(self, *layers: t.Mapping[str, t.Any], config: bytes = b"{}") -> dict[str, t.Any]:
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.add_blob(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [dict(layer) for layer in layers],
        }
        return self.add_document(body, OCI_MANIFEST)

    def add_index(self, *manifests: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [dict(entry) for entry in manifests]}
        return self.add_document(body, OCI_INDEX)

    # ---- ImageSource ---------------------------------------------------------

    @property
    def retries(self) -> int:
        return self.pauses

    def describe(self) -> str:
        return "memory:%s" % (self.repository or "store")

    def source_url(self) -> str:
        return "memory://%s" % (self.repository or "store")

    def served(self, digest: str) -> list[dict[str, t.Any]] | None:
        return None

    def mirror_report(self) -> dict[str, t.Any]:
        return {}

    def resolve(self, name: str) -> dict[str, t.Any]:
        found = self.current_name(name)
        if found is None:
            raise StoreError("%s is not in %s" % (name, self.describe()))
        return found

    def current_name(self, name: str) -> dict[str, t.Any] | None:
        if name in self.documents:
            data = self.documents[name]
            return {"mediaType": OCI_MANIFEST, "digest": name, "size": len(data)}
        found = self.names.get(name)
        return dict(found) if found is not None else None

    def read_document(self, digest: str, size: int) -> bytes:
        self.reads.append(("document", digest))
        try:
            return self.documents[digest]
        except KeyError:
            raise StoreError("document %s is not in %s" % (digest, self.describe())) from None

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        return self.current_name(name)

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        return None

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return None

    def check_blob(self, digest: str, size: int) -> None:
        if digest not in self.blobs:
            raise StoreError("blob %s is missing from %s" % (digest, self.describe()))

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> MemoryStream:
        self.reads.append(("blob", digest, offset, length))
        self.check_blob(digest, 0)
        cut = self.break_after.pop(0) if self.break_after else None
        return MemoryStream(self.blobs[digest], offset, length, self.piece, cut)

    def local_blob_path(self, digest: str) -> str | None:
        return None

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False

    def blob_location(self, digest: str) -> BlobLocation:
        self.check_blob(digest, 0)
        return BlobLocation("memory://%s/%s" % (self.repository or "store", digest), {})

    def retry_pause(self, attempt: int, what: str, reason: str) -> None:
        self.pauses += 1

    # ---- ImageDestination ----------------------------------------------------------

    def prepare(self) -> None:
        """Nothing to prepare in memory."""

    def has_blob(self, digest: str, size: int) -> bool:
        return len(self.blobs.get(digest, b"")) == size and digest in self.blobs

    def can_mount(self, digest: str, size: int, from_repository: str) -> bool:
        return False

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        return False

    def put_blob(self, source: ImageSource, digest: str, size: int, counter: ByteCounter, retries: int) -> None:
        received = bytearray()
        stream = source.open_blob(digest, 0, None)
        try:
            for chunk in stream.iter_chunks(self.piece):
                received += chunk
                counter.add(len(chunk))
        finally:
            stream.close()
        if len(received) != size or sha256_digest(bytes(received)) != digest:
            raise StoreError("blob %s from %s is not what its descriptor says" % (digest, source.describe()))
        self.blobs[digest] = bytes(received)

    def put_document(self, document: Document) -> None:
        self.documents[document.digest] = document.data

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        return tag

    def name_to_resolve(self, ref: ImageReference, given: str) -> str:
        return given

    def put_small_blob(self, data: bytes) -> None:
        self.blobs[sha256_digest(data)] = data

    def put_file_blob(self, path: str, digest: str, size: int) -> None:
        with open(path, "rb") as blob:
            data = blob.read()
        if len(data) != size or sha256_digest(data) != digest:
            raise StoreError("%s is not the blob %s its descriptor says" % (path, digest))
        self.blobs[digest] = data

    def put_referrer(self, digest: str, manifest: bytes) -> bool:
        self.documents[digest] = manifest
        return False

    def update_name(self, name: str, change: t.Callable[[], Document | None]) -> None:
        document = change()
        if document is not None:
            self.set_name(name, document.descriptor, document)

    @contextlib.contextmanager
    def writing(self, check_mode: bool) -> t.Iterator[MemoryStore]:
        yield self

    def set_name(self, name: str, descriptor: t.Mapping[str, t.Any], document: Document) -> None:
        self.documents[document.digest] = document.data
        self.names[name] = dict(descriptor)


def _typed(store: MemoryStore) -> tuple[ImageSource, ImageDestination]:
    """Never called: mypy checks here that MemoryStore satisfies both protocols."""
    return store, store


def _mirrored_is_a_source(store: MirroredSource) -> ImageSource:
    """Never called: mypy checks here that the mirror wrapper answers everything a source is asked."""
    return store
