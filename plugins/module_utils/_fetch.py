# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Fetch the layers a node needs into a directory: plan, then deliver.

Everything that can be refused (names, platform, missing layers, a pinned
digest that does not match) is refused before the first byte is written.
A small state record remembers which blob each file holds, so the common
re-run neither downloads nor re-hashes anything. It, the lock and the
partial files live in a private state directory (by default dest/.ironcore,
0700), not among the files a boot or web server serves; and everything in
it is opened without following links, so a user who can write to dest
cannot turn our writes against other files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._delta import DeltaFetch
from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError
from ansible_collections.ironcore.image.plugins.module_utils._download import (
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    Delivered,
    DeliveryError,
    Staged,
    default_max_unpacked_size,
    derive_content_digest,
    partial_path,
    stage,
)
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    LockWait,
    UnsafeFileError,
    canonical_json,
    check_room,
    flocked,
    hash_stream,
    open_directory,
    parse_json,
    read_bounded,
    shared_directory_reason,
    stat_identity,
    write_bytes_atomic,
)
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    MAX_DOCUMENT_SIZE,
    ROLES,
    SHA256_DIGEST_RE,
    canonical_platform,
)
from ansible_collections.ironcore.image.plugins.module_utils._progress import PROGRESS_FILE, ProgressRecorder
from ansible_collections.ironcore.image.plugins.module_utils._select import (
    SelectedLayer,
    SelectionError,
    node_architecture,
    select_layers,
)
from ansible_collections.ironcore.image.plugins.module_utils._source import (
    NamedSource,
    open_source,
    read_config,
    resolve_image,
    select_manifest,
)
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageSource
from ansible_collections.ironcore.image.plugins.module_utils._transfer import run_parallel

STATE_FILE = PARTIAL_PREFIX + "state.json"
LOCK_FILE = PARTIAL_PREFIX + "lock"
# Version 2: identities carry the ctime too; a version 1 record is not trusted (every file is hashed once).
STATE_VERSION = 2
# The default state directory, inside dest: hidden, and private to us.
STATE_SUBDIR = ".ironcore"
# What older versions left in dest itself.
_OLD_BOOKKEEPING = re.compile(
    r"%s(?:state\.json|lock|.+\.[0-9a-f]{16}%s)" % (re.escape(PARTIAL_PREFIX), re.escape(PARTIAL_SUFFIX))
)
MAX_FILENAME_BYTES = 200

# Applies owner/group/mode to a delivered file; returns the new changed flag.
ApplyAttributes = t.Callable[[str, bool], bool]


class FetchError(ImageError):
    """The fetch cannot be done as asked; the message says what to change."""


def check_filenames(filenames: t.Mapping[str, t.Any] | None) -> dict[str, str]:
    """role -> file name, every name a plain name inside dest."""
    chosen = {role: role for role in ROLES}
    for role, name in (filenames or {}).items():
        if role not in ROLES:
            raise FetchError("filenames: %s is not a layer role; expected one of %s" % (role, ", ".join(ROLES)))
        where = "filenames.%s" % role
        if not isinstance(name, str) or not name:
            raise FetchError("%s must be a non-empty file name" % where)
        if os.path.isabs(name) or "/" in name or "\\" in name:
            raise FetchError(
                "%s: %r is a path; give a plain file name, it is always placed inside dest" % (where, name)
            )
        if name in (".", "..") or "\0" in name:
            raise FetchError("%s: %r is not a usable file name" % (where, name))
        if name.startswith(PARTIAL_PREFIX):
            raise FetchError(
                "%s: names starting with %s are reserved for the fetch's own bookkeeping" % (where, PARTIAL_PREFIX)
            )
        if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
            raise FetchError("%s: file name is longer than %d bytes" % (where, MAX_FILENAME_BYTES))
        chosen[role] = name
    return chosen


