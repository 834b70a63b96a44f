# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Where an image is read from: a local OCI layout or a registry.

Both sources answer the same few questions (what does a name resolve to,
give me this manifest, stream this blob from an offset), so fetch and info
neither know nor care which one they talk to. Every document handed out has
been checked against its digest and the 4 MiB cap.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json, parse_document
from ansible_collections.ironcore.image.plugins.module_utils._document import check_descriptor as check_one_descriptor
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    CHUNK_SIZE,
    FileStream,
    sha256_digest,
)
from ansible_collections.ironcore.image.plugins.module_utils._layout import LayoutError, OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURE_CHOICES,
    MAX_DOCUMENT_SIZE,
    MAX_INDEX_ENTRIES,
    PLATFORM_CHOICES,
    ROLES,
    SHA256_DIGEST_RE,
    ImageReference,
    InvalidReference,
    names_hint,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import REGISTRY_ARGUMENT_SPEC
from ansible_collections.ironcore.image.plugins.module_utils._select import (
    Document,
    SelectionError,
    check_descriptor,
    check_manifest_serves,
    entry_label,
    is_index,
    normalise_config,
    select_entry,
)
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobStream


class SourceError(ImageError):
    """Reading from the source failed; `retryable` says whether trying again may help."""


class Source(t.Protocol):
    ref: ImageReference

    @property
    def retries(self) -> int:
        """Requests retried so far (a registry's client counts them; a layout never retries)."""

    def describe(self) -> str: ...

    def resolve(self) -> tuple[bytes, str | None, str]: ...

    def manifest(self, digest: str) -> tuple[bytes, str | None]: ...

    def read_small_blob(self, digest: str, size: int) -> bytes: ...

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream: ...

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]: ...

    def reject_blob(self, digest: str, reason: str) -> bool:
        """After a blob failed verification: True when another source may serve it (mirrors), else False."""


def _check_document(data: bytes, digest: str, what: str) -> bytes:
    if len(data) > MAX_DOCUMENT_SIZE:
        raise SourceError("%s %s is larger than 4 MiB; refusing it" % (what, digest))
    if sha256_digest(data) != digest:
        raise SourceError("%s %s does not match its digest; the source is corrupt" % (what, digest))
    return data


class LayoutSource:
    """An image in a local OCI image layout (as written by ironcore_image_build or skopeo)."""

    # What _referrers.source_store() asks every source: its client (none), its layout, the wrapper of its store.
    client = None

    @staticmethod
    def over_store(store: t.Any) -> t.Any:
        return store

    def __init__(self, path: str, ref: ImageReference, name: str):
        self.layout = OciLayout(path)
        self.ref = ref
        self.name = name
        if not self.layout.exists():
            raise SourceError("layout: %s is not an OCI image layout (no oci-layout file)" % self.layout.path)

    @property
    def retries(self) -> int:
        return 0

    def describe(self) -> str:
        return "%s in layout %s" % (self.name, self.layout.path)

    def _document(self, digest: str, what: str) -> bytes:
        try:
            return self.layout.read_document(digest)
        except LayoutError as exc:
            raise SourceError("%s: %s" % (what, exc)) from exc

    def resolve(self) -> tuple[bytes, str | None, str]:
        if self.ref.digest:
            return self._document(self.ref.digest, self.name), None, self.ref.digest
        try:
            names = self.layout.refs()
        except LayoutError as exc:
            raise SourceError(str(exc)) from exc
        # Names as given, as this collection records them, or a bare tag as `skopeo copy oci:DIR:TAG` does.
        for candidate in (self.name, str(self.ref), self.ref.tag):
            if candidate in names:
                entry = names[candidate]
                digest = entry.get("digest")
                if not isinstance(digest, str) or not SHA256_DIGEST_RE.fullmatch(digest):
                    raise SourceError(
                        "%s is recorded in layout %s without a valid digest" % (candidate, self.layout.path)
                    )
                data = self._document(digest, self.name)
                return data, entry.get("mediaType"), digest
        hint = names_hint(self.name, names)
        raise SourceError(
            "%s is not recorded in layout %s (names there, closest first: %s)" % (self.name, self.layout.path, hint)
        )

    def manifest(self, digest: str) -> tuple[bytes, str | None]:
        return self._document(digest, "manifest"), None

    def read_small_blob(self, digest: str, size: int) -> bytes:
        return self._document(digest, "blob")

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        try:
            return FileStream(self.layout.blob_path(digest), offset, length)
        except LayoutError as exc:
            raise SourceError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise SourceError("blob %s is missing from layout %s" % (digest, self.layout.path)) from exc
        except OSError as exc:
            raise SourceError(
                "cannot read blob %s in layout %s: %s" % (digest, self.layout.path, exc.strerror)
            ) from exc

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]:
        try:
            return "file://" + self.layout.blob_path(digest), {}
        except LayoutError as exc:
            raise SourceError(str(exc)) from exc


