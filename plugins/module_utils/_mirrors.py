# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Digest-only mirrors in front of an image's origin, with failover inside a blob.

A `MirroredSource` answers the same questions as the origin it wraps
(_source.Source), asking an ordered list of mirrors first and the origin
last. The trust split is the one of containerd's and CRI-O's digest-only
mirrors: a tag is resolved at the origin (unless `mirror_resolve_tags`),
everything after is asked for by digest and checked against it by the same
code that checks the origin's bytes, so a mirror can make a delivery fail
over or fail, never deliver other bytes. A digest reference (or a pinned
`digest`) never needs the origin.

A blob stream that breaks on one source continues at the same byte on the
next, because every source serves the same content for a digest. A source
whose bytes fail verification loses the blob (`reject_blob`): the caller
starts again from byte 0 without it. Every source has its own client and
its own credentials; the origin's never leave it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import threading
import typing as t
import urllib.parse

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import CHUNK_SIZE, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    MAX_DOCUMENT_SIZE,
    SHA256_DIGEST_RE,
    ImageReference,
    declared_media_type,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions
from ansible_collections.ironcore.image.plugins.module_utils._source import (
    RegistrySource,
    Source,
    SourceError,
    TranslatedStream,
)
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobLocation, BlobStream

# The annotation an OCI layout's index.json names its images with.
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
MIRROR_TYPES = ("registry", "layout")

# The names of a digest's signatures (`sha256-<hex>.sig`) and of its referrers list (`sha256-<hex>`).
ATTACHMENT_NAME_RE = re.compile(r"sha256-[0-9a-f]{64}(\.sig)?")
TAG_UNTRUSTED = (
    "a tag is resolved only at the origin, because a mirror could answer any digest for it and only digests can be"
    " verified; give name@sha256:... or digest to fetch from the mirrors alone, or set mirror_resolve_tags: true"
    " for mirrors you trust to resolve tags"
)


# Registry client error codes that say the mirror is not there at all (rather than without this one digest),
# or, for STALLED, not there at any useful speed: a mirror that trickled one blob would trickle the next.
UNREACHABLE_CODES = frozenset(
    {
        "CONNECTION_REFUSED",
        "CONNECTION_FAILED",
        "TIMEOUT",
        "NAME_RESOLUTION",
        "TLS_FAILED",
        "CERTIFICATE_UNTRUSTED",
        "STALLED",
    }
)
# The rate a mirror's blob stream must keep, over every `timeout` seconds, or the next source is asked.
MIRROR_MIN_RATE = 64 * 1024


class MirrorConfigError(SourceError):
    """A `mirrors` entry that cannot be used as given."""


class MirrorUnreachable(SourceError):
    """The mirror cannot be reached: it is left out for the rest of the run, not asked again for every digest."""


class OriginUnreachable(SourceError):
    """The origin could not be reached earlier in this run: not asked again (with its retries) for every name."""


def _mirror_call(error_type: type[Exception], action: t.Callable[[], t.Any]) -> t.Any:
    try:
        return action()
    except error_type as exc:
        kind = MirrorUnreachable if getattr(exc, "code", None) in UNREACHABLE_CODES else SourceError
        raise kind(str(exc), retryable=bool(getattr(exc, "retryable", False))) from exc