class DeliveryState:
    """Which blob each file in dest was last delivered from, and the file's identity then."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, STATE_FILE)
        self.files: dict[str, dict[str, t.Any]] = self._load()
        self.dirty = False

    def _load(self) -> dict[str, dict[str, t.Any]]:
        """The record may only ever make us hash more: one that is not plainly ours is ignored."""
        try:
            document = parse_json(read_bounded(self.path, MAX_DOCUMENT_SIZE, follow_symlinks=False, private=True))
        except (OSError, ValueError):
            return {}
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
            return {}
        files = document.get("files")
        return (
            {name: entry for name, entry in files.items() if isinstance(entry, dict)} if isinstance(files, dict) else {}
        )

    def get(self, filename: str) -> dict[str, t.Any] | None:
        return self.files.get(filename)

    def record(self, filename: str, layer: SelectedLayer, content_digest: str, path: str) -> None:
        status = os.lstat(path)
        entry = {
            "digest": layer.digest,
            "content_digest": content_digest,
            "content_size": status.st_size,
            "identity": stat_identity(status),
        }
        if self.files.get(filename) != entry:
            self.files[filename] = entry
            self.dirty = True

    def save(self) -> None:
        if self.dirty:
            write_bytes_atomic(self.path, canonical_json({"version": STATE_VERSION, "files": self.files}))
            self.dirty = False


@dataclass
class FilePlan:
    layer: SelectedLayer
    filename: str
    path: str
    current: bool
    content_digest: str | None = None
    changed: bool = False
    delivered: Delivered | None = None
    # Size of the file as delivered; None while unknown (a packed layer neither in dest nor in the record).
    content_size: int | None = None
    # The `delta` result: whether the file was built from seeds and ranges, or why not.
    delta: dict[str, t.Any] | None = None


# Re-derives what a packed layer unpacks to from its blob (verify); None where no source is at hand.
DeriveContent = t.Optional[t.Callable[[SelectedLayer], str]]


def _regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _open_existing(path: str) -> t.BinaryIO | None:
    """The file at `path` opened for reading when it is a regular file itself (not a link, not a FIFO), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    stream = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        stream.close()
        return None
    return stream


def _current_content(
    path: str, layer: SelectedLayer, entry: dict[str, t.Any] | None, verify: bool, derive: DeriveContent = None
) -> str | None:
    """The digest of the file's content when it already holds `layer`, else None.

    A state entry for this blob whose file identity still matches is trusted
    without reading the file, unless `verify` asks for a re-hash. Identity and
    content come from the one descriptor, so both describe the same file. With
    `verify`, a packed layer's file is checked against what its blob unpacks
    to (`derive`), never against the record's own word.
    """
    stream = _open_existing(path)
    if stream is None:
        return None
    with stream:
        status = os.fstat(stream.fileno())
        entry = entry or {}
        recorded = entry.get("digest") == layer.digest
        unchanged = not verify and entry.get("identity") == stat_identity(status)
        if recorded and unchanged:
            return str(entry.get("content_digest"))
        if unchanged and not layer.packed and entry.get("content_digest") not in (None, layer.digest):
            # The record says this very file holds other bytes (the previous release): hashing a
            # multi-GiB file to learn that again would cost an update as much as its download.
            return None
        if layer.packed:
            if verify and derive is not None:
                expected = derive(layer)
            elif not recorded or not entry.get("content_digest"):
                # Only the record (or the blob, with verify) knows what the unpacked file must hash to.
                return None
            else:
                expected = str(entry["content_digest"])
        else:
            if status.st_size != layer.size:
                return None
            expected = layer.digest
        return expected if hash_stream(stream)[0] == expected else None


def _known_content_size(path: str, layer: SelectedLayer, entry: dict[str, t.Any] | None, current: bool) -> int | None:
    """The delivered file's size, before delivery: raw is the blob; packed is the file there or the record's."""
    if not layer.packed:
        return layer.size
    if current:
        return os.path.getsize(path)
    if entry is not None and entry.get("digest") == layer.digest and isinstance(entry.get("content_size"), int):
        return int(entry["content_size"])
    return None


def plan_files(
    layers: t.Sequence[SelectedLayer],
    dest: str,
    names: t.Mapping[str, str],
    state: DeliveryState,
    verify: bool,
    derive: DeriveContent = None,
) -> list[FilePlan]:
    plans: list[FilePlan] = []
    taken: dict[str, str] = {}
    for layer in layers:
        filename = names[layer.role]
        if filename in taken:
            raise FetchError(
                "filenames: %s and %s would both be written to %s; give them different names"
                % (taken[filename], layer.role, filename)
            )
        taken[filename] = layer.role
        path = os.path.join(dest, filename)
        entry = state.get(filename)
        content = _current_content(path, layer, entry, verify, derive)
        current = content is not None
        plans.append(
            FilePlan(
                layer,
                filename,
                path,
                current=current,
                content_digest=content,
                content_size=_known_content_size(path, layer, entry, current),
            )
        )
    return plans


