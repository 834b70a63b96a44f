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
import errno
import fcntl
import gzip
import os
import re
import stat
import tarfile
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, check_descriptor, load_json
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    AtomicFile,
    ChunkHook,
    HashingCounter,
    HashingWriter,
    LockWait,
    TooLargeError,
    canonical_json,
    copy_and_hash,
    flocked,
    hash_file,
    open_directory,
    parse_json,
    read_bounded,
    sha256_digest,
    shared_directory_reason,
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
# How this process waits for a layout lock another run holds: (timeout or None, warn), set once by the
# module (its lock_timeout option) through wait_for_layout_locks(); None waits as long as it takes, silently.
_LOCK_WAITING: tuple[float | None, t.Callable[[str], None] | None] | None = None
# Shared by writers between storing blobs and naming them, exclusive for a prune.
BLOBS_LOCK_FILE = ".ironcore.blobs.lock"
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
# The directories below the root that blobs are written to and deleted from, outermost first.
BLOB_DIRECTORIES = ("blobs", "sha256")
_SHARED = (
    "%s %s may be written by other users (%s); make it writable only by its owner,"
    " or set allow_shared_dest: true if everyone who can write there is trusted"
)
_LINKED = (
    "%s %s is a symbolic link; refusing to write or delete blobs through it (allow_shared_dest does not"
    " cover links): make it a directory inside the layout"
)
# Where a document lists the descriptors of other documents, and of plain blobs.
_DOCUMENT_KEYS = ("manifests", "subject")
_BLOB_KEYS = ("config", "layers", "blobs")


class LayoutError(ImageError):
    """The layout cannot be used as asked; the message says why."""


def wait_for_layout_locks(timeout: float | None, warn: t.Callable[[str], None] | None) -> None:
    """Every layout lock this process waits for warns at once through `warn` and gives up after `timeout` s."""
    global _LOCK_WAITING  # pylint: disable=global-statement  # one setting per module process
    _LOCK_WAITING = (float(timeout) if timeout is not None else None, warn)


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

    def blob_directory_paths(self) -> list[str]:
        """blobs and blobs/sha256, outermost first."""
        return [os.path.join(self.path, *BLOB_DIRECTORIES[: depth + 1]) for depth in range(len(BLOB_DIRECTORIES))]

    def refuse_shared(self, allow_shared: bool, label: str = "layout") -> None:
        """Refuse, before anything is written or deleted, a layout others could plant links or swap files in.

        A link at blobs or blobs/sha256 always: it would take the blobs' writes and deletes to a directory
        whoever made it chose. The root, blobs and blobs/sha256 (those that exist) when another user owns
        one or its group or others may write to it without the sticky bit, unless `allow_shared`.
        """
        if not os.path.isdir(self.path):
            return
        for path in self.blob_directory_paths():
            if os.path.islink(path):
                raise LayoutError(_LINKED % (label, path))
        if allow_shared:
            return
        for path in [self.path, *self.blob_directory_paths()]:
            reason = shared_directory_reason(path) if os.path.isdir(path) else None
            if reason:
                raise LayoutError(_SHARED % (label, path, reason))

    def ensure(self) -> None:
        self.check_usable()
        # makedirs would follow a planted link at blobs and create sha256 wherever it points.
        self.refuse_shared(allow_shared=True)
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
        with flocked(os.path.join(self.path, LOCK_FILE), wait=self._lock_wait()):
            yield

    def _lock_wait(self) -> LockWait | None:
        if _LOCK_WAITING is None:
            return None
        timeout, warn = _LOCK_WAITING
        return LockWait("another run that changes the layout %s" % self.path, timeout, warn)

    # ---- blobs -----------------------------------------------------------

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            status = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return size is None or status.st_size == size

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
            document = load_json(read_bounded(self.index_path, MAX_DOCUMENT_SIZE), self.index_path)
        except FileNotFoundError:
            return _empty_index()
        except OSError as exc:
            raise LayoutError("%s: %s" % (self.index_path, exc.strerror)) from exc
        except DocumentError as exc:
            raise LayoutError(str(exc)) from exc
        if not isinstance(document.get("manifests", []), list):
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
        with flocked(os.path.join(self.path, BLOBS_LOCK_FILE), fcntl.LOCK_SH, self._lock_wait()):
            yield

    @contextlib.contextmanager
    def pruning(self) -> t.Iterator[None]:
        """Exclusive against every writer in adding_blobs(), then against name changes.

        The blob lock first, then the index lock: the order a build takes them
        in, so a build and a prune cannot wait for each other.
        """
        with flocked(os.path.join(self.path, BLOBS_LOCK_FILE), fcntl.LOCK_EX, self._lock_wait()), self.locked():
            yield

    @contextlib.contextmanager
    def blob_directory(self, allow_shared: bool, label: str = "layout") -> t.Iterator[int | None]:
        """blobs/sha256 opened one step at a time without following links (None when there is none yet).

        What is listed and deleted through the descriptor stays inside the layout, whatever
        is swapped in meanwhile. Refused as refuse_shared() refuses, checked on the open
        directories themselves.
        """
        with contextlib.ExitStack() as opened:
            fd = open_directory(self.path)
            opened.callback(os.close, fd)
            path = self.path
            for name in BLOB_DIRECTORIES:
                self._refuse_shared_fd(fd, path, allow_shared, label)
                path = os.path.join(path, name)
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    yield None
                    return
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                        os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                    ):
                        raise LayoutError(_LINKED % (label, path)) from exc
                    raise
                opened.callback(os.close, fd)
            self._refuse_shared_fd(fd, path, allow_shared, label)
            yield fd

    @staticmethod
    def _refuse_shared_fd(fd: int, path: str, allow_shared: bool, label: str) -> None:
        reason = None if allow_shared else shared_directory_reason(fd)
        if reason:
            raise LayoutError(_SHARED % (label, path, reason))

    def stored_blobs(self, directory: int | None) -> t.Iterator[tuple[str, os.stat_result]]:
        """(digest, stat) of every regular file named like a digest in blobs/sha256, open as `directory`."""
        if directory is None:
            return
        with os.scandir(directory) as listing:
            entries = list(listing)
        for entry in entries:
            # Temporary files of writers start with '.', so they never match.
            if _HEX64_RE.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    yield "sha256:" + entry.name, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue

    def remove_blob(self, digest: str, directory: int) -> bool:
        """Delete one blob from blobs/sha256, open as `directory` (never through a link); False when it was gone."""
        name = os.path.basename(self.blob_path(digest))
        try:
            os.unlink(name, dir_fd=directory)
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
                parsed = load_json(data, "blob %s in layout %s" % (digest, self.layout.path))
            except DocumentError as exc:
                raise LayoutError(str(exc)) from exc
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
            digest, size = _checked(current, self.layout)
            if digest in reached:
                continue
            reached[digest] = size
            document = self.document(digest)
            for key in keys:
                pending.extend(descriptors(document.get(key)))
            for key in _BLOB_KEYS:
                for blob in descriptors(document.get(key)):
                    blob_digest, blob_size = _checked(blob, self.layout)
                    reached.setdefault(blob_digest, blob_size)
        return reached


def _checked(descriptor: t.Mapping[str, t.Any], layout: OciLayout) -> tuple[str, int]:
    """(digest, size) by the one descriptor validator: a bad size is refused, never counted as 0."""
    try:
        return check_descriptor(descriptor, "a descriptor in layout %s" % layout.path)
    except DocumentError as exc:
        raise LayoutError(str(exc)) from exc
