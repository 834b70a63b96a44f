# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Image stores: where the copy engine reads an image from and writes it to.

An `ImageSource` resolves a name to a root descriptor, hands out documents
by digest and opens blob streams at an offset. An `ImageDestination` says
whether it has a blob, takes a blob from a source (resuming where it can),
mounts one from another repository of the same registry, stores documents
as their exact bytes and points names at them. Both sides of a copy are
therefore siblings: `LayoutStore` (an OCI image layout) and `RegistryStore`
(one repository of a registry, through `_client.py` and `_upload.py`) each
implement both. Names are what the store calls them: a tag in a registry
repository, the `org.opencontainers.image.ref.name` in a layout.

Document checks (digest, size, 4 MiB) belong to `_walk.py`, which reads
every document through `read_document`; the stores only refuse what they
cannot even read.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import threading
import time
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    AtomicFile,
    BackgroundHashingCounter,
    FileStream,
    HashingCounter,
    resume_hash,
    sha256_digest,
)
from ansible_collections.ironcore.image.plugins.module_utils._layout import LayoutError, OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    SHA256_DIGEST_RE,
    ImageReference,
    InvalidReference,
    names_hint,
)
from ansible_collections.ironcore.image.plugins.module_utils._transfer import (
    BlobLocation,
    BlobStream,
    ResumableRead,
    backoff_delay,
)
from ansible_collections.ironcore.image.plugins.module_utils._walk import Document

if t.TYPE_CHECKING:
    # Only for the types: a fetch or info from a layout must not load the registry client (docs/performance.md).
    from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, UploadSession
    from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter

PARTIAL_SUFFIX = ".partial"
# The header a registry with the referrers API answers a manifest PUT with when it indexed its subject.
SUBJECT_HEADER = "OCI-Subject"
# Read-modify-write rounds of a registry name (a tag-schema index) before giving up on concurrent writers.
NAME_UPDATE_ATTEMPTS = 6
# After our write, a pause before the re-read, so that a writer who read before our write has landed
# its own write by then (jittered); and the base of the backoff between rounds (_transfer.backoff_delay).
SETTLE_SECONDS = 0.1
NAME_BACKOFF_SECONDS = 0.2

# Threads of one process that update the same registry name wait for each other (processes cannot).
_NAME_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
_NAME_LOCKS_GUARD = threading.Lock()
# Pause between attempts of a layout's own resume loop when the source has no backoff of its own.
LOCAL_BACKOFF = 0.2


def _reason(exc: Exception) -> str:
    """An OSError's own words without its errno prefix; other errors as they are."""
    return str(exc.strerror) if isinstance(exc, OSError) and exc.strerror else str(exc)


class StoreError(ImageError):
    """A store cannot do what was asked; one line."""


class _Corrupt(StoreError):
    """The bytes received are not the blob: the partial file is worthless."""


class ImageSource(t.Protocol):
    """Where an image is read from."""

    registry: str | None
    repository: str | None

    @property
    def retries(self) -> int:
        """Requests retried so far (a registry's client counts them; a layout never retries)."""

    def describe(self) -> str: ...

    def source_url(self) -> str:
        """How results name the store: a registry's base URL, a layout's file:// URL, a mirror's url."""

    def resolve(self, name: str) -> dict[str, t.Any]: ...

    def current_name(self, name: str) -> dict[str, t.Any] | None: ...

    def read_document(self, digest: str, size: int) -> bytes: ...

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        """The descriptor of a signature or referrers-tag name (`sha256-<hex>[.sig]`), looked up exactly as given."""

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """The store's own referrers list of a subject (the registry's API answer), or None when it has none."""

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        """The mirror that listed a subject's attachments because the origin could not; None for the store's own."""

    def check_blob(self, digest: str, size: int) -> None: ...

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream: ...

    def local_blob_path(self, digest: str) -> str | None: ...

    def reject_blob(self, digest: str, reason: str) -> bool:
        """After a blob failed verification: True when another source may serve it (mirrors), else False."""

    def blob_location(self, digest: str) -> BlobLocation:
        """Where a plain client reads the blob (info's layer URLs, HTTP boot); an ImageError when it cannot say."""

    def retry_pause(self, attempt: int, what: str, reason: str) -> None: ...

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        """What the store calls `tag` of `ref`'s repository (a `.sig`, a referrers index)."""

    def name_to_resolve(self, ref: ImageReference, given: str) -> str:
        """What resolve() takes for the name `given` (parsed: `ref`): a layout's name as given, a repository's tag."""

    def served(self, digest: str) -> list[dict[str, t.Any]] | None:
        """Who served how many bytes of a blob ([{url, bytes}]) behind mirrors; None for a store that serves alone."""

    def mirror_report(self) -> dict[str, t.Any]:
        """`bytes_from_origin` and `mirror_errors` behind mirrors; {} for a store that serves alone."""