class RegistrySource:
    """An image in an OCI registry, through the collection's registry client."""

    # What _referrers.source_store() asks every source: its client, its layout (none), the wrapper of its store.
    layout = None

    @staticmethod
    def over_store(store: t.Any) -> t.Any:
        return store

    def __init__(
        self,
        ref: ImageReference,
        params: t.Mapping[str, t.Any],
        on_retry: t.Callable[[str], None] | None = None,
    ):
        # Imported here so that reading a local layout needs no HTTP library.
        from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, RegistryError
        from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
            InvalidRegistryOptions,
            registry_options,
        )

        if not ref.registry:
            raise SourceError("name: %s names no registry host; write it as host[:port]/repository[:tag]" % ref)
        try:
            options = registry_options(params)
        except InvalidRegistryOptions as exc:
            raise SourceError(str(exc)) from exc
        self.ref = ref
        self._error_type = RegistryError
        try:
            # Reads docker_config (and runs credential helpers) already.
            self.client = RegistryClient(ref.registry, options, on_retry)
        except RegistryError as exc:
            raise SourceError(str(exc)) from exc

    def describe(self) -> str:
        return str(self.ref)

    @property
    def retries(self) -> int:
        """How many requests the client retried so far."""
        return int(self.client.retries)

    def _call(self, action: t.Callable[[], t.Any]) -> t.Any:
        try:
            return action()
        except self._error_type as exc:
            raise SourceError(str(exc), retryable=bool(getattr(exc, "retryable", False))) from exc

    def resolve(self) -> tuple[bytes, str | None, str]:
        data, media_type, digest = self._call(lambda: self.client.get_manifest(self.ref.repository, self.ref.reference))
        return data, media_type, digest

    def manifest(self, digest: str) -> tuple[bytes, str | None]:
        data, media_type, _digest = self._call(lambda: self.client.get_manifest(self.ref.repository, digest))
        return _check_document(data, digest, "manifest"), media_type

    def read_small_blob(self, digest: str, size: int) -> bytes:
        if size > MAX_DOCUMENT_SIZE:
            raise SourceError("blob %s is %d bytes, more than a config may be (4 MiB); refusing it" % (digest, size))
        stream = self.open_blob(digest)
        try:
            data = bytearray()
            for chunk in stream.iter_chunks(CHUNK_SIZE):
                data += chunk
                if len(data) > MAX_DOCUMENT_SIZE:
                    break
        finally:
            stream.close()
        return _check_document(bytes(data), digest, "blob")

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        """From `offset` on; with `length`, only that many bytes (a single-range GET)."""
        return TranslatedStream(
            self._call(lambda: self.client.open_blob(self.ref.repository, digest, offset, length)), self._call
        )

    def reject_blob(self, digest: str, reason: str) -> bool:
        return False

    def blob_location(self, digest: str) -> tuple[str, dict[str, str]]:
        url = self._call(lambda: self.client.blob_url(self.ref.repository, digest))
        headers = self._call(lambda: self.client.auth_headers(self.ref.repository))
        return url, dict(headers)


class TranslatedStream:
    """A client stream with its errors turned into SourceError as they surface (through `call`)."""

    def __init__(self, stream: t.Any, call: t.Callable[[t.Callable[[], t.Any]], t.Any]):
        self._stream = stream
        self._call = call
        self.offset = stream.offset
        self.ranged: bool | None = getattr(stream, "ranged", None)

    def iter_chunks(self, size: int) -> t.Iterator[t.Any]:
        chunks = self._stream.iter_chunks(size)
        while True:
            chunk = self._call(lambda: next(chunks, None))
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._stream.close()