def _split_url(url: str, index: int) -> tuple[str, str, str]:
    """(scheme, host[:port], path without trailing slash) of a mirror url; no scheme means https."""
    where = "mirrors[%d].url" % index
    if not isinstance(url, str) or not url.strip():
        raise MirrorConfigError("%s must be a non-empty URL such as https://mirror.example:5000" % where)
    parsed = urllib.parse.urlsplit(url if "://" in url else "https://" + url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise MirrorConfigError("%s: %r is not an http(s) URL such as https://mirror.example:5000" % (where, url))
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        raise MirrorConfigError(
            "%s: %r carries credentials, a query or a fragment; give username and password as options" % (where, url)
        )
    return parsed.scheme, parsed.netloc, parsed.path.rstrip("/")


def _mirror_options(entry: t.Mapping[str, t.Any], plain_http: bool, params: t.Mapping[str, t.Any]) -> RegistryOptions:
    """The mirror's own connection options: its own credentials only, never the origin's nor a docker config."""
    return RegistryOptions(
        username=entry.get("username") or None,
        password=entry.get("password") or None,
        docker_config=None,
        validate_certs=entry.get("validate_certs", True) is not False,
        ca_cert=entry.get("ca_cert") or None,
        plain_http=plain_http,
        timeout=float(params.get("timeout") or 20.0),
        # Another source is the retry: a mirror that fails is left for the next one at once.
        retries=0,
        min_rate=MIRROR_MIN_RATE,
    )


class RegistryMirror(RegistrySource):
    """A registry (or pull-through cache, or site cache) that holds the origin's repository or a copy of it."""

    def __init__(self, url: str, ref: ImageReference, options: RegistryOptions):
        # Imported here so that reading a local layout needs no HTTP library.
        from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, RegistryError

        self.url = url
        self.ref = ref
        self._error_type = RegistryError
        self.client = RegistryClient(ref.registry, options)

    def describe(self) -> str:
        return "mirror %s" % self.url

    def _call(self, action: t.Callable[[], t.Any]) -> t.Any:
        return _mirror_call(self._error_type, action)

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """The mirror registry's referrers API answer for a subject, or None when it has no such API."""
        repository = self.ref.repository
        return t.cast(
            t.Optional[bytes], self._call(lambda: self.client.get_referrers(repository, subject_digest, artifact_type))
        )


class LayoutMirror:
    """A plain HTTP(S) root serving an OCI image layout as static files (index.json, blobs/sha256/<hex>)."""

    def __init__(self, url: str, ref: ImageReference, host: str, path: str, options: RegistryOptions):
        from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, RegistryError

        self.url = url
        self.ref = ref
        self._error_type = RegistryError
        self.client = RegistryClient(host, options)
        self._root = self.client.base_url + path

    def describe(self) -> str:
        return "mirror %s" % self.url

    def _call(self, action: t.Callable[[], t.Any]) -> t.Any:
        return _mirror_call(self._error_type, action)

    def _blob_url(self, digest: str) -> str:
        if not SHA256_DIGEST_RE.fullmatch(digest):
            raise SourceError("%s: %r is not a sha256 digest" % (self.describe(), digest))
        return "%s/blobs/sha256/%s" % (self._root, digest.split(":", 1)[1])

    def _get_small(self, url: str, what: str) -> bytes:
        response = self._call(lambda: self.client.request("GET", url, what=what, stream=True))
        data = bytearray()
        try:
            stream = self.client_stream(response, 0, what)
            for chunk in stream.iter_chunks(CHUNK_SIZE):
                data += chunk
                if len(data) > MAX_DOCUMENT_SIZE:
                    raise SourceError("%s failed: the document is larger than 4 MiB; refusing it" % what)
        finally:
            response.close()
        return bytes(data)

    def client_stream(self, response: t.Any, offset: int, what: str) -> t.Any:
        from ansible_collections.ironcore.image.plugins.module_utils._client import BlobStream as ClientStream

        return TranslatedStream(ClientStream(response, offset, what, self.client), self._call)

    def _document(self, digest: str, what: str) -> bytes:
        data = self._get_small(self._blob_url(digest), "reading %s %s from %s" % (what, digest, self.describe()))
        if sha256_digest(data) != digest:
            raise SourceError(
                "%s %s from %s does not match its digest; the mirror is corrupt" % (what, digest, self.url)
            )
        return data

    def resolve(self) -> tuple[bytes, str | None, str]:
        if self.ref.digest:
            return self._document(self.ref.digest, "manifest"), None, self.ref.digest
        raw = self._get_small(self._root + "/index.json", "reading index.json of %s" % self.describe())
        try:
            index = load_json(raw, "index.json of %s" % self.describe())
        except DocumentError as exc:
            raise SourceError(str(exc)) from exc
        entries = index.get("manifests")
        for candidate in (str(self.ref), self.ref.tag):
            for entry in entries if isinstance(entries, list) else []:
                annotations = entry.get("annotations") if isinstance(entry, dict) else None
                if isinstance(annotations, dict) and annotations.get(REF_NAME_ANNOTATION) == candidate:
                    digest = entry.get("digest")
                    if not isinstance(digest, str) or not SHA256_DIGEST_RE.fullmatch(digest):
                        raise SourceError("%s records %s without a valid digest" % (self.describe(), candidate))
                    return self._document(digest, "manifest"), entry.get("mediaType"), digest
        raise SourceError("%s does not record %s in its index.json" % (self.describe(), self.ref))

    def manifest(self, digest: str) -> tuple[bytes, str | None]:
        data = self._document(digest, "manifest")
        return data, declared_media_type(data)

    def read_small_blob(self, digest: str, size: int) -> bytes:
        if size > MAX_DOCUMENT_SIZE:
            raise SourceError("blob %s is %d bytes, more than a config may be (4 MiB); refusing it" % (digest, size))
        return self._document(digest, "blob")

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        """From `offset` on; with `length`, only that many bytes (a single bounded range, as the registry's)."""
        what = "downloading blob %s from %s" % (digest, self.describe())
        headers: dict[str, str] = {}
        if length is not None:
            headers["Range"] = "bytes=%d-%d" % (offset, offset + max(length, 1) - 1)
        elif offset > 0:
            headers["Range"] = "bytes=%d-" % offset
        url = self._blob_url(digest)
        response = self._call(
            lambda: self.client.request("GET", url, what=what, headers=headers, stream=True, ok=(200, 206))
        )
        start = 0
        if response.status_code == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                response.close()
                raise SourceError("%s failed: the mirror answered Range %d- with a different range" % (what, offset))
            start = offset
        return t.cast(BlobStream, self.client_stream(response, start, what))

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]:
        return self._blob_url(digest), {}

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """Static files have no referrers API: a layout's referrers are in its index.json (the tag schema)."""
        return None