def _kept_bytes(path: str) -> int:
    """The size of a regular file at `path` (a partial a resume continues), else 0."""
    try:
        status = os.lstat(path)
    except OSError:
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def bytes_to_write(
    layers: t.Sequence[SelectedLayer],
    dest: str,
    names: t.Mapping[str, str],
    state: DeliveryState,
    partial_dirs: t.Sequence[str],
) -> int:
    """At least what delivering `layers` into dest will write, worked out without reading a file's content.

    A file that looks in place (a raw file of the blob's size, or a record
    that names this blob and still matches the file) counts nothing: hashing
    multi-GiB files twice to size a check is not worth it, and the check
    only has to be a lower bound. The rest count whole: the new file is
    staged beside the old one, which stays until the rename; a delta builds
    a whole file too. A packed layer counts its blob and, when the record
    knows it, what it unpacks to. Bytes a kept partial already holds count
    nothing.
    """
    needed = 0
    for layer in layers:
        filename = names[layer.role]
        path = os.path.join(dest, filename)
        entry = state.get(filename) or {}
        try:
            status: os.stat_result | None = os.lstat(path)
        except OSError:
            status = None
        if status is not None and stat.S_ISREG(status.st_mode):
            if not layer.packed and status.st_size == layer.size:
                continue
            if entry.get("digest") == layer.digest and entry.get("identity") == stat_identity(status):
                continue
        kept = max(
            (_kept_bytes(partial_path(directory, filename, layer.digest)) for directory in partial_dirs), default=0
        )
        needed += max(layer.size - kept, 0)
        if layer.packed and entry.get("digest") == layer.digest and isinstance(entry.get("content_size"), int):
            needed += max(int(entry["content_size"]), 0)
    return needed


def refuse_without_room(
    layers: t.Sequence[SelectedLayer], dest: str, state_dir: str | None, names: t.Mapping[str, str]
) -> None:
    """Refuse, before dest or the state directory is created, a fetch its filesystem cannot hold."""
    chosen = state_directory(dest, state_dir)
    partial_dirs = [chosen, os.path.join(dest, STATE_SUBDIR)]
    needed = bytes_to_write(layers, dest, names, DeliveryState(chosen), partial_dirs)
    check_room(dest, needed, "the fetch into %s" % dest, "or choose another dest")


@contextlib.contextmanager
def locked(state_dir: str, wait: LockWait | None = None) -> t.Iterator[None]:
    """One fetch at a time per destination: they would share partial files and the state record."""
    with flocked(os.path.join(state_dir, LOCK_FILE), wait=wait):
        yield


@dataclass
class Bookkeeping:
    """Where the fetch keeps its state record and lock, and where partial files wait."""

    state_dir: str
    partial_dir: str


def refuse_shared(path: str, option: str, allow_shared: bool) -> None:
    """A directory someone else can write to lets them plant links where we write; refuse it unless allowed."""
    if allow_shared:
        return
    reason = shared_directory_reason(path)
    if reason:
        raise FetchError(
            "%s %s may be written by other users (%s); make it writable only by its owner,"
            " or set allow_shared_dest: true if everyone who can write there is trusted" % (option, path, reason)
        )


