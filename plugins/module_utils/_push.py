# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Push an image recorded in an OCI layout to a registry: a copy from the layout to the registry.

What moves, in which order, and what is skipped or mounted is the copy
engine's (`_copy.py`); this file turns the module's options into the names to
copy (the main tag and the platform tags the build recorded), where the
layout keeps the image's signatures, and the repositories to mount from, and
the engine's counts into the push results.
"""

from __future__ import annotations

import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._copy import CopyPlan, SignatureNames, copy, plan_copy
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURES,
    PLATFORMS,
    ImageReference,
    InvalidReference,
    platform_refs,
)
from ansible_collections.ironcore.image.plugins.module_utils._progress import recording
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import (
    InvalidRegistryOptions,
    registry_options,
)
from ansible_collections.ironcore.image.plugins.module_utils._sign import signature_tag
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore, RegistryStore


class PushError(ImageError):
    """The push cannot be done as asked, or the registry refused it; one-line message."""


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


def plan_push(params: t.Mapping[str, t.Any]) -> tuple[ImageReference, CopyPlan]:
    """Read everything to send from the layout; fails before any network traffic."""
    name, destination = _parse_references(params)
    layout = OciLayout(params["layout"])
    try:
        layout.require()
        tags = _tag_names(
            name, destination, layout, params.get("platform_tags", True), params.get("platform_tag_aliases", True)
        )
        # The layout records `.sig` names as full references of the image's repository (as ironcore_image_sign does).
        carry = (
            SignatureNames(source=lambda digest: str(name.with_tag(signature_tag(digest))), destination=signature_tag)
            if params.get("carry_referrers", True) is not False
            else None
        )
        pairs = [(layout_name, tag) for tag, layout_name in tags.items()]
        plan = plan_copy(LayoutStore(params["layout"]), pairs, carry)
    except InvalidReference as exc:
        # Only the platform tags (tag-platform-architecture) can outgrow a valid destination tag.
        # (Before ImageError, which it is one of.)
        raise PushError(
            "destination: a platform tag of %s is too long: %s; give a shorter tag or set platform_tags=false"
            % (destination, exc)
        ) from exc
    except ImageError as exc:
        raise PushError(str(exc)) from exc
    except OSError as exc:
        raise PushError("reading layout %s failed: %s" % (params["layout"], exc)) from exc
    return destination, plan


def mount_sources(name: ImageReference, destination: ImageReference, mount_from: t.Sequence[str]) -> list[str]:
    """Where to mount from: the repository `name` points at when it is on the destination registry, then mount_from."""
    sources = [name.repository] if name.registry == destination.registry else []
    return [*sources, *(source for source in mount_from if source not in sources)]


# ---- pushing ---------------------------------------------------------------


def push_image(
    params: t.Mapping[str, t.Any], check_mode: bool, on_retry: t.Callable[[str], None] | None = None
) -> dict[str, t.Any]:
    """The module's one call: plan from the layout, compare with the registry, send what differs.

    `on_retry` is told of every retried request (the module passes module.warn).
    """
    destination, plan = plan_push(params)
    name = ImageReference.parse(params["name"])
    try:
        options = registry_options(params)
    except InvalidRegistryOptions as exc:
        raise PushError(str(exc)) from exc
    if params.get("chunk_size") is not None and int(params["chunk_size"]) < 0:
        raise PushError("chunk_size must be 0 (one streaming PUT per blob) or a positive number of bytes")
    try:
        with recording(None if check_mode else params.get("progress_file")) as progress:
            client = RegistryClient(destination.registry, options, on_retry)
            client.ping()
            result = copy(
                LayoutStore(params["layout"]),
                RegistryStore(client, destination.repository, int(params.get("chunk_size") or 0)),
                plan,
                concurrency=options.concurrency,
                retries=options.retries,
                check_mode=check_mode,
                overwrite=params.get("overwrite", True) is not False,
                mount_from=mount_sources(name, destination, params.get("mount_from") or []),
                progress=progress,
            )
    except ImageError as exc:
        raise PushError(str(exc)) from exc
    return {
        "changed": result.changed,
        "destination": str(destination),
        "digest": result.digest,
        "tags": result.moved,
        "blobs": {
            "uploaded": result.blobs.copied,
            "bytes_uploaded": result.blobs.bytes,
            "skipped": result.blobs.skipped,
            "mounted": result.blobs.mounted,
        },
        "signatures": len(result.signatures),
        "referrers": len(result.referrers),
        "retries": client.retries,
        "elapsed": round(result.elapsed, 3),
        "bytes_per_second": result.bytes_per_second,
        "diff": {"before": result.before, "after": result.after},
    }
