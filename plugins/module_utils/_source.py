# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The image fetch and info read: its store opened from the module's options, resolved and selected.

`open_source()` turns the options of a module that reads an image into an
`_store.ImageSource` (a `LayoutStore` for `layout`, a `RegistryStore` for the
registry of `name`, behind `_mirrors.MirroredSource` when `mirrors` are
given) and the name it is read by; there is no other way to read an image.
The rest is the glue between that store and `_select`'s rules: resolve the
name, read an index entry's manifest, pick the manifest for a node, read its
config. Every document handed out has been checked against its digest and
the 4 MiB cap.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError, load_json, parse_document
from ansible_collections.ironcore.image.plugins.module_utils._document import check_descriptor as check_one_descriptor
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import CHUNK_SIZE, sha256_digest
from ansible_collections.ironcore.image.plugins.module_utils._layout import LayoutError
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURE_CHOICES,
    MAX_DOCUMENT_SIZE,
    MAX_INDEX_ENTRIES,
    PLATFORM_CHOICES,
    ROLES,
    ImageReference,
    InvalidReference,
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
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageSource, LayoutStore


@dataclass(frozen=True)
class NamedSource:
    """The store an image is read from, and the name it is read by (as given, and parsed)."""

    store: ImageSource
    ref: ImageReference
    name: str

    def describe(self) -> str:
        """The image for messages: `name in layout PATH`, or the registry reference."""
        if self.store.registry is None:
            return "%s in %s" % (self.name, self.store.describe())
        return str(self.ref)


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


def open_source(params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None = None) -> NamedSource:
    """The store the module parameters name: `layout` when given, else the registry of `name`; behind `mirrors`.

    `on_retry` is told of every retried registry request (modules pass module.warn).
    """
    try:
        ref = ImageReference.parse(params["name"])
    except InvalidReference as exc:
        raise ImageError("name: %s" % exc, option="name") from exc
    store: ImageSource
    if params.get("layout"):
        layout = LayoutStore(params["layout"])
        try:
            layout.layout.require()
        except LayoutError as exc:
            raise ImageError("layout: %s" % exc, option="layout") from exc
        store = layout
    else:
        store = _registry_store(ref, params, on_retry)
    if params.get("mirrors"):
        # Imported here: most reads have no mirrors.
        from ansible_collections.ironcore.image.plugins.module_utils._mirrors import with_mirrors

        store = with_mirrors(store, ref, params)
    return NamedSource(store, ref, params["name"])


def _registry_store(
    ref: ImageReference, params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None
) -> ImageSource:
    # Imported here so that reading a local layout needs no HTTP library.
    from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
    from ansible_collections.ironcore.image.plugins.module_utils._registry_args import registry_options
    from ansible_collections.ironcore.image.plugins.module_utils._store import RegistryStore

    if not ref.registry:
        raise ImageError(
            "name: %s names no registry host; write it as host[:port]/repository[:tag]" % ref, option="name"
        )
    # Reads docker_config (and runs credential helpers) already; its errors are ImageErrors of their own.
    return RegistryStore(RegistryClient(ref.registry, registry_options(params), on_retry), ref.repository)


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


def resolve_image(source: NamedSource) -> ResolvedImage:
    """The document the name points at: by its digest when it has one, else as the store resolves the name."""
    store, ref = source.store, source.ref
    media_type: str | None = None
    if ref.digest:
        digest = ref.digest
        data = store.read_document(digest, 0)
    else:
        descriptor = store.resolve(store.name_to_resolve(ref, source.name))
        digest = str(descriptor["digest"])
        data = store.read_document(digest, int(descriptor["size"]))
        media_type = descriptor.get("mediaType")
    document = load_json(data, "%s (%s)" % (source.describe(), digest))
    index = is_index(document, media_type)
    entries = document.get("manifests")
    # Each entry is a manifest to read and keep: a 4 MiB index could name some 20,000.
    if index and isinstance(entries, list) and len(entries) > MAX_INDEX_ENTRIES:
        raise DocumentError(
            "%s (%s) lists %d manifests, more than the %d an image index may have here; refusing it"
            % (source.describe(), digest, len(entries), MAX_INDEX_ENTRIES)
        )
    return ResolvedImage(data, media_type, digest, document, index)


def child_manifest(source: NamedSource, entry: t.Mapping[str, t.Any]) -> Document:
    """The manifest an index entry points at, checked against the entry."""
    try:
        check_descriptor(entry, "index entry %s" % entry_label(entry))
    except SelectionError as exc:
        raise SelectionError("%s: %s" % (source.describe(), exc)) from exc
    digest, size = str(entry["digest"]), int(entry["size"])
    if size > MAX_DOCUMENT_SIZE:
        raise DocumentError(
            "manifest %s is %d bytes, more than a manifest may be (4 MiB); refusing it" % (digest, size)
        )
    data = source.store.read_document(digest, size)
    document = parse_document(data, entry, source.describe()).body
    if is_index(document, entry.get("mediaType")):
        raise DocumentError("index entry %s points at another index; nested indexes are not supported" % digest)
    return document


def select_manifest(
    source: NamedSource,
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
        raise SelectionError("%s: %s" % (source.describe(), exc)) from exc
    return SelectedManifest(str(entry["digest"]), load(entry), decision.rule)


def read_small_blob(store: ImageSource, digest: str, size: int) -> bytes:
    """A blob of at most 4 MiB (a config) read whole and checked against its digest.

    Behind mirrors, a source whose bytes do not match loses the blob (`reject_blob`) and the next is read.
    """
    if size > MAX_DOCUMENT_SIZE:
        raise DocumentError("blob %s is %d bytes, more than a config may be (4 MiB); refusing it" % (digest, size))
    while True:
        data = bytearray()
        stream = store.open_blob(digest, 0, None)
        try:
            for chunk in stream.iter_chunks(CHUNK_SIZE):
                data += chunk
                if len(data) > MAX_DOCUMENT_SIZE:
                    break
        finally:
            stream.close()
        if len(data) <= MAX_DOCUMENT_SIZE and sha256_digest(bytes(data)) == digest:
            return bytes(data)
        reason = "blob %s from %s does not match its digest; the source is corrupt" % (digest, store.describe())
        if not store.reject_blob(digest, reason):
            raise DocumentError(reason)


def read_config(source: NamedSource, manifest: t.Mapping[str, t.Any]) -> Document | None:
    """The parsed image config (e.g. `commandLine`), or None when there is no JSON object config."""
    config = manifest.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
        return None
    # A missing size was once read as 0; it is refused like any other invalid one.
    digest, size = check_one_descriptor(config, "the config descriptor of %s" % source.describe())
    data = read_small_blob(source.store, digest, size)
    try:
        return normalise_config(load_json(data, "config"))
    except DocumentError:
        return None