def _private_directory(path: str) -> None:
    """Create `path` 0700, or make sure an existing one is a real directory of ours and 0700."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = open_directory(path, follow_symlinks=False)
    try:
        status = os.fstat(fd)
        if status.st_uid != os.geteuid():
            raise UnsafeFileError(
                "%s is owned by uid %d, not by us; refusing to keep state in it" % (path, status.st_uid)
            )
        if status.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def state_directory(dest: str, state_dir: str | None) -> str:
    if not state_dir:
        return os.path.join(dest, STATE_SUBDIR)
    state_dir = os.path.abspath(state_dir)
    if state_dir == dest:
        raise FetchError("state_dir must not be dest itself; leave it unset to keep state in %s" % STATE_SUBDIR)
    return state_dir


def prepare_bookkeeping(dest: str, state_dir: str | None, allow_shared: bool) -> Bookkeeping:
    """Create the state directory, and the hidden partial directory in dest when partials cannot live there."""
    chosen = state_directory(dest, state_dir)
    if not state_dir:
        _private_directory(chosen)
        return Bookkeeping(chosen, chosen)
    os.makedirs(chosen, mode=0o700, exist_ok=True)
    refuse_shared(chosen, "state_dir", allow_shared)
    if os.stat(chosen).st_dev == os.stat(dest).st_dev:
        return Bookkeeping(chosen, chosen)
    # The final rename cannot cross filesystems: partial files stay on dest's.
    private = os.path.join(dest, STATE_SUBDIR)
    _private_directory(private)
    return Bookkeeping(chosen, private)


def remove_old_bookkeeping(dest: str) -> None:
    """Drop the state record, lock and partials that earlier versions kept in dest; links are removed, not followed."""
    directory = open_directory(dest)
    try:
        for name in os.listdir(directory):
            if not _OLD_BOOKKEEPING.fullmatch(name):
                continue
            with contextlib.suppress(OSError):
                if not stat.S_ISDIR(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=directory)
    finally:
        os.close(directory)


def numeric_mode(mode: t.Any) -> int | None:
    """The file mode an octal `mode` option asks for; None for none or a symbolic one.

    A symbolic mode (u+x) is relative to the mode the file already has, so it
    is left to the module's file attributes after the rename.
    """
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 0o7777:
        return mode
    if isinstance(mode, str) and re.fullmatch(r"[0-7]{1,4}", mode):
        return int(mode, 8)
    return None


def unpacked_limit(params: t.Mapping[str, t.Any], layer: SelectedLayer) -> int:
    """max_unpacked_size as given, else a multiple of the layer's blob size (see _download)."""
    given = params.get("max_unpacked_size")
    if given is None:
        return default_max_unpacked_size(layer.size)
    if not isinstance(given, int) or isinstance(given, bool) or given < 0:
        raise FetchError("max_unpacked_size: %r is not a number of bytes" % (given,))
    return given


def _verify_before_delivery(
    source: NamedSource, params: t.Mapping[str, t.Any], image_digest: str, manifest_digest: str
) -> dict[str, t.Any]:
    """_signatures.verify_before_delivery(), imported only by a fetch that asks for a signature check.

    The signatures layer brings the referrers API, the image stores and through them the registry
    client: tens of milliseconds of every fetch's start, for a check most fetches do not ask for.
    """
    if not (params.get("signature_keys") or params.get("require_signature") or params.get("require_provenance")):
        # What verify_before_delivery answers when nothing is to be checked.
        return {"signatures": {}, "signature_formats": {}, "provenance": None}
    from ansible_collections.ironcore.image.plugins.module_utils._signatures import verify_before_delivery

    return verify_before_delivery(source.store, source.ref, params, image_digest, manifest_digest)


def _deliver_all(
    source: ImageSource,
    plans: t.Sequence[FilePlan],
    concurrency: int,
    retries: int,
    mode: int | None = None,
    limit: t.Callable[[SelectedLayer], int | None] = lambda _layer: None,
    partial_dir: str | None = None,
    progress: ProgressRecorder | None = None,
    delta: DeltaFetch | None = None,
) -> None:
    """Stage every missing layer in parallel; only when all are verified, rename them into place.

    Staged files are private (0600) and get `mode` before the rename, so a
    file asked to be 0600 is never readable by others, not even briefly.
    """
    pending = [plan for plan in plans if not plan.current]
    if progress is not None:
        progress.set_phase("download")
        # Every layer is counted from the start, so the total is right before the first byte arrives.
        for plan in pending:
            progress.start(plan.layer.role, plan.layer.size)
    if not pending:
        return

    def full(plan: FilePlan) -> Staged:
        return stage(
            source,
            plan.layer,
            plan.path,
            retries,
            max_unpacked_size=limit(plan.layer),
            partial_dir=partial_dir,
            progress=progress,
        )

    def one(plan: FilePlan) -> Staged:
        if delta is None:
            return full(plan)
        staged, report = delta.stage(plan.layer, plan.path, partial_dir, progress, lambda: full(plan))
        plan.delta = report.as_result()
        return staged

    def staged_one(plan: FilePlan) -> tuple[FilePlan, Staged]:
        try:
            return plan, one(plan)
        except Exception as error:
            converted = _as_fetch_error(plan, error)
            if converted is error:
                raise
            raise converted from error

    # A failure discards what the others staged: nothing is renamed into place unless all are verified.
    staged = run_parallel(max(1, concurrency), staged_one, pending, discard=lambda done: done[1].discard())
    if progress is not None:
        progress.set_phase("commit")
    for plan, item in staged:
        item.commit(mode)
        plan.delivered = item.delivered
        plan.content_digest = item.delivered.content_digest
        plan.content_size = item.delivered.size
        plan.changed = True
    # Only now: until every file is in place, a sweep could reach a partial another one still needs.
    for _plan, item in staged:
        item.sweep()


