# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The OCI image layout store (image-layout spec 1.0.0).

Blobs are content addressed and written once, atomically; index.json is the
only file that changes, and every change to it happens under an exclusive
lock so that concurrent builds into one layout cannot lose each other's
names.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import re
import tarfile
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    AtomicFile,
    ChunkHook,
    HashingCounter,
    HashingWriter,
    TooLargeError,
    canonical_json,
    copy_and_hash,
    flocked,
    hash_file,
    parse_json,
    read_bounded,
    sha256_digest,
    write_bytes_atomic,
)
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    MAX_DOCUMENT_SIZE,
    OCI_INDEX,
    REF_NAME_ANNOTATION,
    SHA256_DIGEST_RE,
    descriptors,
    names_hint,
)

LAYOUT_VERSION_DOC = b'{"imageLayoutVersion":"1.0.0"}'
DIGEST_CACHE_FILE = "ironcore-digest-cache.json"
LOCK_FILE = ".ironcore.lock"
# Shared by writers between storing blobs and naming them, exclusive for a prune.
BLOBS_LOCK_FILE = ".ironcore.blobs.lock"
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# Where a document lists the descriptors of other documents, and of plain blobs.
_DOCUMENT_KEYS = ("manifests", "subject")
_BLOB_KEYS = ("config", "layers", "blobs")


class LayoutError(ImageError):
    """The layout cannot be used as asked; the message says why."""