def open_mirror(
    entry: t.Mapping[str, t.Any], index: int, origin: ImageReference, params: t.Mapping[str, t.Any]
) -> t.Any:
    """One `mirrors` entry as a source of the origin's image."""
    url = str(entry.get("url") or "")
    scheme, host, path = _split_url(url, index)
    kind = entry.get("type") or "registry"
    if kind not in MIRROR_TYPES:
        raise MirrorConfigError("mirrors[%d].type must be one of %s, got %r" % (index, ", ".join(MIRROR_TYPES), kind))
    if bool(entry.get("username")) != bool(entry.get("password")):
        raise MirrorConfigError("mirrors[%d]: username and password must be given together" % index)
    options = _mirror_options(entry, scheme == "http", params)
    if kind == "layout":
        if entry.get("repository"):
            raise MirrorConfigError("mirrors[%d].repository applies to a registry mirror, not to a layout" % index)
        return LayoutMirror(url, origin, host, path, options)
    if path:
        raise MirrorConfigError(
            "mirrors[%d].url: a registry mirror is a base URL (scheme://host[:port]); give the repository in"
            " mirrors[%d].repository" % (index, index)
        )
    ref = dataclasses.replace(origin, registry=host, repository=entry.get("repository") or origin.repository)
    return RegistryMirror(url, ref, options)


def _label(source: t.Any) -> str:
    """How results name a source: a mirror's url, the origin's base URL (or layout path)."""
    url = getattr(source, "url", None)
    if url:
        return str(url)
    client = getattr(source, "client", None)
    if client is not None:
        return str(client.base_url)
    layout = getattr(source, "layout", None)
    return "file://" + str(layout.path) if layout is not None else str(source.describe())