class ImageDestination(t.Protocol):
    """Where an image is written to."""

    registry: str | None
    repository: str | None

    @property
    def retries(self) -> int:
        """Requests retried so far (a registry's client counts them; a layout never retries)."""

    def describe(self) -> str: ...

    def prepare(self) -> None: ...

    def has_blob(self, digest: str, size: int) -> bool: ...

    def can_mount(self, digest: str, size: int, from_repository: str) -> bool: ...

    def mount_blob(self, digest: str, from_repository: str) -> bool: ...

    def put_blob(self, source: ImageSource, digest: str, size: int, counter: ByteCounter, retries: int) -> None: ...

    def put_document(self, document: Document) -> None: ...

    def put_small_blob(self, data: bytes) -> None: ...

    def put_file_blob(self, path: str, digest: str, size: int) -> None: ...

    def writing(self, check_mode: bool) -> t.ContextManager[t.Any]: ...

    def put_referrer(self, digest: str, manifest: bytes) -> bool: ...

    def update_name(self, name: str, change: t.Callable[[], Document | None]) -> None: ...

    def current_name(self, name: str) -> dict[str, t.Any] | None: ...

    def set_name(self, name: str, descriptor: t.Mapping[str, t.Any], document: Document) -> None: ...


# ---- an OCI image layout ------------------------------------------------------