class OciLayout:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    # ---- structure -------------------------------------------------------

    @property
    def index_path(self) -> str:
        return os.path.join(self.path, "index.json")

    def blob_path(self, digest: str) -> str:
        if not SHA256_DIGEST_RE.fullmatch(digest):
            raise LayoutError("refusing blob digest %r: only sha256:<64 hex> is accepted" % digest)
        return os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])

    def check_usable(self) -> None:
        """Fail early, before anything is written, when the path cannot hold a layout."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise LayoutError("layout %s exists and is not a directory" % self.path)
        if os.path.isdir(self.path) and not self.exists() and _foreign_entries(os.listdir(self.path)):
            raise LayoutError("layout %s is a non-empty directory without an oci-layout file" % self.path)

    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.path, "oci-layout"))

    def require(self) -> None:
        if not self.exists():
            raise LayoutError("%s is not an OCI image layout (no oci-layout file)" % self.path)

    def ensure(self) -> None:
        self.check_usable()
        # oci-layout first: until it is there, another build starting on the same new directory must see
        # nothing but this one's temporary file (see _foreign_entries), not a directory of someone else's.
        os.makedirs(self.path, exist_ok=True)
        if not self.exists():
            write_bytes_atomic(os.path.join(self.path, "oci-layout"), LAYOUT_VERSION_DOC)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)
        if not os.path.exists(self.index_path):
            write_bytes_atomic(self.index_path, canonical_json(_empty_index()))

    @contextlib.contextmanager
    def locked(self) -> t.Iterator[None]:
        """Serialise read-modify-write of index.json across processes."""
        with flocked(os.path.join(self.path, LOCK_FILE)):
            yield

    # ---- blobs -----------------------------------------------------------

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            stat = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    def put_bytes(self, data: bytes) -> tuple[str, int, bool]:
        """Store a small blob; returns (digest, size, written)."""
        digest = sha256_digest(data)
        if self.has_blob(digest, len(data)):
            return digest, len(data), False
        write_bytes_atomic(self.blob_path(digest), data)
        return digest, len(data), True

    def import_file(
        self, source: str, packed_as: str | None = None, on_chunk: ChunkHook | None = None
    ) -> tuple[str, int, bool]:
        """Copy a file into the blob store, hashing while copying (one read).

        With packed_as, the blob is a reproducible tar+gzip holding the file
        under that name instead of the raw file. Returns (digest, size, written):
        written is False when the store already held the blob. `on_chunk` sees
        the blob's bytes in order, as they are hashed.
        """
        staging = os.path.join(self.path, "blobs", "sha256", "import")
        with AtomicFile(staging) as out:
            counter = (
                _write_packed(source, packed_as, out, on_chunk) if packed_as else _write_raw(source, out, on_chunk)
            )
            final = self.blob_path(counter.digest)
            written = not self.has_blob(counter.digest, counter.size)
            if written:
                out.commit(final)
        return counter.digest, counter.size, written

    def open_blob(self, digest: str) -> t.BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as exc:
            raise LayoutError("blob %s is missing from layout %s" % (digest, self.path)) from exc

    def read_document(self, digest: str) -> bytes:
        """A manifest, index or config blob, refused when implausibly large."""
        try:
            data = read_bounded(self.blob_path(digest), MAX_DOCUMENT_SIZE)
        except FileNotFoundError as exc:
            raise LayoutError("blob %s is missing from layout %s" % (digest, self.path)) from exc
        except TooLargeError as exc:
            raise LayoutError("blob %s is more than a manifest may be (4 MiB); refusing it" % digest) from exc
        except OSError as exc:
            raise LayoutError("blob %s in layout %s: %s" % (digest, self.path, exc.strerror)) from exc
        if sha256_digest(data) != digest:
            raise LayoutError("blob %s in layout %s does not match its digest" % (digest, self.path))
        return data

    # ---- names -----------------------------------------------------------

    def read_index(self) -> dict[str, t.Any]:
        try:
            document = parse_json(read_bounded(self.index_path, MAX_DOCUMENT_SIZE))
        except FileNotFoundError:
            return _empty_index()
        except OSError as exc:
            raise LayoutError("%s: %s" % (self.index_path, exc.strerror)) from exc
        except ValueError as exc:
            raise LayoutError("%s is not valid JSON: %s" % (self.index_path, exc)) from exc
        if not isinstance(document, dict) or not isinstance(document.get("manifests", []), list):
            raise LayoutError("%s is not an OCI image index" % self.index_path)
        document.setdefault("manifests", [])
        return document

    def refs(self) -> dict[str, dict[str, t.Any]]:
        """Every recorded name and the descriptor it points at."""
        names = {}
        for entry in self.read_index()["manifests"]:
            name = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)
            if name:
                names[name] = entry
        return names

    def resolve(self, name: str) -> dict[str, t.Any]:
        entry = self.refs().get(name)
        if entry is None:
            hint = names_hint(name, self.refs())
            raise LayoutError(
                "%s is not recorded in layout %s (names there, closest first: %s)" % (name, self.path, hint)
            )
        return entry

    def set_refs(self, refs: t.Mapping[str, t.Mapping[str, t.Any]]) -> None:
        """Point each name at its descriptor; caller holds the lock."""
        index = self.read_index()
        kept = [
            entry
            for entry in index["manifests"]
            if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) not in refs
        ]
        for name, target in refs.items():
            entry = {key: value for key, value in target.items() if key != "annotations"}
            entry["annotations"] = dict(target.get("annotations") or {}, **{REF_NAME_ANNOTATION: name})
            kept.append(entry)
        index["manifests"] = kept
        write_bytes_atomic(self.index_path, canonical_json(index))

    # ---- digest cache ----------------------------------------------------

    def load_digest_cache(self) -> dict[str, t.Any]:
        """The cache may only ever make a build hash more: anything that is not plainly ours is ignored."""
        try:
            cache = parse_json(
                read_bounded(
                    os.path.join(self.path, DIGEST_CACHE_FILE), MAX_DOCUMENT_SIZE, follow_symlinks=False, private=True
                )
            )
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    def save_digest_cache(self, cache: t.Mapping[str, t.Any]) -> None:
        write_bytes_atomic(os.path.join(self.path, DIGEST_CACHE_FILE), canonical_json(cache))

    # ---- lifecycle: removing names, pruning blobs ------------------------

    def drop_refs(self, names: t.Iterable[str]) -> None:
        """Remove these names from index.json; caller holds the lock. Blobs stay."""
        gone = set(names)
        index = self.read_index()
        index["manifests"] = [
            entry
            for entry in index["manifests"]
            if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) not in gone
        ]
        write_bytes_atomic(self.index_path, canonical_json(index))

    @contextlib.contextmanager
    def adding_blobs(self) -> t.Iterator[None]:
        """Held, shared, by a writer from its first blob check to its last name.

        Many writers hold it at once; a prune takes it exclusively, so no blob
        that a writer has stored (or found already stored) and not yet named
        can be taken from under it.
        """
        with flocked(os.path.join(self.path, BLOBS_LOCK_FILE), fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def pruning(self) -> t.Iterator[None]:
        """Exclusive against every writer in adding_blobs(), then against name changes.

        The blob lock first, then the index lock: the order a build takes them
        in, so a build and a prune cannot wait for each other.
        """
        with flocked(os.path.join(self.path, BLOBS_LOCK_FILE), fcntl.LOCK_EX), self.locked():
            yield

    def stored_blobs(self) -> t.Iterator[tuple[str, os.stat_result]]:
        """(digest, stat) of every regular file in blobs/sha256 named like a digest."""
        directory = os.path.join(self.path, "blobs", "sha256")
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except FileNotFoundError:
            return
        for entry in entries:
            # Temporary files of writers start with '.', so they never match.
            if _HEX64_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    yield "sha256:" + entry.name, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue

    def remove_blob(self, digest: str) -> bool:
        """Delete one blob; False when it was already gone."""
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return True


def _foreign_entries(names: t.Iterable[str]) -> list[str]:
    """The entries of a directory that a layout being created in it right now would not have written."""
    return [
        name
        for name in names
        if name not in (LOCK_FILE, BLOBS_LOCK_FILE) and not (name.startswith(".oci-layout.") and name.endswith(".tmp"))
    ]


def _empty_index() -> dict[str, t.Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def _write_raw(source: str, out: t.Any, on_chunk: ChunkHook | None = None) -> HashingCounter:
    """The file's bytes as they are: copied by the kernel when it can, hashed as they land (see copy_and_hash)."""
    with open(source, "rb") as stream:
        return copy_and_hash(stream, out, on_chunk)