class MirroredSource:
    """The origin behind its mirrors: the Source interface, each answer from the first source that has it."""

    def __init__(
        self,
        origin: Source,
        mirrors: t.Sequence[t.Any],
        resolve_tags: bool,
        pinned: str | None,
        url_from: str = "origin",
    ):
        self.origin = origin
        self.mirrors = list(mirrors)
        self.ref = origin.ref
        self.resolve_tags = resolve_tags
        self.pinned = pinned
        self.origin_label = _label(origin)
        self._lock = threading.Lock()
        # digest -> label -> bytes served (blob bytes that reached the caller)
        self._served: dict[str, dict[str, int]] = {}
        # digest -> labels left out for it: they failed it, or served wrong bytes
        self._excluded: dict[str, set[str]] = {}
        # digest -> labels that served bytes of the attempt now running
        self._contributors: dict[str, list[str]] = {}
        # mirrors that could not be reached at all: not asked again in this run
        self._down: set[str] = set()
        # digest -> (label, byte) where a source's stream last ended without an error
        self._ended: dict[str, tuple[str, int]] = {}
        # mirrors that answered a range request with the whole blob: asked only from byte 0 from then on
        self._no_ranges: set[str] = set()
        # mirrors that answered a range request with 206: their ranges need no probe
        self._ranges_known: set[str] = set()
        # label -> lock held by the one range request that finds out whether a mirror honours ranges
        self._probes: dict[str, threading.Lock] = {}
        # whose address blob_location hands out: the origin's, or (asked for) a mirror's
        self.url_from = url_from
        self._document_bytes_from_origin = 0
        self.errors: list[dict[str, str]] = []
        # Why the origin could not be reached, once a name lookup found it so; None while it answers.
        self.origin_down: str | None = None

    # ---- bookkeeping -------------------------------------------------------

    @property
    def retries(self) -> int:
        return self.origin.retries

    # What _signatures reads signatures through: the origin's client or layout (signatures are found by tag).
    @property
    def client(self) -> t.Any:
        return getattr(self.origin, "client", None)

    @property
    def layout(self) -> t.Any:
        return getattr(self.origin, "layout", None)

    def over_store(self, store: t.Any) -> MirroredStore:
        """The origin's `store` read the way this source reads: names at the origin, content from the mirrors first.

        Fetch reads signatures and provenance through it, so an air-gapped site
        verifies them from its mirrors as it fetches the image from them.
        """
        return MirroredStore(store, self)

    def _note_error(self, source: t.Any, digest: str, error: BaseException) -> None:
        record = {"url": _label(source), "digest": digest, "reason": str(error)}
        with self._lock:
            if record not in self.errors:
                self.errors.append(record)
            if isinstance(error, MirrorUnreachable):
                self._down.add(record["url"])

    def _served_bytes(self, label: str, digest: str, size: int) -> None:
        with self._lock:
            per_source = self._served.setdefault(digest, {})
            per_source[label] = per_source.get(label, 0) + size
            contributors = self._contributors.setdefault(digest, [])
            if label not in contributors:
                contributors.append(label)

    def _stream_ended(self, label: str, digest: str, position: int) -> None:
        with self._lock:
            self._ended[digest] = (label, position)

    def note_origin_document(self, size: int) -> None:
        with self._lock:
            self._document_bytes_from_origin += size

    def sources_for(self, digest: str) -> list[dict[str, t.Any]]:
        """[{url, bytes}] of a blob, in the order the sources served it."""
        with self._lock:
            return [{"url": label, "bytes": size} for label, size in self._served.get(digest, {}).items()]

    def bytes_from_origin(self) -> int:
        with self._lock:
            blobs = sum(per_source.get(self.origin_label, 0) for per_source in self._served.values())
            return blobs + self._document_bytes_from_origin

    def _candidates(self, digest: str, ranged: bool = False) -> list[t.Any]:
        with self._lock:
            excluded = set(self._excluded.get(digest, ())) | self._down
            if ranged:
                excluded |= self._no_ranges
        return [source for source in [*self.mirrors, self.origin] if _label(source) not in excluded]

    def _exclude(self, source: t.Any, digest: str) -> None:
        with self._lock:
            self._excluded.setdefault(digest, set()).add(_label(source))

    # ---- documents -----------------------------------------------------------

    def describe(self) -> str:
        return self.origin.describe()

    def _first(self, digest: str, what: str, read: t.Callable[[t.Any], t.Any]) -> t.Any:
        """read(source) from the first source that answers; the origin's error, with the mirrors', when none does."""
        failures: list[str] = []
        for source in self._candidates(digest):
            try:
                answer = read(source)
            except SourceError as exc:
                if source is self.origin:
                    raise SourceError(_with_mirror_failures(str(exc), failures), retryable=exc.retryable) from exc
                self._note_error(source, digest, exc)
                failures.append("%s: %s" % (_label(source), exc))
                continue
            if source is self.origin:
                data = answer[0] if isinstance(answer, tuple) else answer
                with self._lock:
                    self._document_bytes_from_origin += len(data)
            return answer
        raise SourceError("%s %s: no source has it (%s)" % (what, digest, "; ".join(failures)))

    def resolve(self) -> tuple[bytes, str | None, str]:
        digest = self.ref.digest or self.pinned
        if digest:
            data, media_type = self.manifest(digest)
            return data, media_type, digest
        if self.resolve_tags:
            for mirror in self.mirrors:
                try:
                    return t.cast(tuple[bytes, t.Optional[str], str], mirror.resolve())
                except SourceError as exc:
                    self._note_error(mirror, str(self.ref), exc)
        try:
            data, media_type, digest = self.origin.resolve()
        except SourceError as exc:
            if self.resolve_tags:
                raise
            raise SourceError("%s; %s" % (exc, TAG_UNTRUSTED), retryable=exc.retryable) from exc
        with self._lock:
            self._document_bytes_from_origin += len(data)
        return data, media_type, digest

    def manifest(self, digest: str) -> tuple[bytes, str | None]:
        return t.cast(tuple[bytes, t.Optional[str]], self._first(digest, "manifest", lambda s: s.manifest(digest)))

    def read_small_blob(self, digest: str, size: int) -> bytes:
        return t.cast(bytes, self._first(digest, "blob", lambda s: s.read_small_blob(digest, size)))

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]:
        """Where a plain HTTP client gets the blob: the origin's address, or with url_from=mirror the first mirror's.

        A consumer of this address may stream it without hashing (an HTTP boot
        server does), so by default it is the origin's: a mirror needs no trust
        only where every byte is verified. A mirror's address is handed out
        only when asked for, and never a plain-HTTP one for an https origin.
        """
        if self.url_from == "mirror":
            origin_is_https = _label(self.origin).startswith("https://")
            for mirror in self.mirrors:
                if origin_is_https and not str(mirror.url).startswith("https://"):
                    continue
                try:
                    return t.cast(tuple[str, dict[str, str]], mirror.blob_location(digest))
                except SourceError:
                    continue
        try:
            return self.origin.blob_location(digest)
        except SourceError as exc:
            if self.url_from == "mirror":
                raise
            raise SourceError(
                "%s; url_from: mirror hands out a mirror's address instead (the consumer must verify the digest)" % exc,
                retryable=exc.retryable,
            ) from exc

    # ---- blobs -----------------------------------------------------------------

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        """A stream of the blob from `offset` (for `length` bytes when given), failing over between sources."""
        with self._lock:
            if offset == 0:
                # A new attempt from byte 0: who served the last one no longer matters.
                self._contributors.pop(digest, None)
            ended = self._ended.pop(digest, None)
        if offset > 0 and ended is not None and ended[1] == offset and ended[0] != self.origin_label:
            # Asked again where that source's stream ended: it ended the blob early.
            self._note_error(_Labelled(ended[0]), digest, SourceError("the blob ended early, at byte %d" % offset))
            with self._lock:
                self._excluded.setdefault(digest, set()).add(ended[0])
        return _FailoverStream(self, digest, offset, length)

    def reject_blob(self, digest: str, reason: str) -> bool:
        """The blob's bytes failed verification: leave out the mirrors that served them; True when a source is left.

        When the origin served some of them too, the blame cannot be placed
        on a mirror alone; the origin is tried once more on its own.
        """
        with self._lock:
            contributors = self._contributors.pop(digest, [])
        mirrors = [label for label in contributors if label != self.origin_label]
        if not mirrors:
            return False
        for label in mirrors:
            self._note_error(
                _Labelled(label), digest, SourceError("served bytes that failed verification: %s" % reason)
            )
            with self._lock:
                self._excluded.setdefault(digest, set()).add(label)
        return True

    def _whole_blob_answer(self, source: t.Any, digest: str, failures: list[str]) -> None:
        """A mirror answered a range request with the whole blob (200): not asked for a range again in this run.

        Reading its answer up to the wanted byte would cost a prefix of the blob
        for every range, which a delta of many small ranges multiplies many
        times over; the next source is asked instead.
        """
        error = SourceError("answered a range request with the whole blob (HTTP 200); not asked for ranges again")
        self._note_error(source, digest, error)
        with self._lock:
            self._no_ranges.add(_label(source))
        failures.append("%s: %s" % (_label(source), error))

    def _range_probe(self, source: t.Any, ranged: bool) -> t.ContextManager[t.Any]:
        """Held by the first range request to a mirror until it answers; the others wait for that answer.

        A whole-blob answer costs what is in flight before it is dropped (socket
        buffers, megabytes); a delta's parallel ranges must not each pay it.
        """
        label = _label(source)
        with self._lock:
            if not ranged or source is self.origin or label in self._ranges_known:
                return contextlib.nullcontext()
            return self._probes.setdefault(label, threading.Lock())

    def _open_one(self, source: t.Any, digest: str, position: int, length: int | None, ranged: bool) -> t.Any:
        """source.open_blob, or None for a mirror found meanwhile not to serve ranges."""
        with self._range_probe(source, ranged):
            label = _label(source)
            with self._lock:
                if ranged and label in self._no_ranges:
                    return None
            stream = source.open_blob(digest, position, length)
            if ranged and source is not self.origin:
                with self._lock:
                    if _whole_answer(stream, position):
                        self._no_ranges.add(label)
                    elif stream.offset == position:
                        self._ranges_known.add(label)
            return stream

    def _open_next(self, digest: str, position: int, end: int | None = None) -> tuple[t.Any, t.Any, int]:
        """(source, its stream, bytes to skip) from the first source that opens at `position` (up to `end`).

        With `end`, every source is asked for exactly that range (`bytes=X-Y`).
        """
        failures: list[str] = []
        ranged = position > 0 or end is not None
        length = None if end is None else end - position
        for source in self._candidates(digest, ranged):
            try:
                stream = self._open_one(source, digest, position, length, ranged)
            except SourceError as exc:
                if source is self.origin:
                    raise SourceError(_with_mirror_failures(str(exc), failures), retryable=exc.retryable) from exc
                self._note_error(source, digest, exc)
                self._exclude(source, digest)
                failures.append("%s: %s" % (_label(source), exc))
                continue
            if stream is None:
                continue
            if ranged and source is not self.origin and _whole_answer(stream, position):
                stream.close()
                self._whole_blob_answer(source, digest, failures)
                continue
            if stream.offset == position:
                return source, stream, 0
            if stream.offset == 0 and source is not self.origin:
                stream.close()
                self._whole_blob_answer(source, digest, failures)
                continue
            if stream.offset == 0 and end is None:
                # The origin, the last source, ignored Range: skip what we have, it costs no more than starting over.
                return source, stream, position
            stream.close()
            if stream.offset == 0:
                # A bounded range (a delta's) answered with the whole blob: the caller fetches the blob whole instead.
                raise SourceError(
                    "%s answered a range request with the whole blob; %s"
                    % (_label(source), _with_mirror_failures("it cannot serve ranges", failures))
                )
            error = SourceError("answered from byte %d when asked for byte %d" % (stream.offset, position))
            if source is self.origin:
                raise error
            self._note_error(source, digest, error)
            self._exclude(source, digest)
            failures.append("%s: %s" % (_label(source), error))
        raise SourceError("blob %s: no source has it (%s)" % (digest, "; ".join(failures)))