def _file_label(plan: FilePlan) -> str:
    """The layer's role, and its file name when that differs: `rootfs`, `rootfs (disk.raw)`."""
    if plan.filename == plan.layer.role:
        return plan.layer.role
    return "%s (%s)" % (plan.layer.role, plan.filename)


def _as_fetch_error(plan: FilePlan, error: BaseException) -> BaseException:
    if not isinstance(error, Exception):
        # KeyboardInterrupt and the like end the run as they are.
        return error
    if isinstance(error, ImageError):
        return FetchError("%s: %s" % (_file_label(plan), error), retryable=error.retryable)
    if isinstance(error, OSError):
        return FetchError("%s: writing %s failed: %s" % (plan.layer.role, plan.path, error.strerror or error))
    # Anything else is a bug of ours: left as it is, for _module.run to report as an internal error.
    return error


def _file_result(plan: FilePlan) -> dict[str, t.Any]:
    return {
        "path": plan.path,
        "digest": plan.layer.digest,
        "media_type": plan.layer.media_type,
        "size": plan.layer.size,
        "content_size": plan.content_size,
        "unpacked": plan.layer.packed,
        "changed": plan.changed,
        "delta": plan.delta or {"used": False, "reason": "nothing was downloaded"},
    }


def _check_pin(params: t.Mapping[str, t.Any], resolved_digest: str, describe: str) -> None:
    pinned = params.get("digest")
    if not pinned:
        return
    if not SHA256_DIGEST_RE.fullmatch(pinned):
        raise FetchError("digest: %r is not a sha256:<64 hex> digest" % pinned)
    if pinned != resolved_digest:
        raise FetchError(
            "%s resolved to %s, not the pinned digest %s; nothing was fetched" % (describe, resolved_digest, pinned)
        )


def fetch_image(
    params: t.Mapping[str, t.Any],
    check_mode: bool,
    apply_attributes: ApplyAttributes,
    on_retry: t.Callable[[str], None] | None = None,
    warn: t.Callable[[str], None] | None = None,
) -> dict[str, t.Any]:
    """Resolve, select, deliver; the module's one call (`on_retry` is told of every retried request,
    `warn` of seeds that cannot be used)."""
    started = time.monotonic()
    try:
        result = _fetch(params, check_mode, apply_attributes, on_retry, warn or (lambda _message: None))
    except (SelectionError, DocumentError, DeliveryError) as exc:
        raise FetchError(str(exc)) from exc
    except OSError as exc:
        raise FetchError("dest %s: %s" % (params["dest"], exc.strerror or exc)) from exc
    result.update(transfer_rate(result["bytes_downloaded"], time.monotonic() - started))
    return result


def transfer_rate(bytes_moved: int, elapsed: float) -> dict[str, t.Any]:
    """The `elapsed` (seconds) and `bytes_per_second` results; 0 bytes per second when nothing moved."""
    elapsed = max(elapsed, 0.0)
    rate = int(bytes_moved / elapsed) if bytes_moved and elapsed > 0 else 0
    return {"elapsed": round(elapsed, 3), "bytes_per_second": rate}