def _write_packed(source: str, member_name: str, out: t.Any, on_chunk: ChunkHook | None = None) -> HashingCounter:
    """A tar.gz of one file whose bytes depend on the file's content alone."""
    sink = HashingWriter(out, on_chunk)
    info = tarfile.TarInfo(member_name)
    info.size = os.path.getsize(source)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.USTAR_FORMAT) as archive, open(source, "rb") as stream:
            archive.addfile(info, stream)
    return sink.counter


def digest_of_file(source: str, packed_as: str | None = None, on_chunk: ChunkHook | None = None) -> tuple[str, int]:
    """What import_file would store, computed without writing anything (`on_chunk` as there)."""
    if not packed_as:
        return hash_file(source, on_chunk)

    class _Null:
        def write(self, data: t.Any) -> int:
            return len(data)

    counter = _write_packed(source, packed_as, _Null(), on_chunk)
    return counter.digest, counter.size


class BlobWalk:
    """Which blobs a name reaches: documents are read (once per walk), other blobs only counted.

    An index reaches its manifests (and a manifest or index its `subject`); a
    manifest reaches its config, layers and blobs. Sizes come from the
    descriptors, and from the bytes themselves for the documents read.
    """

    def __init__(self, layout: OciLayout):
        self.layout = layout
        self._documents: dict[str, dict[str, t.Any]] = {}

    def document(self, digest: str) -> dict[str, t.Any]:
        """A parsed document of the layout (checked against its digest and the 4 MiB cap)."""
        if digest not in self._documents:
            data = self.layout.read_document(digest)
            try:
                parsed = parse_json(data)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise LayoutError("blob %s in layout %s is not a JSON document" % (digest, self.layout.path))
            self._documents[digest] = parsed
        return self._documents[digest]

    def reach(self, descriptor: t.Mapping[str, t.Any], follow_subject: bool = True) -> dict[str, int]:
        """digest -> size of every blob reached from a document's descriptor, itself included.

        Without follow_subject, a referrer reaches its own blobs but not its subject (an attachment
        must not keep alive the image it is about).
        """
        reached: dict[str, int] = {}
        pending = [descriptor]
        keys = _DOCUMENT_KEYS if follow_subject else tuple(key for key in _DOCUMENT_KEYS if key != "subject")
        while pending:
            current = pending.pop()
            digest = _descriptor_digest(current, self.layout)
            if digest in reached:
                continue
            reached[digest] = _size(current)
            document = self.document(digest)
            for key in keys:
                pending.extend(descriptors(document.get(key)))
            for key in _BLOB_KEYS:
                for blob in descriptors(document.get(key)):
                    reached.setdefault(_descriptor_digest(blob, self.layout), _size(blob))
        return reached


def _descriptor_digest(descriptor: t.Mapping[str, t.Any], layout: OciLayout) -> str:
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not SHA256_DIGEST_RE.match(digest):
        raise LayoutError("layout %s holds a descriptor without a sha256 digest (%r)" % (layout.path, digest))
    return digest


def _size(descriptor: t.Mapping[str, t.Any]) -> int:
    size = descriptor.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