def _whole_answer(stream: t.Any, position: int) -> bool:
    """Whether a range request was answered with the whole blob: from byte 0, or as a 200 (`ranged` False)."""
    return (position > 0 and stream.offset == 0) or getattr(stream, "ranged", None) is False


@dataclasses.dataclass
class _Labelled:
    """A stand-in source known only by its label (for errors recorded after the fact)."""

    url: str

    def describe(self) -> str:
        return self.url


def _with_mirror_failures(message: str, failures: t.Sequence[str]) -> str:
    if not failures:
        return message
    return "%s (after the mirrors failed: %s)" % (message, "; ".join(failures))


class _FailoverStream:
    """One blob from `offset`, from one source after another: a break at byte X continues at X on the next."""

    def __init__(self, owner: MirroredSource, digest: str, offset: int, length: int | None):
        self._owner = owner
        self._digest = digest
        self.offset = offset
        self._position = offset
        self._end = None if length is None else offset + length
        self._source, self._stream, self._skip = owner._open_next(digest, offset, self._end)

    def _chunks_of_current(self, size: int) -> t.Iterator[t.Any]:
        label = _label(self._source)
        for chunk in self._stream.iter_chunks(size):
            if self._skip:
                dropped = min(self._skip, len(chunk))
                self._skip -= dropped
                chunk = chunk[dropped:]
                if not chunk:
                    continue
            if self._end is not None:
                chunk = chunk[: self._end - self._position]
            self._position += len(chunk)
            self._owner._served_bytes(label, self._digest, len(chunk))
            yield chunk
            if self._end is not None and self._position >= self._end:
                return
        self._owner._stream_ended(label, self._digest, self._position)

    def iter_chunks(self, size: int) -> t.Iterator[t.Any]:
        while True:
            try:
                yield from self._chunks_of_current(size)
                return
            except SourceError as exc:
                if self._source is self._owner.origin:
                    # The caller resumes the origin as it always has.
                    raise
                self._owner._note_error(self._source, self._digest, exc)
                self._owner._exclude(self._source, self._digest)
                self._stream.close()
                self._source, self._stream, self._skip = self._owner._open_next(self._digest, self._position, self._end)

    def close(self) -> None:
        self._stream.close()