def _fetch(
    params: t.Mapping[str, t.Any],
    check_mode: bool,
    apply_attributes: ApplyAttributes,
    on_retry: t.Callable[[str], None] | None,
    warn: t.Callable[[str], None],
) -> dict[str, t.Any]:
    names = check_filenames(params.get("filenames"))
    architecture = node_architecture(params["architecture"])
    platform = canonical_platform(params["platform"]) or params["platform"]
    dest = os.path.abspath(params["dest"])
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise FetchError("dest %s exists and is not a directory" % dest)
    allow_shared = bool(params.get("allow_shared_dest"))
    state_directory(dest, params.get("state_dir"))
    if os.path.isdir(dest):
        refuse_shared(dest, "dest", allow_shared)
    if params.get("layout") and os.path.isdir(params["layout"]):
        refuse_shared(os.path.abspath(params["layout"]), "layout", allow_shared)

    source = open_source(params, on_retry)
    store = source.store
    image = resolve_image(source)
    _check_pin(params, image.digest, source.describe())
    chosen = select_manifest(source, image, platform, architecture)
    try:
        layers = select_layers(chosen.document, platform, params.get("layers"))
    except SelectionError as exc:
        raise FetchError(
            "%s, manifest %s for %s/%s: %s" % (source.describe(), chosen.digest, platform, architecture, exc)
        ) from exc
    config = read_config(source, chosen.document)

    result = {
        "changed": False,
        "name": str(source.ref),
        "digest": image.digest,
        "manifest_digest": chosen.digest,
        "platform": platform,
        "architecture": architecture,
        "config": config,
        "bytes_downloaded": 0,
    }
    # Before any blob byte is written: the digests delivered must carry a signature by a trusted key.
    result.update(_verify_before_delivery(source, params, image.digest, chosen.digest))

    def limit(layer: SelectedLayer) -> int:
        return unpacked_limit(params, layer)

    def derive(layer: SelectedLayer) -> str:
        try:
            return derive_content_digest(store, layer, limit(layer))
        except DeliveryError as exc:
            raise FetchError("%s: verify could not re-read its blob: %s" % (layer.role, exc)) from exc

    refuse_without_room(layers, dest, params.get("state_dir"), names)
    if check_mode:
        plans = _plan_check_mode(
            layers,
            dest,
            state_directory(dest, params.get("state_dir")),
            names,
            params["verify"],
            apply_attributes,
            derive,
        )
    else:
        os.makedirs(dest, exist_ok=True)
        refuse_shared(dest, "dest", allow_shared)
        bookkeeping = prepare_bookkeeping(dest, params.get("state_dir"), allow_shared)
        lock_timeout = params.get("lock_timeout")
        wait = LockWait("another fetch into %s" % dest, float(lock_timeout) if lock_timeout is not None else None, warn)
        with locked(bookkeeping.state_dir, wait):
            remove_old_bookkeeping(dest)
            state = DeliveryState(bookkeeping.state_dir)
            # Replaces the record of an earlier run at once: a poller must not take its "done" for ours.
            progress = ProgressRecorder(os.path.join(bookkeeping.state_dir, PROGRESS_FILE))
            progress.set_phase("plan")
            plans = plan_files(layers, dest, names, state, params["verify"], derive)
            delta = DeltaFetch(store, chosen.digest, params, bookkeeping.state_dir, warn)
            succeeded = False
            try:
                _deliver_all(
                    store,
                    plans,
                    int(params.get("concurrency") or 1),
                    int(params.get("retries") or 0),
                    numeric_mode(params.get("mode")),
                    limit,
                    bookkeeping.partial_dir,
                    progress,
                    delta,
                )
                succeeded = True
            finally:
                # Whatever did arrive is recorded, so the next run need not hash it again.
                for plan in plans:
                    if plan.content_digest and _regular_file(plan.path):
                        plan.changed = apply_attributes(plan.path, plan.changed)
                        state.record(plan.filename, plan.layer, plan.content_digest, plan.path)
                        if plan.changed:
                            delta.remember(plan.path)
                state.save()
                if succeeded:
                    progress.finish()
                else:
                    # The fetch's own error is what the user must see.
                    with contextlib.suppress(OSError):
                        progress.finish("failed", done=False)
        result["bytes_downloaded"] = sum(plan.delivered.bytes_downloaded for plan in plans if plan.delivered)
    files = {plan.layer.role: _file_result(plan) for plan in plans}
    # With mirrors: who served each file's bytes, and what the origin sent.
    for plan in plans:
        served = store.served(plan.layer.digest)
        if served is not None:
            files[plan.layer.role]["sources"] = served
    result["files"] = files
    result.update(store.mirror_report())
    result["changed"] = any(plan.changed for plan in plans)
    # A layout source has no requests to retry; a broken transfer that was resumed is a retry too.
    resumes = [line for plan in plans if plan.delivered for line in plan.delivered.resumes]
    for line in resumes:
        if on_retry is not None:
            on_retry(line)
    result["retries"] = store.retries + len(resumes)
    return result


def _plan_check_mode(
    layers: t.Sequence[SelectedLayer],
    dest: str,
    state_dir: str,
    names: t.Mapping[str, str],
    verify: bool,
    apply_attributes: ApplyAttributes,
    derive: DeriveContent = None,
) -> list[FilePlan]:
    """What a real run would do; reads dest (when there is one) and writes nothing."""
    state = DeliveryState(state_dir)
    plans = plan_files(layers, dest, names, state, verify, derive)
    for plan in plans:
        plan.changed = apply_attributes(plan.path, False) if plan.current else True
    return plans