class LayoutStore:
    """An OCI image layout as a source and as a destination."""

    registry: str | None = None
    repository: str | None = None
    retries = 0

    def __init__(self, path: str, allow_shared: bool = False, label: str = "layout"):
        self.layout = OciLayout(path)
        # As a destination: whether a layout others can write to is used (allow_shared_dest), and the option it is.
        self.allow_shared = allow_shared
        self.label = label
        self._holding: contextlib.ExitStack | None = None

    def describe(self) -> str:
        return "layout %s" % self.layout.path

    def source_url(self) -> str:
        return "file://" + self.layout.path

    def served(self, digest: str) -> list[dict[str, t.Any]] | None:
        return None

    def mirror_report(self) -> dict[str, t.Any]:
        return {}

    def __enter__(self) -> LayoutStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the blob lock (see hold_blobs); the names are recorded, or never will be."""
        if self._holding is not None:
            holding, self._holding = self._holding, None
            holding.close()

    # ---- reading --------------------------------------------------------

    def require(self) -> None:
        try:
            self.layout.require()
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc

    def _refs(self) -> dict[str, dict[str, t.Any]]:
        if not self.layout.exists():
            return {}
        try:
            return self.layout.refs()
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc

    def current_name(self, name: str) -> dict[str, t.Any] | None:
        """The descriptor a name is recorded with: as given, as a normalised reference, or as a bare tag."""
        refs = self._refs()
        for candidate in _layout_name_candidates(name):
            if candidate in refs:
                entry = refs[candidate]
                if not isinstance(entry.get("digest"), str) or not SHA256_DIGEST_RE.match(entry["digest"]):
                    raise StoreError("%s is recorded in %s without a valid digest" % (candidate, self.describe()))
                descriptor = {key: value for key, value in entry.items() if key != "annotations"}
                annotations = {k: v for k, v in (entry.get("annotations") or {}).items() if k != REF_NAME_ANNOTATION}
                if annotations:
                    descriptor["annotations"] = annotations
                return descriptor
        return None

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        # Exactly this name: the other spellings current_name() tries would find a bare `latest`.
        found = self._refs().get(name)
        if found is None:
            return None
        return {key: value for key, value in found.items() if key != "annotations"}

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """A layout has no referrers API: its referrers are in the tag schema."""
        return None

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return None

    def resolve(self, name: str) -> dict[str, t.Any]:
        self.require()
        found = self.current_name(name)
        if found is None:
            hint = names_hint(name, self._refs())
            raise StoreError(
                "%s is not recorded in layout %s (names there, closest first: %s)" % (name, self.layout.path, hint)
            )
        return found

    def read_document(self, digest: str, size: int) -> bytes:
        try:
            return self.layout.read_document(digest)
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc
        except OSError as exc:
            raise StoreError("reading %s failed: %s" % (self.describe(), exc.strerror or exc)) from exc

    def check_blob(self, digest: str, size: int) -> None:
        """Before anything is sent: the blob is there with the size its descriptor says."""
        try:
            actual = os.path.getsize(self.layout.blob_path(digest))
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise StoreError("blob %s is missing from layout %s" % (digest, self.layout.path)) from exc
        if actual != size:
            raise StoreError(
                "blob %s in layout %s is %d bytes, but its descriptor says %d"
                % (digest, self.layout.path, actual, size)
            )

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        try:
            return FileStream(self.layout.blob_path(digest), offset, length)
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise StoreError("blob %s is missing from layout %s" % (digest, self.layout.path)) from exc

    def local_blob_path(self, digest: str) -> str | None:
        return self.layout.blob_path(digest)

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False

    def blob_location(self, digest: str) -> BlobLocation:
        try:
            return BlobLocation("file://" + self.layout.blob_path(digest), {})
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc

    def retry_pause(self, attempt: int, what: str, reason: str) -> None:
        time.sleep(backoff_delay(attempt - 1, base=LOCAL_BACKOFF))

    # ---- writing --------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse, before anything is written, a path that cannot hold a layout (a file, say)."""
        try:
            self.layout.check_usable()
        except LayoutError as exc:
            raise StoreError("destination: %s" % exc) from exc

    def refuse_shared(self) -> None:
        """Refuse a layout (or its blobs, blobs/sha256) others could plant links in, unless allowed."""
        try:
            self.layout.refuse_shared(self.allow_shared, self.label)
        except LayoutError as exc:
            raise StoreError(str(exc)) from exc

    def prepare(self) -> None:
        """Create the layout when needed, check its directories, and hold its blob lock until close()."""
        try:
            self.layout.ensure()
        except LayoutError as exc:
            raise StoreError("destination: %s" % exc) from exc
        self.refuse_shared()
        self.hold_blobs()

    def hold_blobs(self) -> None:
        """Take the layout's shared blob lock, the one builds take, and keep it until close().

        Taken before the first "have I got this blob" and kept until the names
        are recorded: a prune takes the lock exclusively, so it cannot delete an
        old, unnamed blob this writer found already stored and counts on.
        """
        if self._holding is not None:
            return
        holding = contextlib.ExitStack()
        try:
            holding.enter_context(self.layout.adding_blobs())
        except OSError as exc:
            holding.close()
            raise StoreError("locking %s failed: %s" % (self.describe(), exc.strerror or exc)) from exc
        self._holding = holding

    def has_blob(self, digest: str, size: int) -> bool:
        return self.layout.has_blob(digest, size)

    def can_mount(self, digest: str, size: int, from_repository: str) -> bool:
        return False

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        return False

    def put_small_blob(self, data: bytes) -> None:
        """Store a blob held in memory (a signature payload, a config), unless the layout has it."""
        try:
            self.layout.put_bytes(data)
        except (LayoutError, OSError) as exc:
            raise StoreError("storing a blob in %s failed: %s" % (self.describe(), _reason(exc))) from exc

    def put_file_blob(self, path: str, digest: str, size: int) -> None:
        """Store a local file as the blob `digest`, unless the layout has it; refuse a file that changed."""
        try:
            stored, _size, _written = self.layout.import_file(path)
        except (LayoutError, OSError) as exc:
            raise StoreError("storing %s in %s failed: %s" % (path, self.describe(), _reason(exc))) from exc
        if stored != digest:
            raise StoreError("%s changed while it was stored in %s; run again" % (path, self.describe()))

    def put_referrer(self, digest: str, manifest: bytes) -> bool:
        """Store a referrer manifest; False: a layout lists referrers only in their tag-schema index."""
        self.put_small_blob(manifest)
        return False

    def update_name(self, name: str, change: t.Callable[[], Document | None]) -> None:
        """Point `name` at what `change()` makes of it, under the index lock (None: it says so already)."""
        try:
            with self.layout.locked():
                document = change()
                if document is not None:
                    self.layout.put_bytes(document.data)
                    self.layout.set_refs({name: document.descriptor})
        except (LayoutError, OSError) as exc:
            raise StoreError("updating %s in %s failed: %s" % (name, self.describe(), _reason(exc))) from exc

    @contextlib.contextmanager
    def writing(self, check_mode: bool) -> t.Iterator[LayoutStore]:
        """The span of one write: the blob lock from the first "have I got it" until the names are
        recorded, so a prune waits (see hold_blobs); a new layout takes it in prepare(). Nested spans
        keep the outer one's lock; check mode takes none."""
        held_before = self._holding is not None
        if not check_mode and self.layout.exists():
            self.hold_blobs()
        try:
            yield self
        finally:
            if not held_before:
                self.close()

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        """A layout records full references, so that one layout holds several repositories."""
        return str(ref.with_tag(tag))

    def name_to_resolve(self, ref: ImageReference, given: str) -> str:
        """What resolve() takes for a name: the name as given (resolve tries its other spellings)."""
        return given

    def partial_path(self, digest: str) -> str:
        """Stable per blob, so an interrupted copy finds what the last one received."""
        blob = self.layout.blob_path(digest)
        directory, name = os.path.split(blob)
        return os.path.join(directory, "." + name + PARTIAL_SUFFIX)

    def put_blob(self, source: ImageSource, digest: str, size: int, counter: ByteCounter, retries: int) -> None:
        """Stream the blob into its partial file, hashing; verify, fsync, rename. Resumes a kept partial."""
        partial = self.partial_path(digest)
        resume = os.path.lexists(partial)
        while True:
            try:
                self._receive(source, digest, size, counter, retries, partial, resume)
                return
            except _Corrupt as exc:
                if not resume:
                    # A mirrored source (_mirrors) drops the mirrors that served wrong bytes and offers the next.
                    if not source.reject_blob(digest, str(exc)):
                        raise
                # The kept bytes may be what was wrong: a clean attempt from byte 0.
                resume = False

    def _receive(
        self,
        source: ImageSource,
        digest: str,
        size: int,
        counter: ByteCounter,
        retries: int,
        partial: str,
        resume: bool,
    ) -> None:
        # The partial is opened without following links, and a kept one is hashed through that descriptor.
        with AtomicFile(self.layout.blob_path(digest), temp_path=partial, append=resume) as out:
            resumed = resume_hash(out, size) if resume else None
            # Kept on an interruption, so that the next attempt (or run) continues with Range.
            out.keep_partial = True
            hashed = _Receiver(source, digest, size, out, resumed or HashingCounter(), counter, retries).receive()
            if hashed.size != size or hashed.digest != digest:
                out.keep_partial = False
                raise _Corrupt(
                    "blob %s from %s hashes to %s (%d bytes); the source is corrupt, nothing was stored"
                    % (digest, source.describe(), hashed.digest, hashed.size)
                )
            out.commit()

    def put_document(self, document: Document) -> None:
        self.layout.put_bytes(document.data)

    def set_name(self, name: str, descriptor: t.Mapping[str, t.Any], document: Document) -> None:
        self.layout.put_bytes(document.data)
        with self.layout.locked():
            self.layout.set_refs({name: descriptor})