def with_mirrors(origin: Source, params: t.Mapping[str, t.Any]) -> Source:
    """The origin behind the `mirrors` of the module parameters; the origin itself when there are none."""
    entries = params.get("mirrors") or []
    if not entries:
        return origin
    mirrors = [open_mirror(entry, index, origin.ref, params) for index, entry in enumerate(entries)]
    pinned = params.get("digest") or None
    if pinned is not None and not SHA256_DIGEST_RE.fullmatch(str(pinned)):
        raise SourceError("digest: %r is not a sha256:<64 hex> digest" % pinned)
    url_from = params.get("url_from") or "origin"
    return MirroredSource(origin, mirrors, bool(params.get("mirror_resolve_tags")), pinned, url_from)


def mirror_results(source: t.Any) -> dict[str, t.Any]:
    """`bytes_from_origin` and `mirror_errors` of a mirrored source; nothing for a plain one."""
    if not isinstance(source, MirroredSource):
        return {}
    return {"bytes_from_origin": source.bytes_from_origin(), "mirror_errors": list(source.errors)}


def blob_sources(source: t.Any, digest: str) -> list[dict[str, t.Any]] | None:
    """Who served how many bytes of a blob, for a mirrored source; None for a plain one."""
    return source.sources_for(digest) if isinstance(source, MirroredSource) else None


# ---- copy: the source side of ironcore_image_copy ---------------------------------


