# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Push an image recorded in an OCI layout to a registry.

Order: blobs, then child manifests, then indexes, then the tags, the image's
main tag last; a failure anywhere leaves every tag as it was. Documents are
sent as the exact bytes in the layout, so the digests stay the layout's.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient, RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._layout import LayoutError, OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    PLATFORMS,
    ImageReference,
    InvalidReference,
    declared_media_type,
    platform_refs,
)
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    InvalidRegistryOptions,
    registry_options,
)
from ansible_collections.ironcore.image.plugins.module_utils._source import one_line
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter, upload_blob


class PushError(ImageError):
    """The push cannot be done as asked, or the registry refused it; one-line message."""


@dataclass
class Document:
    """A manifest or index from the layout, with its exact bytes."""

    digest: str
    media_type: str
    data: bytes
    is_index: bool


@dataclass
class PushPlan:
    """Everything the push sends, read from the layout before any request."""

    destination: ImageReference
    blobs: dict[str, int] = field(default_factory=dict)
    # Post-order: every document after the documents it names.
    documents: list[Document] = field(default_factory=list)
    # tag -> document, main tag last.
    tags: dict[str, Document] = field(default_factory=dict)


@dataclass
class BlobReport:
    uploaded: int = 0
    bytes_uploaded: int = 0
    skipped: int = 0
    mounted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "uploaded": self.uploaded,
            "bytes_uploaded": self.bytes_uploaded,
            "skipped": self.skipped,
            "mounted": self.mounted,
        }


# ---- planning (layout only) ------------------------------------------------


def _parse_references(params: t.Mapping[str, t.Any]) -> tuple[ImageReference, ImageReference]:
    try:
        name = ImageReference.parse(params["name"])
    except InvalidReference as exc:
        raise PushError("name: %s" % exc) from exc
    try:
        destination = ImageReference.parse(params.get("destination") or params["name"], default_tag=None)
    except InvalidReference as exc:
        raise PushError("destination: %s" % exc) from exc
    if not destination.registry:
        raise PushError(
            "destination %s names no registry host; give one, for example registry.example.com/%s"
            % (destination, destination.repository)
        )
    if destination.digest:
        raise PushError("destination %s names a digest; give a tag (or none to use the tag of name)" % destination)
    if destination.tag is None:
        destination = destination.with_tag(name.tag or "latest")
    return name, destination


def _tag_names(
    name: ImageReference, destination: ImageReference, layout: OciLayout, platform_tags: bool, aliases: bool = True
) -> dict[str, str]:
    """Destination tag -> layout name, platform tags (and their aliases) first, the main tag last."""
    recorded = layout.refs()
    tags: dict[str, str] = {}
    if platform_tags:
        extra = platform_refs(name, PLATFORMS, ARCHITECTURES, aliases)
        # Per-architecture manifests, then per-platform indexes: children before parents.
        for key in sorted(extra, key=lambda key: (-key.count("/"), key)):
            if str(extra[key]) in recorded:
                tags[str(destination.with_tag_suffix(*key.split("/")).tag)] = str(extra[key])
    tags[str(destination.tag)] = str(name)
    return tags


def _document_media_type(descriptor: t.Mapping[str, t.Any], data: bytes) -> str:
    declared = descriptor.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return declared_media_type(data)


class _Planner:
    def __init__(self, layout: OciLayout, plan: PushPlan):
        self.layout = layout
        self.plan = plan
        self.seen: dict[str, Document] = {}

    def add_blob(self, descriptor: t.Mapping[str, t.Any]) -> None:
        digest = str(descriptor.get("digest"))
        size = descriptor.get("size")
        if not isinstance(size, int):
            raise PushError("a descriptor of blob %s in layout %s has no valid size" % (digest, self.layout.path))
        actual = os.path.getsize(self.layout.blob_path(digest)) if self.layout.has_blob(digest) else None
        if actual is None:
            raise PushError("blob %s is missing from layout %s" % (digest, self.layout.path))
        if actual != size:
            raise PushError(
                "blob %s in layout %s is %d bytes, but its descriptor says %d"
                % (digest, self.layout.path, actual, size)
            )
        self.plan.blobs[digest] = size

    def add_document(self, descriptor: t.Mapping[str, t.Any]) -> Document:
        digest = str(descriptor.get("digest"))
        if digest in self.seen:
            return self.seen[digest]
        data = self.layout.read_document(digest)
        media_type = _document_media_type(descriptor, data)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise PushError("document %s in layout %s is not JSON" % (digest, self.layout.path)) from exc
        if not isinstance(body, dict):
            raise PushError("document %s in layout %s is not a JSON object" % (digest, self.layout.path))
        is_index = media_type in INDEX_MEDIA_TYPES or (media_type not in MANIFEST_MEDIA_TYPES and "manifests" in body)
        if is_index:
            for child in body.get("manifests") or []:
                self.add_document(child)
        else:
            for blob in [body.get("config"), *(body.get("layers") or [])]:
                if isinstance(blob, dict):
                    self.add_blob(blob)
        document = Document(digest, media_type, data, is_index)
        self.seen[digest] = document
        self.plan.documents.append(document)
        return document


