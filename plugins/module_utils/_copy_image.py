# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""ironcore_image_copy's one call: open both sides, name what to copy, run the engine.

Each side is a layout or one repository of a registry, with its own
credentials. The names are the source's main name and, with platform_tags,
the `<tag>-<platform>[-<arch>]` names that exist at the source, mapped onto
the destination's tag the same way; the signatures and referrers of what
they reach travel with them (carry_referrers). Everything that can be
refused is refused before the first write.
"""

from __future__ import annotations

import contextlib
import os
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._bundle import BUNDLE_MEDIA_TYPE
from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._copy import (
    Attachment,
    CopyPlan,
    SignatureNames,
    copy,
    plan_copy,
)
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import check_room
from ansible_collections.ironcore.image.plugins.module_utils._mirrors import MirrorConfigError, with_mirrors
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


class CopyImageError(ImageError):
    """The copy cannot be done as asked; one line."""


@dataclass(frozen=True)
class Side:
    """One side of the copy: its reference, and whether it is a layout (else a registry)."""

    label: str
    ref: ImageReference
    layout: str | None

    def name_for(self, ref: ImageReference) -> str:
        """What the store calls the image at `ref`: the full reference in a layout, the tag or digest in a registry."""
        return str(ref) if self.layout else ref.reference

    def signature_name(self, digest: str) -> str:
        """What this side calls the `.sig` of a digest (the signer names it after the image's repository)."""
        return self.name_for(self.ref.with_tag(signature_tag(digest)))

    def reference_text(self, name: str) -> str:
        """A name as the results show it."""
        if self.layout:
            return name
        return "%s%s%s" % (self.ref.name, "@" if name.startswith("sha256:") else ":", name)


def _parse_sides(params: t.Mapping[str, t.Any]) -> tuple[Side, Side]:
    source_params, destination_params = params["source"], params["destination"]
    if not source_params.get("name"):
        raise CopyImageError("source.name is required: the image to copy, for example registry.example.com/os/dev:1.0")
    try:
        source_ref = ImageReference.parse(source_params["name"])
    except InvalidReference as exc:
        raise CopyImageError("source.name: %s" % exc) from exc
    try:
        destination_ref = ImageReference.parse(
            destination_params.get("name") or source_params["name"], default_tag=None
        )
    except InvalidReference as exc:
        raise CopyImageError("destination.name: %s" % exc) from exc
    if destination_ref.digest:
        raise CopyImageError(
            "destination.name %s names a digest; give a tag (or none to use the tag of source.name)" % destination_ref
        )
    if destination_ref.tag is None:
        if source_ref.tag is None:
            raise CopyImageError(
                "destination.name %s has no tag and source.name %s has none to lend it; give destination.name a tag"
                % (destination_ref, source_ref)
            )
        destination_ref = destination_ref.with_tag(source_ref.tag)
    source = Side("source", source_ref, source_params.get("layout"))
    destination = Side("destination", destination_ref, destination_params.get("layout"))
    for side in (source, destination):
        if not side.layout and not side.ref.registry:
            raise CopyImageError(
                "%s.name %s names no registry host; write it as host[:port]/repository[:tag], or give %s.layout"
                % (side.label, side.ref, side.label)
            )
    return source, destination


def _open_store(side: Side, params: t.Mapping[str, t.Any], on_retry: t.Callable[[str], None] | None) -> t.Any:
    if side.layout:
        if params[side.label].get("mirrors"):
            raise CopyImageError("%s.mirrors apply to a registry source, not to %s.layout" % (side.label, side.label))
        return LayoutStore(side.layout, bool(params.get("allow_shared_dest")), "%s.layout" % side.label)
    merged = dict(params[side.label], timeout=params.get("timeout"), retries=params.get("retries"))
    merged["concurrency"] = params.get("concurrency")
    try:
        options = registry_options(merged)
    except InvalidRegistryOptions as exc:
        raise CopyImageError("%s: %s" % (side.label, exc)) from exc
    store = RegistryStore(RegistryClient(side.ref.registry, options, on_retry), side.ref.repository)
    try:
        return with_mirrors(store, side.ref, dict(params[side.label], timeout=params.get("timeout")))
    except MirrorConfigError as exc:
        raise CopyImageError("%s.%s" % (side.label, exc)) from exc


def copy_names(source: Side, destination: Side, source_store: t.Any, platform_tags: bool) -> list[tuple[str, str]]:
    """(source name, destination name) pairs: the platform names the source has, children first; the main name last."""
    pairs: list[tuple[str, str]] = []
    if platform_tags and source.ref.tag and not source.ref.digest:
        # The os-images alias names too: each is copied when the source has it.
        extra = platform_refs(source.ref, PLATFORMS, ARCHITECTURES, aliases=True)
        # Per-architecture manifests, then per-platform indexes: children before parents.
        for key in sorted(extra, key=lambda key: (-key.count("/"), key)):
            name = source.name_for(extra[key])
            if source_store.current_name(name) is not None:
                pairs.append((name, destination.name_for(destination.ref.with_tag_suffix(*key.split("/")))))
    pairs.append((source.name_for(source.ref), destination.name_for(destination.ref)))
    return pairs


def bytes_to_store(plan: CopyPlan, store: LayoutStore) -> int:
    """What a copy into the layout `store` writes: every blob and document it lacks, less what kept partials hold.

    The signatures and referrers that travel with the image count too; a
    copy that turns out to move no name writes less, never more.
    """
    wanted: dict[str, int] = {}
    for graph in [plan.graph, *(attachment.graph for attachment in plan.attachments)]:
        wanted.update(graph.blobs)
        wanted.update((document.digest, len(document.data)) for document in graph.documents)
    needed = 0
    for digest, size in wanted.items():
        if store.has_blob(digest, size):
            continue
        try:
            kept = os.lstat(store.partial_path(digest)).st_size
        except OSError:
            kept = 0
        needed += max(size - kept, 0)
    return needed


def copy_image(
    params: t.Mapping[str, t.Any], check_mode: bool, on_retry: t.Callable[[str], None] | None = None
) -> dict[str, t.Any]:
    """The module's one call."""
    source, destination = _parse_sides(params)
    try:
        options = registry_options(params)
    except InvalidRegistryOptions as exc:
        raise CopyImageError(str(exc)) from exc
    source_store = _open_store(source, params, on_retry)
    destination_store = _open_store(destination, params, on_retry)
    if destination.layout:
        destination_store.check_writable()
        destination_store.refuse_shared()
    if source.layout:
        source_store.require()
    try:
        pairs = copy_names(source, destination, source_store, params.get("platform_tags", True))
    except InvalidReference as exc:
        raise CopyImageError(
            "destination.name: a platform tag of %s is too long: %s; give a shorter tag or set platform_tags=false"
            % (destination.ref, exc)
        ) from exc
    carry = (
        SignatureNames(source=source.signature_name, destination=destination.signature_name)
        if params.get("carry_referrers", True) is not False
        else None
    )
    plan = plan_copy(source_store, pairs, carry)
    if params.get("resign_key"):
        # Re-signed at the destination: the source's signatures (made for its repository) stay behind.
        plan.attachments = [attachment for attachment in plan.attachments if not is_signature(attachment)]
    if destination.layout:
        # Before the layout (or its lock file) is created: a full disk is found before the first byte.
        check_room(
            destination.layout,
            bytes_to_store(plan, destination_store),
            "the copy into destination.layout %s" % destination.layout,
            "or choose another destination.layout",
        )
    with contextlib.ExitStack() as held:
        progress = held.enter_context(recording(None if check_mode else params.get("progress_file")))
        # A layout's blob lock from the copy's first question about what it has (its names and signatures too)
        # until its names are recorded.
        held.enter_context(destination_store.writing(check_mode))
        result = copy(
            source_store,
            destination_store,
            plan,
            concurrency=options.concurrency,
            retries=options.retries,
            check_mode=check_mode,
            overwrite=params.get("overwrite", True) is not False,
            progress=progress,
        )
    resigned = _resign(params, destination, destination_store, plan, result.moved, check_mode)
    return {
        "changed": result.changed or bool(resigned and resigned["signed"]),
        "resigned": resigned,
        "digest": result.digest,
        "names": [destination.reference_text(name) for name in result.moved],
        "blobs": result.blobs.as_dict(),
        "signatures": len(result.signatures),
        "referrers": len(result.referrers),
        "retries": source_store.retries + destination_store.retries,
        **source_store.mirror_report(),
        **({"referrers_left_out": plan.left_out} if params["source"].get("mirrors") else {}),
        "elapsed": round(result.elapsed, 3),
        "bytes_per_second": result.bytes_per_second,
        "diff": {
            "before": {destination.reference_text(name): digest for name, digest in result.before.items()},
            "after": {destination.reference_text(name): digest for name, digest in result.after.items()},
        },
    }


def is_signature(attachment: Attachment) -> bool:
    """A `.sig` or a Sigstore bundle referrer: what resign_key replaces."""
    if attachment.signature_names is not None:
        return True
    return attachment.referrer is not None and attachment.referrer.artifact_type == BUNDLE_MEDIA_TYPE


def _resign(
    params: t.Mapping[str, t.Any],
    destination: Side,
    store: t.Any,
    plan: CopyPlan,
    moved: t.Sequence[str],
    check_mode: bool,
) -> dict[str, t.Any] | None:
    """With resign_key, sign the copy under the destination's name (ironcore_image_sign's routine); else None.

    In check mode a destination that does not hold the image yet cannot be
    read: every document the copy would bring is reported as to be signed.
    """
    if not params.get("resign_key"):
        return None
    from ansible_collections.ironcore.image.plugins.module_utils._signatures import sign_image

    try:
        if check_mode and moved:
            # Nothing is at the destination to read back, but the key is still opened: a wrong path or
            # passphrase fails in check mode as it would for real, and the result names the signer.
            from ansible_collections.ironcore.image.plugins.module_utils._sign import fingerprint, load_private_key

            key = load_private_key(params["resign_key"], params.get("resign_key_passphrase"))
            digests = [document.digest for document in plan.graph.documents]
            return {"fingerprint": fingerprint(key), "signed": digests}
        signed = sign_image(
            store, str(destination.ref), params["resign_key"], params.get("resign_key_passphrase"), check_mode
        )
    except ImageError as exc:
        raise CopyImageError("re-signing %s at the destination failed: %s" % (destination.ref, exc)) from exc
    return {"fingerprint": signed.fingerprint, "signed": signed.signed}