def image_argument_spec(platform_required: bool) -> dict[str, dict[str, t.Any]]:
    """Options of every module that reads an image: the registry ones, then what to read and select."""
    spec = dict(REGISTRY_ARGUMENT_SPEC)
    spec.update(
        name={"type": "str", "required": True},
        layout={"type": "path"},
        platform={"type": "str", "required": platform_required, "choices": list(PLATFORM_CHOICES)},
        architecture={"type": "str", "choices": [*ARCHITECTURE_CHOICES, "auto"], "default": "auto"},
        layers={"type": "list", "elements": "str", "choices": list(ROLES)},
    )
    return spec


def open_source(params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None = None) -> Source:
    """The source the module parameters name: `layout` when given, else the registry of `name`.

    `on_retry` is told of every retried registry request (modules pass module.warn).
    """
    try:
        ref = ImageReference.parse(params["name"])
    except InvalidReference as exc:
        raise SourceError("name: %s" % exc) from exc
    if params.get("layout"):
        return LayoutSource(params["layout"], ref, params["name"])
    return RegistrySource(ref, params, on_retry)


@dataclass
class ResolvedImage:
    """What a name resolved to: the document, its digest, and whether it is an index."""

    data: bytes
    media_type: str | None
    digest: str
    document: Document
    index: bool


@dataclass
class SelectedManifest:
    digest: str
    document: Document
    # Which of _select.RULES decided that this manifest serves the platform.
    decided_by: str


def resolve_image(source: Source) -> ResolvedImage:
    data, media_type, digest = source.resolve()
    document = load_json(data, "%s (%s)" % (source.describe(), digest))
    index = is_index(document, media_type)
    entries = document.get("manifests")
    # Each entry is a manifest to read and keep: a 4 MiB index could name some 20,000.
    if index and isinstance(entries, list) and len(entries) > MAX_INDEX_ENTRIES:
        raise SourceError(
            "%s (%s) lists %d manifests, more than the %d an image index may have here; refusing it"
            % (source.describe(), digest, len(entries), MAX_INDEX_ENTRIES)
        )
    return ResolvedImage(data, media_type, digest, document, index)


def child_manifest(source: Source, entry: t.Mapping[str, t.Any]) -> Document:
    """The manifest an index entry points at, checked against the entry."""
    try:
        check_descriptor(entry, "index entry %s" % entry_label(entry))
    except SelectionError as exc:
        raise SourceError("%s: %s" % (source.describe(), exc)) from exc
    digest, size = str(entry["digest"]), int(entry["size"])
    if size > MAX_DOCUMENT_SIZE:
        raise SourceError("manifest %s is %d bytes, more than a manifest may be (4 MiB); refusing it" % (digest, size))
    data, media_type = source.manifest(digest)
    document = parse_document(data, entry, source.describe()).body
    if is_index(document, media_type or entry.get("mediaType")):
        raise SourceError("index entry %s points at another index; nested indexes are not supported" % digest)
    return document


def select_manifest(
    source: Source,
    image: ResolvedImage,
    platform: str,
    architecture: str,
    loaded: dict[str, Document] | None = None,
) -> SelectedManifest:
    """The manifest for the node by _select's rules; an index entry's manifest is read
    only when the entry itself does not decide. `loaded` caches manifests by digest."""
    cache = {} if loaded is None else loaded

    def load(entry: t.Mapping[str, t.Any]) -> Document:
        digest = str(entry["digest"])
        if digest not in cache:
            cache[digest] = child_manifest(source, entry)
        return cache[digest]

    try:
        if not image.index:
            decision = check_manifest_serves(image.document, platform, source.ref.tag, architecture)
            return SelectedManifest(image.digest, image.document, decision.rule)
        entry, decision = select_entry(image.document, platform, architecture, source.ref.tag, load)
    except SelectionError as exc:
        raise SourceError("%s: %s" % (source.describe(), exc)) from exc
    return SelectedManifest(str(entry["digest"]), load(entry), decision.rule)


def read_config(source: Source, manifest: t.Mapping[str, t.Any]) -> Document | None:
    """The parsed image config (e.g. `commandLine`), or None when there is no JSON object config."""
    config = manifest.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        return None
    try:
        digest, size = check_one_descriptor(config, "the config descriptor of %s" % source.describe())
    except DocumentError as exc:
        # A missing size was once read as 0; it is refused like any other invalid one.
        raise SourceError(str(exc)) from exc
    data = source.read_small_blob(digest, size)
    try:
        return normalise_config(load_json(data, "config"))
    except DocumentError:
        return None
