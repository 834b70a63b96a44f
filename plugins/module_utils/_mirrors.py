"""Digest-only mirrors in front of an image's origin, with failover inside a blob.

A `MirroredSource` is an `_store.ImageSource` over the origin's store: it
answers every question the origin answers, asking an ordered list of mirrors
first and the origin last. Fetch, info, delta and copy read through this one
wrapper. The trust split is the one of containerd's and CRI-O's digest-only
mirrors: a tag is resolved at the origin (unless `mirror_resolve_tags`),
everything after is asked for by digest and checked against it, so a mirror
can make a delivery fail over or fail, never deliver other bytes. A digest
reference (or a pinned `digest`) never needs the origin.

A blob stream that breaks on one source continues at the same byte on the
next, because every source serves the same content for a digest; a range is
asked for bounded (`bytes=X-Y`) of every source, and a mirror that answers a
range with the whole blob is not asked for ranges again. A source whose bytes
fail verification loses the blob (`reject_blob`): the caller starts again
from byte 0 without it. Signatures and referrers are listed at the origin,
and at the mirrors when the origin cannot answer. Every source has its own
client and its own credentials; the origin's never leave it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import typing as t
import urllib.parse

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._io import CHUNK_SIZE, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    MAX_DOCUMENT_SIZE,
    SHA256_DIGEST_RE,
    ImageReference,
    declared_media_type,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageSource, RegistryStore
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobLocation, BlobStream

if t.TYPE_CHECKING:
    # Only for the types: info from a local layout reads ATTACHMENT_NAME_RE here and needs no HTTP library.
    from ansible_collections.ironcore.image.plugins.module_utils._client import BlobStream as ClientStream
    from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient

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


class MirrorError(ImageError):
    """A mirrored read failed; the message says at which source and why."""


class MirrorConfigError(MirrorError):
    """A `mirrors` entry that cannot be used as given."""


class MirrorUnreachable(MirrorError):
    """The mirror cannot be reached: it is left out for the rest of the run, not asked again for every digest."""


class OriginUnreachable(MirrorError):
    """The origin could not be reached earlier in this run: not asked again (with its retries) for every name."""


def unreachable(error: BaseException) -> bool:
    """Whether an error says the source is not there at all (rather than without this one digest)."""
    if isinstance(error, MirrorUnreachable):
        return True
    return isinstance(error, RegistryError) and error.code in UNREACHABLE_CODES


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


def _new_client(host: str, options: RegistryOptions) -> RegistryClient:
    from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient

    return RegistryClient(host, options)


class RegistryMirror(RegistryStore):
    """A registry (or pull-through cache, or site cache) that holds the origin's repository or a copy of it."""

    def __init__(self, url: str, client: RegistryClient, repository: str):
        super().__init__(client, repository)
        self.url = url

    def describe(self) -> str:
        return "mirror %s" % self.url

    def source_url(self) -> str:
        return self.url