@contextlib.contextmanager
def _name_lock(store: RegistryStore, name: str) -> t.Iterator[None]:
    key = (str(store.registry), str(store.repository), name)
    with _NAME_LOCKS_GUARD:
        lock = _NAME_LOCKS.setdefault(key, threading.Lock())
    with lock:
        yield


def _layout_name_candidates(name: str) -> list[str]:
    candidates = [name]
    try:
        ref = ImageReference.parse(name)
    except InvalidReference:
        return candidates
    # As this collection records names, or a bare tag as `skopeo copy oci:DIR:TAG` does.
    for candidate in (str(ref), ref.tag):
        if candidate and candidate not in candidates:
            candidates.append(candidate)
    return candidates


class _Receiver(ResumableRead):
    """Appends a blob's bytes to an open partial file, continuing with Range after interruptions."""

    def __init__(
        self,
        source: ImageSource,
        digest: str,
        size: int,
        out: AtomicFile,
        hashed: HashingCounter,
        counter: ByteCounter,
        retries: int,
        verb: str = "copying",
    ):
        super().__init__("%s blob %s from %s" % (verb, digest, source.describe()), 0, size, retries)
        self.source = source
        self.digest = digest
        self.out = out
        # Hashed in a second thread, beside the receive and the write.
        self.hashed: HashingCounter = BackgroundHashingCounter(hashed)
        self.received = self.hashed.size
        self.counter = counter

    def open_at(self, offset: int, length: int | None) -> BlobStream:
        return self.source.open_blob(self.digest, offset, length)

    def restart(self) -> None:
        self.out.file.seek(0)
        self.out.file.truncate()
        self.hashed = BackgroundHashingCounter()

    def accept(self, chunk: t.Any) -> None:
        self.out.write(chunk)
        self.hashed.update(chunk)
        self.counter.add(len(chunk))

    def mismatch(self, answered: int, asked: int) -> ImageError:
        return StoreError(
            "%s failed: the source answered from byte %d when asked for byte %d" % (self.what, answered, asked)
        )

    def overrun(self) -> ImageError:
        self.out.keep_partial = False
        return _Corrupt("%s failed: the blob is larger than the %d bytes its descriptor says" % (self.what, self.size))

    def give_up(self, exc: ImageError) -> ImageError:
        return StoreError("%s; %d of %d bytes are kept: run again to resume" % (exc, self.received, self.size))

    def pause(self, failures: int) -> None:
        self.source.retry_pause(failures, self.what, "%d of %d bytes received" % (self.received, self.size))

    def receive(self) -> HashingCounter:
        self.run()
        return self.hashed