class _StoreOrigin:
    """A copy's source registry store seen as a Source, so that it can be the origin behind mirrors."""

    def __init__(self, store: t.Any, ref: ImageReference):
        self.store = store
        self.client = store.client
        self.ref = ref

    @property
    def retries(self) -> int:
        return int(self.store.retries)

    def describe(self) -> str:
        return str(self.store.describe())

    def resolve(self) -> tuple[bytes, str | None, str]:
        raise SourceError("a copy resolves names through MirroredStore.resolve")

    def manifest(self, digest: str) -> tuple[bytes, str | None]:
        return self.store.read_document(digest, 0), None

    def read_small_blob(self, digest: str, size: int) -> bytes:
        raise SourceError("a copy reads configs as blobs")

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        return t.cast(BlobStream, self.store.open_blob(digest, offset, length))

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]:
        raise SourceError("a copy needs no blob location")

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False


class MirroredStore:
    """A copy's registry source (_store.ImageSource) behind mirrors: names at the origin, content by digest."""

    def __init__(self, store: t.Any, mirrored: MirroredSource):
        self.store = store
        self.mirrored = mirrored
        self.registry: str | None = store.registry
        self.repository: str | None = store.repository
        self._resolved: dict[str, bytes] = {}
        # subject digest -> the mirror that listed its referrers because the origin could not
        self._listed_by: dict[str, str] = {}

    @property
    def retries(self) -> int:
        return int(self.store.retries)

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        """The origin's name for a tag: fetch's signature check asks it for each `.sig`."""
        return str(self.store.name_for_tag(ref, tag))

    def describe(self) -> str:
        return str(self.store.describe())

    def _ask_origin(self, action: t.Callable[[], t.Any]) -> t.Any:
        """action() at the origin, unless it was found unreachable before in this run.

        Each `.sig` and referrers lookup would otherwise wait through the client's retries of a refused
        connection again; the remembered reason is the answer instead, so it still surfaces where no
        mirror has the thing.
        """
        down = self.mirrored.origin_down
        if down is not None:
            raise OriginUnreachable(down)
        try:
            return action()
        except ImageError as exc:
            if getattr(exc, "code", None) in UNREACHABLE_CODES:
                self.mirrored.origin_down = str(exc)
            raise

    def _at_origin(self, name: str, action: t.Callable[[], t.Any]) -> t.Any:
        try:
            return self._ask_origin(action)
        except ImageError as exc:
            if self.mirrored.resolve_tags:
                raise
            raise SourceError("%s: %s; %s" % (name, exc, TAG_UNTRUSTED), retryable=exc.retryable) from exc

    def _mirror_tag(self, name: str) -> dict[str, t.Any] | None:
        """The first mirror's answer for a tag (mirror_resolve_tags), or None when none has it."""
        for mirror in self.mirrored.mirrors:
            asking = copy_with_ref(mirror, dataclasses.replace(mirror.ref, tag=name, digest=None))
            try:
                data, media_type, digest = asking.resolve()
            except SourceError as exc:
                self.mirrored._note_error(mirror, name, exc)
                continue
            self._resolved[digest] = data
            return {"mediaType": media_type or declared_media_type(data), "digest": digest, "size": len(data)}
        return None

    def resolve(self, name: str) -> dict[str, t.Any]:
        if SHA256_DIGEST_RE.fullmatch(name):
            data, media_type = self.mirrored.manifest(name)
            self._resolved[name] = data
            return {"mediaType": media_type or declared_media_type(data), "digest": name, "size": len(data)}
        if self.mirrored.resolve_tags:
            found = self._mirror_tag(name)
            if found is not None:
                return found
        descriptor = t.cast(dict[str, t.Any], self._at_origin(name, lambda: self.store.resolve(name)))
        # The store keeps what it resolved for the walk: take it, so the origin is not asked (nor counted) twice.
        data = self.store.read_document(descriptor["digest"], descriptor["size"])
        self._resolved[descriptor["digest"]] = data
        self.mirrored.note_origin_document(len(data))
        return descriptor

    def current_name(self, name: str) -> dict[str, t.Any] | None:
        if SHA256_DIGEST_RE.fullmatch(name):
            return self.resolve(name)
        if ATTACHMENT_NAME_RE.fullmatch(name):
            return self.attachment_name(name)
        if self.mirrored.resolve_tags:
            found = self._mirror_tag(name)
            if found is not None:
                return found
        return t.cast(t.Optional[dict[str, t.Any]], self._at_origin(name, lambda: self.store.current_name(name)))

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        """A signature or referrers list of a digest: at the origin, or at the mirrors when the origin cannot answer.

        Unlike an image tag, what such a name points at is checked on its own
        (a signature against the keys and the digest it names, a referrer
        against its subject), so a mirror's answer cannot make a node accept
        other bytes; at worst a mirror leaves one out. That keeps a copy from
        mirrors working with the origin down without carrying less than the
        mirrors hold. What a mirror listed is remembered (`listed_by_mirror`):
        a copy carries only what can be verified from it.
        """
        try:
            return t.cast(t.Optional[dict[str, t.Any]], self._ask_origin(lambda: self.store.attachment_name(name)))
        except ImageError:
            if self.mirrored.resolve_tags:
                raise
        for mirror in self.mirrored.mirrors:
            asking = copy_with_ref(mirror, dataclasses.replace(mirror.ref, tag=name, digest=None))
            try:
                data, media_type, digest = asking.resolve()
            except SourceError:
                # Most digests have no signature and no referrers: a miss is no mirror failure.
                continue
            self._resolved[digest] = data
            if not name.endswith(".sig"):
                self._listed_by["sha256:" + name[len("sha256-") :]] = _label(mirror)
            return {"mediaType": media_type or declared_media_type(data), "digest": digest, "size": len(data)}
        return None

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """The origin's referrers API answer, or the first mirror's with the API when the origin cannot answer.

        None when no source that answered has the API; then _referrers reads
        the tag schema through attachment_name(), in the same order.
        """
        try:
            return t.cast(
                t.Optional[bytes], self._ask_origin(lambda: self.store.referrers_api(subject_digest, artifact_type))
            )
        except ImageError:
            if self.mirrored.resolve_tags:
                raise
        for mirror in self.mirrored.mirrors:
            try:
                answer = mirror.referrers_api(subject_digest, artifact_type)
            except SourceError:
                continue
            if answer is not None:
                self._listed_by[subject_digest] = _label(mirror)
                return t.cast(bytes, answer)
        return None

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return self._listed_by.get(subject_digest)

    def read_document(self, digest: str, size: int) -> bytes:
        cached = self._resolved.pop(digest, None)
        if cached is not None:
            return cached
        return self.mirrored.manifest(digest)[0]

    def check_blob(self, digest: str, size: int) -> None:
        """Nothing to check up front: the bytes are verified as they arrive."""

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        return self.mirrored.open_blob(digest, offset, length)

    def reject_blob(self, digest: str, reason: str) -> bool:
        return self.mirrored.reject_blob(digest, reason)

    def blob_location(self, digest: str) -> BlobLocation:
        """The origin's address, or with url_from=mirror a mirror's (MirroredSource.blob_location)."""
        url, headers = self.mirrored.blob_location(digest)
        return BlobLocation(url, headers)

    def local_blob_path(self, digest: str) -> str | None:
        return None

    def retry_pause(self, attempt: int, what: str, reason: str) -> None:
        self.store.retry_pause(attempt, what, reason)