class LayoutMirror:
    """A plain HTTP(S) root serving an OCI image layout as static files (index.json, blobs/sha256/<hex>)."""

    registry: str | None = None
    repository: str | None = None

    def __init__(self, url: str, ref: ImageReference, client: RegistryClient, path: str):
        self.url = url
        # The origin's reference: the layout names its images as the origin does (`host/repo:tag`) or by bare tag.
        self.ref = ref
        self.client = client
        self._root = client.base_url + path
        self._resolved: dict[str, bytes] = {}

    @property
    def retries(self) -> int:
        return int(self.client.retries)

    def describe(self) -> str:
        return "mirror %s" % self.url

    def source_url(self) -> str:
        return self.url

    def _blob_url(self, digest: str) -> str:
        if not SHA256_DIGEST_RE.fullmatch(digest):
            raise MirrorError("%s: %r is not a sha256 digest" % (self.describe(), digest))
        return "%s/blobs/sha256/%s" % (self._root, digest.split(":", 1)[1])

    def _get_small(self, url: str, what: str) -> bytes:
        response = self.client.request("GET", url, what=what, stream=True)
        data = bytearray()
        try:
            for chunk in self._stream(response, 0, what).iter_chunks(CHUNK_SIZE):
                data += chunk
                if len(data) > MAX_DOCUMENT_SIZE:
                    raise MirrorError("%s failed: the document is larger than 4 MiB; refusing it" % what)
        finally:
            response.close()
        return bytes(data)

    def _stream(self, response: t.Any, offset: int, what: str) -> ClientStream:
        from ansible_collections.ironcore.image.plugins.module_utils._client import BlobStream as Stream

        return Stream(response, offset, what, self.client)

    def _document(self, digest: str, what: str) -> bytes:
        data = self._get_small(self._blob_url(digest), "reading %s %s from %s" % (what, digest, self.describe()))
        if sha256_digest(data) != digest:
            raise MirrorError(
                "%s %s from %s does not match its digest; the mirror is corrupt" % (what, digest, self.url)
            )
        return data

    def _descriptor(self, digest: str, media_type: t.Any) -> dict[str, t.Any]:
        data = self._document(digest, "manifest")
        self._resolved[digest] = data
        declared = media_type if isinstance(media_type, str) else declared_media_type(data)
        return {"mediaType": declared, "digest": digest, "size": len(data)}

    def resolve(self, name: str) -> dict[str, t.Any]:
        if SHA256_DIGEST_RE.fullmatch(name):
            return self._descriptor(name, None)
        raw = self._get_small(self._root + "/index.json", "reading index.json of %s" % self.describe())
        try:
            index = load_json(raw, "index.json of %s" % self.describe())
        except DocumentError as exc:
            raise MirrorError(str(exc)) from exc
        entries = index.get("manifests")
        ref = dataclasses.replace(self.ref, tag=name, digest=None)
        for candidate in (str(ref), name):
            for entry in entries if isinstance(entries, list) else []:
                annotations = entry.get("annotations") if isinstance(entry, dict) else None
                if isinstance(annotations, dict) and annotations.get(REF_NAME_ANNOTATION) == candidate:
                    digest = entry.get("digest")
                    if not isinstance(digest, str) or not SHA256_DIGEST_RE.fullmatch(digest):
                        raise MirrorError("%s records %s without a valid digest" % (self.describe(), candidate))
                    return self._descriptor(digest, entry.get("mediaType"))
        raise MirrorError("%s does not record %s in its index.json" % (self.describe(), ref))

    def current_name(self, name: str) -> dict[str, t.Any] | None:
        try:
            return self.resolve(name)
        except MirrorError:
            return None

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        return self.current_name(name)

    def read_document(self, digest: str, size: int) -> bytes:
        cached = self._resolved.pop(digest, None)
        return cached if cached is not None else self._document(digest, "manifest")

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """Static files have no referrers API: a layout's referrers are in its index.json (the tag schema)."""
        return None

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return None

    def check_blob(self, digest: str, size: int) -> None:
        """Nothing to check up front: the bytes are verified as they arrive."""

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        """From `offset` on; with `length`, only that many bytes (a single bounded range, as the registry's)."""
        what = "downloading blob %s from %s" % (digest, self.describe())
        headers: dict[str, str] = {}
        if length is not None:
            headers["Range"] = "bytes=%d-%d" % (offset, offset + max(length, 1) - 1)
        elif offset > 0:
            headers["Range"] = "bytes=%d-" % offset
        response = self.client.request(
            "GET", self._blob_url(digest), what=what, headers=headers, stream=True, ok=(200, 206)
        )
        start = 0
        if response.status_code == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                response.close()
                raise MirrorError("%s failed: the mirror answered Range %d- with a different range" % (what, offset))
            start = offset
        return self._stream(response, start, what)

    def local_blob_path(self, digest: str) -> str | None:
        return None

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False

    def blob_location(self, digest: str) -> BlobLocation:
        return BlobLocation(self._blob_url(digest), {})

    def retry_pause(self, attempt: int, what: str, reason: str) -> None:
        self.client.wait_before_retry(max(attempt - 1, 0), what, reason)

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        return tag

    def name_to_resolve(self, ref: ImageReference, given: str) -> str:
        return ref.reference

    def served(self, digest: str) -> list[dict[str, t.Any]] | None:
        return None

    def mirror_report(self) -> dict[str, t.Any]:
        return {}