def plan_push(params: t.Mapping[str, t.Any]) -> PushPlan:
    """Read everything to send from the layout; fails before any network traffic."""
    name, destination = _parse_references(params)
    layout = OciLayout(params["layout"])
    try:
        layout.require()
        plan = PushPlan(destination=destination)
        planner = _Planner(layout, plan)
        for tag, layout_name in _tag_names(
            name, destination, layout, params.get("platform_tags", True), params.get("platform_tag_aliases", True)
        ).items():
            plan.tags[tag] = planner.add_document(layout.resolve(layout_name))
    except LayoutError as exc:
        raise PushError(str(exc)) from exc
    except OSError as exc:
        raise PushError("reading layout %s failed: %s" % (params["layout"], exc)) from exc
    except InvalidReference as exc:
        # Only the platform tags (tag-platform-architecture) can outgrow a valid destination tag.
        raise PushError(
            "destination: a platform tag of %s is too long: %s; give a shorter tag or set platform_tags=false"
            % (destination, exc)
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise PushError("layout %s holds a malformed document: %s" % (params["layout"], one_line(exc))) from exc
    return plan


# ---- pushing ---------------------------------------------------------------


def _parallel(concurrency: int, function: t.Callable[[t.Any], t.Any], items: t.Sequence[t.Any]) -> list[t.Any]:
    """function over items with `concurrency` threads; the first error stops what has not started."""
    if concurrency <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


class _Pusher:
    def __init__(
        self, client: RegistryClient, plan: PushPlan, layout: OciLayout, params: t.Mapping[str, t.Any], check_mode: bool
    ):
        self.client = client
        self.plan = plan
        self.layout = layout
        self.repository = plan.destination.repository
        self.chunk_size = int(params.get("chunk_size") or 0)
        self.mount_from: list[str] = [
            source for source in (params.get("mount_from") or []) if source != self.repository
        ]
        self.check_mode = check_mode
        self.counter = ByteCounter()

    def remote_tags(self) -> dict[str, str | None]:
        def head(tag: str) -> str | None:
            found = self.client.head_manifest(self.repository, tag)
            return found["digest"] if found else None

        tags = list(self.plan.tags)
        return dict(zip(tags, _parallel(self.client.options.concurrency, head, tags)))

    def mount_source(self, digest: str, size: int) -> str | None:
        for source in self.mount_from:
            if self.client.head_blob(source, digest) == size:
                return source
        return None

    def transfer(self, item: tuple[str, int]) -> str:
        """One blob: 'skipped', 'mounted' or 'uploaded' (in check mode: what would happen)."""
        digest, size = item
        if self.client.head_blob(self.repository, digest, actions=("pull", "push")) == size:
            return "skipped"
        source = self.mount_source(digest, size)
        if self.check_mode:
            return "mounted" if source else "uploaded"
        session = None
        if source:
            session = self.client.open_upload(
                self.repository,
                mount=digest,
                mount_from=source,
                what="mounting blob %s from %s into %s/%s" % (digest, source, self.client.registry, self.repository),
            )
            if session is None:
                return "mounted"
        upload_blob(
            self.client,
            self.repository,
            digest,
            size,
            self.layout.blob_path(digest),
            self.chunk_size,
            self.counter,
            session,
        )
        return "uploaded"

    def push_blobs(self) -> BlobReport:
        # Largest first, so the big rootfs does not start last and finish alone.
        items = sorted(self.plan.blobs.items(), key=lambda item: -item[1])
        outcomes = _parallel(self.client.options.concurrency, self.transfer, items)
        report = BlobReport()
        for (_digest, size), outcome in zip(items, outcomes):
            setattr(report, outcome, getattr(report, outcome) + 1)
            if outcome == "uploaded" and self.check_mode:
                report.bytes_uploaded += size
        if not self.check_mode:
            report.bytes_uploaded = self.counter.value
        return report

    def push_documents(self, moved: t.Sequence[str]) -> None:
        """Every document by digest (children first), then the tags: a rejected
        document therefore leaves every tag where it was."""
        main = self.plan.tags[str(self.plan.destination.tag)]
        for document in self.plan.documents:
            if document is not main:
                self.put(document, document.digest)
        for tag in moved:
            self.put(self.plan.tags[tag], tag)

    def put(self, document: Document, reference: str) -> None:
        kind = "index" if document.is_index else "manifest"
        what = "pushing %s %s to %s/%s" % (kind, reference, self.client.registry, self.repository)
        self.client.put_manifest(self.repository, reference, document.data, document.media_type, what=what)


def push_image(
    params: t.Mapping[str, t.Any], check_mode: bool, on_retry: t.Callable[[str], None] | None = None
) -> dict[str, t.Any]:
    """The module's one call: plan from the layout, compare with the registry, send what differs.

    `on_retry` is told of every retried request (the module passes module.warn).
    """
    plan = plan_push(params)
    try:
        options = registry_options(params)
    except InvalidRegistryOptions as exc:
        raise PushError(str(exc)) from exc
    if params.get("chunk_size") is not None and int(params["chunk_size"]) < 0:
        raise PushError("chunk_size must be 0 (one streaming PUT per blob) or a positive number of bytes")
    destination = plan.destination
    main = plan.tags[str(destination.tag)]
    try:
        client = RegistryClient(destination.registry, options, on_retry)
        client.ping()
        pusher = _Pusher(client, plan, OciLayout(params["layout"]), params, check_mode)
        before = pusher.remote_tags()
        moved = [tag for tag, document in plan.tags.items() if before[tag] != document.digest]
        report = BlobReport(skipped=len(plan.blobs))
        if moved:
            report = pusher.push_blobs()
            if not check_mode:
                pusher.push_documents(moved)
    except RegistryError as exc:
        raise PushError(str(exc)) from exc
    return {
        "changed": bool(moved),
        "destination": str(destination),
        "digest": main.digest,
        "tags": moved,
        "blobs": report.as_dict(),
        "retries": client.retries,
        "diff": {
            "before": {tag: before[tag] for tag in moved},
            "after": {tag: plan.tags[tag].digest for tag in moved},
        },
    }