def copy_with_ref(mirror: t.Any, ref: ImageReference) -> t.Any:
    """The same mirror (sharing its client) asked about another reference."""
    asking = copy.copy(mirror)
    asking.ref = ref
    return asking


def mirrored_store(
    store: t.Any, ref: ImageReference, side: t.Mapping[str, t.Any], params: t.Mapping[str, t.Any]
) -> t.Any:
    """The copy's source store behind `source.mirrors`, or the store itself without mirrors."""
    entries = side.get("mirrors") or []
    if not entries:
        return store
    merged = dict(side, timeout=params.get("timeout"))
    mirrors = [open_mirror(entry, index, ref, merged) for index, entry in enumerate(entries)]
    origin = _StoreOrigin(store, ref)
    return MirroredStore(store, MirroredSource(origin, mirrors, bool(side.get("mirror_resolve_tags")), None))


def store_mirror_results(store: t.Any) -> dict[str, t.Any]:
    """`bytes_from_origin` and `mirror_errors` of a copy's mirrored source; nothing for a plain one."""
    return mirror_results(store.mirrored) if isinstance(store, MirroredStore) else {}


def warn_mirror_errors(result: dict[str, t.Any], warn: t.Callable[[str], None]) -> dict[str, t.Any]:
    """Each of the result's `mirror_errors` as one warning; the result itself, unchanged.

    A mirror that fails costs nothing visible (the next source serves), so a
    broken site cache would go unnoticed while the fleet pulls from the origin:
    the warning is what people and AWX read, the result entry what code reads.
    """
    for error in result.get("mirror_errors") or []:
        warn(
            "mirror %s failed for %s, the next source was asked instead: %s"
            % (error.get("url"), error.get("digest"), error.get("reason"))
        )
    return result