def open_mirror(
    entry: t.Mapping[str, t.Any], index: int, origin: ImageReference, params: t.Mapping[str, t.Any]
) -> ImageSource:
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
        return LayoutMirror(url, origin, _new_client(host, options), path)
    if path:
        raise MirrorConfigError(
            "mirrors[%d].url: a registry mirror is a base URL (scheme://host[:port]); give the repository in"
            " mirrors[%d].repository" % (index, index)
        )
    return RegistryMirror(url, _new_client(host, options), str(entry.get("repository") or origin.repository))


def _verified(data: bytes, digest: str, source: ImageSource) -> bytes:
    """A document as one source served it: within the cap and matching its digest, or that source's failure."""
    if len(data) > MAX_DOCUMENT_SIZE:
        raise MirrorError("%s from %s is larger than 4 MiB; refusing it" % (digest, source.describe()))
    if sha256_digest(data) != digest:
        raise MirrorError("%s from %s does not match its digest; the source is corrupt" % (digest, source.describe()))
    return data


Answer = t.TypeVar("Answer")


class MirroredSource:
    """The origin's store behind its mirrors: an ImageSource, each answer from the first source that has it."""

    def __init__(
        self,
        origin: ImageSource,
        mirrors: t.Sequence[ImageSource],
        resolve_tags: bool,
        pinned: str | None,
        url_from: str = "origin",
    ):
        self.origin = origin
        self.mirrors = list(mirrors)
        self.registry: str | None = origin.registry
        self.repository: str | None = origin.repository
        self.resolve_tags = resolve_tags
        self.pinned = pinned
        # whose address blob_location hands out: the origin's, or (asked for) a mirror's
        self.url_from = url_from
        self.origin_label = origin.source_url()
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
        # documents read while resolving a name, handed to the next read_document of their digest
        self._resolved: dict[str, bytes] = {}
        # subject digest -> the mirror that listed its referrers because the origin could not
        self._listed_by: dict[str, str] = {}
        self._document_bytes_from_origin = 0
        self.errors: list[dict[str, str]] = []
        # Why the origin could not be reached, once a name lookup found it so; None while it answers.
        self.origin_down: str | None = None

    # ---- bookkeeping -------------------------------------------------------

    @property
    def retries(self) -> int:
        return self.origin.retries

    def describe(self) -> str:
        return self.origin.describe()

    def source_url(self) -> str:
        return self.origin_label

    def name_for_tag(self, ref: ImageReference, tag: str) -> str:
        """The origin's name for a tag: the signature check asks it for each `.sig`."""
        return self.origin.name_for_tag(ref, tag)

    def retry_pause(self, attempt: int, what: str, reason: str) -> None:
        self.origin.retry_pause(attempt, what, reason)

    def name_to_resolve(self, ref: ImageReference, given: str) -> str:
        return self.origin.name_to_resolve(ref, given)

    def _note_error(self, label: str, digest: str, error: BaseException) -> None:
        record = {"url": label, "digest": digest, "reason": str(error)}
        with self._lock:
            if record not in self.errors:
                self.errors.append(record)
            if unreachable(error):
                self._down.add(label)

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

    def _note_origin_document(self, size: int) -> None:
        with self._lock:
            self._document_bytes_from_origin += size

    def served(self, digest: str) -> list[dict[str, t.Any]] | None:
        """[{url, bytes}] of a blob, in the order the sources served it."""
        with self._lock:
            return [{"url": label, "bytes": size} for label, size in self._served.get(digest, {}).items()]

    def bytes_from_origin(self) -> int:
        with self._lock:
            blobs = sum(per_source.get(self.origin_label, 0) for per_source in self._served.values())
            return blobs + self._document_bytes_from_origin

    def mirror_report(self) -> dict[str, t.Any]:
        return {"bytes_from_origin": self.bytes_from_origin(), "mirror_errors": list(self.errors)}

    def _candidates(self, digest: str, ranged: bool = False) -> list[ImageSource]:
        with self._lock:
            excluded = set(self._excluded.get(digest, ())) | self._down
            if ranged:
                excluded |= self._no_ranges
        return [source for source in [*self.mirrors, self.origin] if source.source_url() not in excluded]

    def _exclude(self, label: str, digest: str) -> None:
        with self._lock:
            self._excluded.setdefault(digest, set()).add(label)

    # ---- names: at the origin, unless mirror_resolve_tags --------------------------------

    def _ask_origin(self, action: t.Callable[[], Answer]) -> Answer:
        """action() at the origin, unless it was found unreachable before in this run.

        Each `.sig` and referrers lookup would otherwise wait through the client's retries of a refused
        connection again; the remembered reason is the answer instead, so it still surfaces where no
        mirror has the thing.
        """
        down = self.origin_down
        if down is not None:
            raise OriginUnreachable(down)
        try:
            return action()
        except ImageError as exc:
            if unreachable(exc):
                self.origin_down = str(exc)
            raise

    def _at_origin(self, name: str, action: t.Callable[[], Answer]) -> Answer:
        try:
            return self._ask_origin(action)
        except ImageError as exc:
            if self.resolve_tags:
                raise
            raise MirrorError("%s; %s" % (exc, TAG_UNTRUSTED), retryable=exc.retryable) from exc

    def _keep(self, source: ImageSource, descriptor: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        """What `source` resolved a name to, its document read, checked and kept for the walk's read."""
        digest, size = str(descriptor["digest"]), int(descriptor["size"])
        data = _verified(source.read_document(digest, size), digest, source)
        self._resolved[digest] = data
        if source is self.origin:
            self._note_origin_document(len(data))
        media_type = descriptor.get("mediaType") or declared_media_type(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def _mirror_name(
        self, name: str, lookup: t.Callable[[ImageSource], dict[str, t.Any] | None], note: bool
    ) -> tuple[str, dict[str, t.Any]] | None:
        """(label, descriptor) of the first mirror that has a name, or None; misses noted when `note`."""
        for mirror in self.mirrors:
            try:
                found = lookup(mirror)
                if found is not None:
                    return mirror.source_url(), self._keep(mirror, found)
            except ImageError as exc:
                if note:
                    self._note_error(mirror.source_url(), name, exc)
        return None

    def _by_digest(self, digest: str) -> dict[str, t.Any]:
        data = self.read_document(digest, 0)
        self._resolved[digest] = data
        return {"mediaType": declared_media_type(data), "digest": digest, "size": len(data)}

    def resolve(self, name: str) -> dict[str, t.Any]:
        """A digest (or the pinned `digest`) from the first source that has it; a tag at the origin."""
        digest = name if SHA256_DIGEST_RE.fullmatch(name) else self.pinned
        if digest:
            return self._by_digest(digest)
        if self.resolve_tags:
            found = self._mirror_name(name, lambda mirror: mirror.resolve(name), note=True)
            if found is not None:
                return found[1]
        return self._keep(self.origin, self._at_origin(name, lambda: self.origin.resolve(name)))

    def current_name(self, name: str) -> dict[str, t.Any] | None:
        if SHA256_DIGEST_RE.fullmatch(name):
            return self._by_digest(name)
        if ATTACHMENT_NAME_RE.fullmatch(name):
            return self.attachment_name(name)
        if self.resolve_tags:
            found = self._mirror_name(name, lambda mirror: mirror.resolve(name), note=True)
            if found is not None:
                return found[1]
        current = self._at_origin(name, lambda: self.origin.current_name(name))
        return None if current is None else dict(current)

    def attachment_name(self, name: str) -> dict[str, t.Any] | None:
        """A signature or referrers list of a digest: at the origin, or at the mirrors when the origin cannot answer.

        Unlike an image tag, what such a name points at is checked on its own
        (a signature against the keys and the digest it names, a referrer
        against its subject), so a mirror's answer cannot make a node accept
        other bytes; at worst a mirror leaves one out. That keeps a fetch or a
        copy from mirrors working with the origin down without carrying less
        than the mirrors hold. What a mirror listed is remembered
        (`listed_by_mirror`): a copy carries only what can be verified from it.
        """
        try:
            return self._ask_origin(lambda: self.origin.attachment_name(name))
        except ImageError:
            if self.resolve_tags:
                raise
        # Most digests have no signature and no referrers: a miss is no mirror failure.
        found = self._mirror_name(name, lambda mirror: mirror.attachment_name(name), note=False)
        if found is None:
            return None
        if not name.endswith(".sig"):
            self._listed_by["sha256:" + name[len("sha256-") :]] = found[0]
        return found[1]

    def referrers_api(self, subject_digest: str, artifact_type: str | None) -> bytes | None:
        """The origin's referrers API answer, or the first mirror's with the API when the origin cannot answer.

        None when no source that answered has the API; then _referrers reads
        the tag schema through attachment_name(), in the same order.
        """
        try:
            return self._ask_origin(lambda: self.origin.referrers_api(subject_digest, artifact_type))
        except ImageError:
            if self.resolve_tags:
                raise
        for mirror in self.mirrors:
            try:
                answer = mirror.referrers_api(subject_digest, artifact_type)
            except ImageError:
                continue
            if answer is not None:
                self._listed_by[subject_digest] = mirror.source_url()
                return answer
        return None

    def listed_by_mirror(self, subject_digest: str) -> str | None:
        return self._listed_by.get(subject_digest)

    # ---- documents ---------------------------------------------------------------

    def read_document(self, digest: str, size: int) -> bytes:
        """The document from the first source that serves it with the right digest; the origin's error, with the
        mirrors', when none does."""
        cached = self._resolved.pop(digest, None)
        if cached is not None:
            return cached
        failures: list[str] = []
        for source in self._candidates(digest):
            try:
                data = _verified(source.read_document(digest, size), digest, source)
            except ImageError as exc:
                if source is self.origin:
                    raise MirrorError(_with_mirror_failures(str(exc), failures), retryable=exc.retryable) from exc
                self._note_error(source.source_url(), digest, exc)
                failures.append("%s: %s" % (source.source_url(), exc))
                continue
            if source is self.origin:
                self._note_origin_document(len(data))
            return data
        raise MirrorError("manifest %s: no source has it (%s)" % (digest, "; ".join(failures)))

    def blob_location(self, digest: str) -> BlobLocation:
        """Where a plain HTTP client gets the blob: the origin's address, or with url_from=mirror the first mirror's.

        A consumer of this address may stream it without hashing (an HTTP boot
        server does), so by default it is the origin's: a mirror needs no trust
        only where every byte is verified. A mirror's address is handed out
        only when asked for, and never a plain-HTTP one for an https origin.
        """
        if self.url_from == "mirror":
            origin_is_https = self.origin_label.startswith("https://")
            for mirror in self.mirrors:
                if origin_is_https and not mirror.source_url().startswith("https://"):
                    continue
                try:
                    return mirror.blob_location(digest)
                except ImageError:
                    continue
        try:
            return self.origin.blob_location(digest)
        except ImageError as exc:
            if self.url_from == "mirror":
                raise
            raise MirrorError(
                "%s; url_from: mirror hands out a mirror's address instead (the consumer must verify the digest)" % exc,
                retryable=exc.retryable,
            ) from exc

    # ---- blobs -----------------------------------------------------------------

    def check_blob(self, digest: str, size: int) -> None:
        """Nothing to check up front: the bytes are verified as they arrive."""

    def local_blob_path(self, digest: str) -> str | None:
        return None

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        """A stream of the blob from `offset` (for `length` bytes when given), failing over between sources."""
        with self._lock:
            if offset == 0:
                # A new attempt from byte 0: who served the last one no longer matters.
                self._contributors.pop(digest, None)
            ended = self._ended.pop(digest, None)
        if offset > 0 and ended is not None and ended[1] == offset and ended[0] != self.origin_label:
            # Asked again where that source's stream ended: it ended the blob early.
            self._note_error(ended[0], digest, MirrorError("the blob ended early, at byte %d" % offset))
            self._exclude(ended[0], digest)
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
            self._note_error(label, digest, MirrorError("served bytes that failed verification: %s" % reason))
            self._exclude(label, digest)
        return True

    def _whole_blob_answer(self, label: str, digest: str, failures: list[str]) -> None:
        """A mirror answered a range request with the whole blob (200): not asked for a range again in this run.

        Reading its answer up to the wanted byte would cost a prefix of the blob
        for every range, which a delta of many small ranges multiplies many
        times over; the next source is asked instead.
        """
        error = MirrorError("answered a range request with the whole blob (HTTP 200); not asked for ranges again")
        self._note_error(label, digest, error)
        with self._lock:
            self._no_ranges.add(label)
        failures.append("%s: %s" % (label, error))

    def _range_probe(self, source: ImageSource, ranged: bool) -> t.ContextManager[t.Any]:
        """Held by the first range request to a mirror until it answers; the others wait for that answer.

        A whole-blob answer costs what is in flight before it is dropped (socket
        buffers, megabytes); a delta's parallel ranges must not each pay it.
        """
        label = source.source_url()
        with self._lock:
            if not ranged or source is self.origin or label in self._ranges_known:
                return contextlib.nullcontext()
            return self._probes.setdefault(label, threading.Lock())

    def _open_one(
        self, source: ImageSource, digest: str, position: int, length: int | None, ranged: bool
    ) -> BlobStream | None:
        """source.open_blob, or None for a mirror found meanwhile not to serve ranges."""
        with self._range_probe(source, ranged):
            label = source.source_url()
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

    def _open_next(self, digest: str, position: int, end: int | None = None) -> tuple[ImageSource, BlobStream, int]:
        """(source, its stream, bytes to skip) from the first source that opens at `position` (up to `end`).

        With `end`, every source is asked for exactly that range (`bytes=X-Y`).
        """
        failures: list[str] = []
        ranged = position > 0 or end is not None
        length = None if end is None else end - position
        for source in self._candidates(digest, ranged):
            label = source.source_url()
            try:
                stream = self._open_one(source, digest, position, length, ranged)
            except ImageError as exc:
                if source is self.origin:
                    raise MirrorError(_with_mirror_failures(str(exc), failures), retryable=exc.retryable) from exc
                self._note_error(label, digest, exc)
                self._exclude(label, digest)
                failures.append("%s: %s" % (label, exc))
                continue
            if stream is None:
                continue
            if ranged and source is not self.origin and _whole_answer(stream, position):
                stream.close()
                self._whole_blob_answer(label, digest, failures)
                continue
            if stream.offset == position:
                return source, stream, 0
            if stream.offset == 0 and source is not self.origin:
                stream.close()
                self._whole_blob_answer(label, digest, failures)
                continue
            if stream.offset == 0 and end is None:
                # The origin, the last source, ignored Range: skip what we have, it costs no more than starting over.
                return source, stream, position
            stream.close()
            if stream.offset == 0:
                # A bounded range (a delta's) answered with the whole blob: the caller fetches the blob whole instead.
                raise MirrorError(
                    "%s answered a range request with the whole blob; %s"
                    % (label, _with_mirror_failures("it cannot serve ranges", failures))
                )
            error = MirrorError("answered from byte %d when asked for byte %d" % (stream.offset, position))
            if source is self.origin:
                raise error
            self._note_error(label, digest, error)
            self._exclude(label, digest)
            failures.append("%s: %s" % (label, error))
        raise MirrorError("blob %s: no source has it (%s)" % (digest, "; ".join(failures)))


def _whole_answer(stream: t.Any, position: int) -> bool:
    """Whether a range request was answered with the whole blob: from byte 0, or as a 200 (`ranged` False)."""
    return (position > 0 and stream.offset == 0) or getattr(stream, "ranged", None) is False


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
        label = self._source.source_url()
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
            except ImageError as exc:
                if self._source is self._owner.origin:
                    # The caller resumes the origin as it always has.
                    raise
                label = self._source.source_url()
                self._owner._note_error(label, self._digest, exc)
                self._owner._exclude(label, self._digest)
                self._stream.close()
                self._source, self._stream, self._skip = self._owner._open_next(self._digest, self._position, self._end)

    def close(self) -> None:
        self._stream.close()


def with_mirrors(origin: ImageSource, ref: ImageReference, options: t.Mapping[str, t.Any]) -> ImageSource:
    """The origin behind the `mirrors` of `options` (a module's parameters, or a copy's `source`); the origin
    itself when there are none. `options` also gives `mirror_resolve_tags`, `timeout`, and for a fetch `digest`
    and `url_from`."""
    entries = options.get("mirrors") or []
    if not entries:
        return origin
    mirrors = [open_mirror(entry, index, ref, options) for index, entry in enumerate(entries)]
    pinned = options.get("digest") or None
    if pinned is not None and not SHA256_DIGEST_RE.fullmatch(str(pinned)):
        raise MirrorConfigError("digest: %r is not a sha256:<64 hex> digest" % pinned)
    url_from = options.get("url_from") or "origin"
    return MirroredSource(origin, mirrors, bool(options.get("mirror_resolve_tags")), pinned, url_from)


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