def download_blob(source: ImageSource, digest: str, size: int, path: str) -> None:
    """Stream one blob into the new file `path` through the copy's receive loop, then verify it.

    The loop stops at the first byte past `size`, so a source that sends
    more than the descriptor says costs at most one read, not the disk; it
    resumes with Range after interruptions, as a copy does. StoreError when
    the bytes are not the blob; `path` is then not created.
    """
    from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter

    with AtomicFile(path) as out:
        receiver = _Receiver(source, digest, size, out, HashingCounter(), ByteCounter(), source.retries, "downloading")
        hashed = receiver.receive()
        if hashed.size != size or hashed.digest != digest:
            raise _Corrupt(
                "blob %s from %s hashes to %s (%d bytes); the source is corrupt"
                % (digest, source.describe(), hashed.digest, hashed.size)
            )
        out.commit()


# ---- a registry repository -------------------------------------------------------


class RegistryStore:
    """One repository of a registry as a source and as a destination."""

    def __init__(self, client: RegistryClient, repository: str, chunk_size: int = 0):
        self.client = client
        self.registry: str | None = client.registry
        self.repository: str | None = repository
        self.chunk_size = chunk_size
        # Root documents read by resolve(), so that the walk does not GET them again.
        self._resolved: dict[str, bytes] = {}
        # Upload sessions a refused mount answered with, used by the upload that follows.
        self._sessions: dict[str, UploadSession] = {}

    @property
    def retries(self) -> int:
        return int(self.client.retries)

    def describe(self) -> str:
        return "%s/%s" % (self.client.registry, self.repository)

    def source_url(self) -> str:
        return str(self.client.base_url)

    def served(self, digest: str) -> list[dict[str, t.Any]] | None:
        return None

    def mirror_report(self) -> dict[str, t.Any]:
        return {}

    # ---- reading --------------------------------------------------------

    def resolve(self, name: str) -> dict[str, t.Any]:
        data, media_type, digest = self.client.get_manifest(str(self.repository), name)
        self._resolved[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def current_name(self, name: str) -> dict[str, t.Any] | None:
        found = self.client.head_manifest(str(self.repository), name)
        if found is None:
            return None
        return {"mediaType": found["mediaType"], "digest": found["digest"], "size": found["size"]}

    def read_document(self, digest: str, size: int) -> bytes:
        cached = self._resolved.pop(digest, None)
        if cached is not None:
            return cached
        data, _media_type, _digest = self.client.get_manifest(str(self.repository), digest)
        return data

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        return self.current_name(name)

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        return self.client.get_referrers(str(self.repository), subject_digest, artifact_type)

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return None

    def check_blob(self, digest: str, size: int) -> None:
        """Nothing to check up front: the bytes are verified as they arrive."""

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        return self.client.open_blob(str(self.repository), digest, offset, length)

    def local_blob_path(self, digest: str) -> str | None:
        return None

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False

    def blob_location(self, digest: str) -> BlobLocation:
        repository = str(self.repository)
        return BlobLocation(self.client.blob_url(repository, digest), dict(self.client.auth_headers(repository)))

    def retry_pause(self, attempt: int, what: str, reason: str) -> None:
        # `attempt` counts from 1 here; the client's backoff from 0.
        self.client.wait_before_retry(max(attempt - 1, 0), what, reason)

    # ---- writing --------------------------------------------------------

    def prepare(self) -> None:
        """A repository needs no preparation: it exists once something is pushed to it."""

    def has_blob(self, digest: str, size: int) -> bool:
        return self.client.head_blob(str(self.repository), digest, actions=("pull", "push")) == size

    def can_mount(self, digest: str, size: int, from_repository: str) -> bool:
        if from_repository == self.repository:
            return False
        try:
            return self.client.head_blob(from_repository, digest) == size
        except RegistryError as exc:
            # No read access to the other repository: then there is nothing to mount from.
            if exc.status in (401, 403, 404):
                return False
            raise

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Cross-repository mount; False (and the session kept for the upload) when the registry refuses."""
        what = "mounting blob %s from %s into %s" % (digest, from_repository, self.describe())
        try:
            session = self.client.open_upload(str(self.repository), mount=digest, mount_from=from_repository, what=what)
        except RegistryError as exc:
            if exc.status in (401, 403, 404):
                return False
            raise
        if session is None:
            return True
        self._sessions[digest] = session
        return False

    def put_blob(self, source: ImageSource, digest: str, size: int, counter: ByteCounter, retries: int) -> None:
        from ansible_collections.ironcore.image.plugins.module_utils._upload import upload_blob, upload_stream

        session = self._sessions.pop(digest, None)
        path = source.local_blob_path(digest)
        repository = str(self.repository)
        if path is not None:
            upload_blob(self.client, repository, digest, size, path, self.chunk_size, counter, session)
            return
        upload_stream(
            self.client, repository, digest, size, lambda offset: source.open_blob(digest, offset), counter, session
        )

    def put_small_blob(self, data: bytes) -> None:
        """Upload a blob held in memory (a signature payload, a config), unless the repository has it."""
        from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter, FileSlice, upload_from

        digest = sha256_digest(data)
        if self.has_blob(digest, len(data)):
            return
        upload_from(
            self.client,
            str(self.repository),
            digest,
            len(data),
            lambda start, length: FileSlice(io.BytesIO(data), start, length, ByteCounter()),
        )

    def put_file_blob(self, path: str, digest: str, size: int) -> None:
        """Upload a local file as the blob `digest`, unless the repository has it (the upload verifies it)."""
        from ansible_collections.ironcore.image.plugins.module_utils._upload import upload_blob

        if not self.has_blob(digest, size):
            upload_blob(self.client, str(self.repository), digest, size, path, self.chunk_size)

    @contextlib.contextmanager
    def writing(self, check_mode: bool) -> t.Iterator[RegistryStore]:
        """A registry has no lock to hold across a write: its names are set by single PUTs."""
        yield self

    def put_referrer(self, digest: str, manifest: bytes) -> bool:
        """PUT a referrer manifest by digest; True when the registry says (OCI-Subject) that it indexed the subject."""
        what = "pushing referrer %s to %s" % (digest, self.describe())
        _digest, headers = self.client.put_manifest_answer(str(self.repository), digest, manifest, OCI_MANIFEST, what)
        return bool(headers.get(SUBJECT_HEADER))

    def update_name(self, name: str, change: t.Callable[[], Document | None]) -> None:
        """Point `name` at what `change()` makes of it (None: it says so already), with no lock to take.

        Write, pause so that a writer who read before our write lands its own,
        re-read, and go again while change() still has something to add (a
        concurrent write dropped ours). Threads of this process take turns.
        """
        with _name_lock(self, name):
            for attempt in range(NAME_UPDATE_ATTEMPTS):
                document = change()
                if document is None:
                    return
                self.set_name(name, document.descriptor, document)
                time.sleep(SETTLE_SECONDS * random.uniform(0.5, 1.5))
                if change() is None:
                    return
                time.sleep(backoff_delay(attempt, base=NAME_BACKOFF_SECONDS))
        raise StoreError(
            "%s in %s kept losing our change to concurrent writers (%d attempts); run again"
            % (name, self.describe(), NAME_UPDATE_ATTEMPTS),
            retryable=True,
        )

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        """A repository's names are its tags."""
        return tag

    def name_to_resolve(self, ref: ImageReference, given: str) -> str:
        """What resolve() takes for a name: its tag or digest within this repository."""
        return ref.reference

    def put_document(self, document: Document) -> None:
        self._put(document, document.digest)

    def set_name(self, name: str, descriptor: t.Mapping[str, t.Any], document: Document) -> None:
        self._put(document, name)

    def _put(self, document: Document, reference: str) -> None:
        kind = "index" if document.is_index else "manifest"
        what = "pushing %s %s to %s" % (kind, reference, self.describe())
        self.client.put_manifest(str(self.repository), reference, document.data, document.media_type, what=what)
