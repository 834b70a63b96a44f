# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Which manifest and which layers a node of a platform and architecture needs.

Pure functions over parsed documents: no I/O, so every rule is unit-tested.
An index entry is first narrowed to the node's ``linux/<architecture>``; then
the platform each entry (or a plain manifest) serves is decided by the first
of these that says anything (``RULES``, in order):

1. ``platform_variant``: ``platform.variant`` names a platform (this
   collection's combined index);
2. ``descriptor_annotation``: the index entry's ``variant`` annotation;
3. ``manifest_annotation``: the manifest's ``variant`` annotation (the
   published spec) or this collection's ``io.ironcore.image.platform``;
4. ``tag_suffix``: the tag the image was asked for ends in ``-baremetal``,
   ``-metal``, ``-virtualization`` or ``-kvm`` (optionally ``-<arch>``): the
   os-images per-platform tags;
5. ``layers``: a disk (rootfs) serves virtualization; kernel and initramfs
   serve baremetal; one manifest may serve both.

The first entry that serves the platform wins. Manifests are only looked
into (rules 3 and 5) when rules 1 and 2 say nothing.
"""

from __future__ import annotations

import platform as host_platform
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._document import DocumentError
from ansible_collections.ironcore.image.plugins.module_utils._document import check_descriptor as one_descriptor_check
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    ARCHITECTURE_ANNOTATION,
    PLATFORM_ANNOTATION,
    PLATFORMS,
    PROFILES,
    VARIANT_ANNOTATION,
    architecture_of_machine,
    architecture_of_tag,
    canonical_architecture,
    canonical_platform,
    document_kind,
    is_current_media_type,
    is_packed,
    layer_role,
    platform_of_tag,
)

Document = t.Dict[str, t.Any]
ManifestLoader = t.Callable[[t.Mapping[str, t.Any]], Document]

RULES: tuple[str, ...] = ("platform_variant", "descriptor_annotation", "manifest_annotation", "tag_suffix", "layers")


class SelectionError(ImageError, ValueError):
    """The image has nothing for the node, or is not an image at all."""


@dataclass(frozen=True)
class SelectedLayer:
    """A layer to deliver: its role names the file, `packed` says unpack it."""

    role: str
    media_type: str
    digest: str
    size: int
    packed: bool

    @classmethod
    def of(cls, role: str, descriptor: t.Mapping[str, t.Any]) -> SelectedLayer:
        return cls(
            role,
            str(descriptor["mediaType"]),
            str(descriptor["digest"]),
            int(descriptor["size"]),
            is_packed(descriptor),
        )

    def summary(self) -> dict[str, t.Any]:
        return {
            "role": self.role,
            "media_type": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "packed": self.packed,
        }


def node_architecture(value: str, machine: str | None = None) -> str:
    """`auto` means the architecture of the machine this runs on."""
    if value != "auto":
        # x86_64 and aarch64 are accepted for amd64 and arm64; everything after this speaks OCI.
        return canonical_architecture(value) or value
    machine = machine or host_platform.machine()
    architecture = architecture_of_machine(machine)
    if architecture is None:
        raise SelectionError(
            "architecture: auto cannot map machine type %s to amd64 or arm64; set architecture explicitly" % machine
        )
    return architecture


def is_index(document: t.Mapping[str, t.Any], media_type: str | None = None) -> bool:
    """Index or manifest (`_model.document_kind`); a document that is neither is not an image."""
    kind = document_kind(document, media_type)
    if kind is None:
        declared = document.get("mediaType") or media_type
        raise SelectionError(
            "document of media type %s is neither an image index nor an image manifest" % (declared or "(none)")
        )
    return kind == "index"


def index_entries(index: t.Mapping[str, t.Any]) -> list[Document]:
    """The entries of an image index that are JSON objects; no manifests list at all is an error."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise SelectionError("image index has no manifests list")
    return [entry for entry in entries if isinstance(entry, dict)]


def platform_of(entry: t.Mapping[str, t.Any]) -> Document:
    platform = entry.get("platform")
    return platform if isinstance(platform, dict) else {}


def entry_label(entry: t.Mapping[str, t.Any]) -> str:
    """`os/arch[/variant]` of an index entry, for messages and results."""
    platform = platform_of(entry)
    parts = [str(platform.get("os") or "?"), str(platform.get("architecture") or "?")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def available(index: t.Mapping[str, t.Any]) -> str:
    labels = [entry_label(entry) for entry in index_entries(index)]
    return ", ".join(labels) if labels else "no manifests at all"


@dataclass(frozen=True)
class Decision:
    """The platforms an entry or manifest serves and the rule (one of RULES) that said so."""

    platforms: tuple[str, ...]
    rule: str

    def serves(self, platform: str) -> bool:
        return platform in self.platforms

    def describe(self) -> str:
        return "%s (by %s)" % (" and ".join(self.platforms) or "nothing", self.rule.replace("_", " "))


def _annotated_platform(annotations: t.Any, *keys: str) -> str | None:
    if not isinstance(annotations, dict):
        return None
    for key in keys:
        platform = canonical_platform(annotations.get(key))
        if platform:
            return platform
    return None


def decide_without_manifest(entry: t.Mapping[str, t.Any]) -> Decision | None:
    """Rules 1 and 2: what the index entry itself says, if anything."""
    platform = canonical_platform(platform_of(entry).get("variant"))
    if platform:
        return Decision((platform,), "platform_variant")
    platform = _annotated_platform(entry.get("annotations"), VARIANT_ANNOTATION)
    if platform:
        return Decision((platform,), "descriptor_annotation")
    return None


def decide_platform(
    entry: t.Mapping[str, t.Any] | None, manifest: t.Mapping[str, t.Any], tag: str | None = None
) -> Decision:
    """All five rules for an index entry (None for a plain manifest) and its manifest."""
    decided = decide_without_manifest(entry) if entry is not None else None
    if decided:
        return decided
    platform = _annotated_platform(manifest.get("annotations"), VARIANT_ANNOTATION, PLATFORM_ANNOTATION)
    if platform:
        return Decision((platform,), "manifest_annotation")
    platform = platform_of_tag(tag)
    if platform:
        return Decision((platform,), "tag_suffix")
    return Decision(tuple(platforms_served(manifest_layers(manifest))), "layers")


def select_entry(
    index: t.Mapping[str, t.Any],
    platform: str,
    architecture: str,
    tag: str | None = None,
    load: ManifestLoader | None = None,
) -> tuple[Document, Decision]:
    """The first linux entry of the architecture that serves the platform, and why.

    `load` gives an entry's manifest; it is called only for entries whose own
    descriptor does not decide (rules 1 and 2). Without it such an entry is
    decided by the tag, and failing that taken as serving every platform.
    """
    platform = canonical_platform(platform) or platform
    seen = []
    for entry in index_entries(index):
        wanted = platform_of(entry)
        if wanted.get("os") != "linux" or wanted.get("architecture") != architecture:
            continue
        check_descriptor(entry, "index entry %s" % entry_label(entry))
        decision = decide_without_manifest(entry)
        if decision is None and load is not None:
            decision = decide_platform(entry, load(entry), tag)
        elif decision is None:
            by_tag = platform_of_tag(tag)
            decision = Decision((by_tag,), "tag_suffix") if by_tag else Decision(PLATFORMS, "layers")
        if decision.serves(platform):
            return entry, decision
        seen.append("%s: %s" % (entry_label(entry), decision.describe()))
    if seen:
        raise SelectionError(
            "the image has nothing for %s on linux/%s; its linux/%s entries serve %s"
            % (platform, architecture, architecture, "; ".join(seen))
        )
    raise SelectionError("the image has no linux/%s manifest; it has: %s" % (architecture, available(index)))


def check_manifest_serves(
    manifest: t.Mapping[str, t.Any], platform: str, tag: str | None = None, architecture: str | None = None
) -> Decision:
    """A plain manifest (no index) must serve the platform, decided by rules 3 to 5, and
    must not say (by its `architecture` annotation or its tag) it is for another architecture."""
    platform = canonical_platform(platform) or platform
    annotations = manifest.get("annotations")
    declared = annotations.get(ARCHITECTURE_ANNOTATION) if isinstance(annotations, dict) else None
    declared = declared or architecture_of_tag(tag)
    if architecture and declared and declared != architecture:
        raise SelectionError(
            "the image has nothing for linux/%s: it is a single manifest for linux/%s" % (architecture, declared)
        )
    decision = decide_platform(None, manifest, tag)
    if not decision.serves(platform):
        raise SelectionError(
            "the image has nothing for %s: it is a single manifest that serves %s; it has: %s"
            % (
                platform,
                decision.describe(),
                ", ".join(layer.role for layer in manifest_layers(manifest)) or "no layers",
            )
        )
    return decision


def check_descriptor(descriptor: t.Mapping[str, t.Any], what: str) -> None:
    """Refuse a descriptor without a string digest and a non-negative integer size, before anyone reads them."""
    try:
        one_descriptor_check(descriptor, what)
    except DocumentError as exc:
        raise SelectionError("%s lacks a valid digest and size" % what) from exc


def manifest_layers(manifest: t.Mapping[str, t.Any]) -> list[SelectedLayer]:
    """Every IronCore layer of a manifest, in manifest order; other layers are skipped."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise SelectionError("image manifest has no layers list")
    found: list[SelectedLayer] = []
    current: dict[str, bool] = {}
    for position, descriptor in enumerate(layers):
        if not isinstance(descriptor, dict):
            continue
        role = layer_role(descriptor)
        if role is None:
            continue
        check_descriptor(descriptor, "layer %d (%s)" % (position, role))
        preferred = is_current_media_type(descriptor)
        if role in current:
            # A current media type wins over a legacy or foreign one of the same role.
            if current[role] == preferred:
                raise SelectionError("the manifest has more than one %s layer; cannot tell which to use" % role)
            if not preferred:
                continue
            found = [layer for layer in found if layer.role != role]
        current[role] = preferred
        found.append(SelectedLayer.of(role, descriptor))
    return found


def platforms_served(layers: t.Sequence[SelectedLayer]) -> list[str]:
    """The platforms whose required layers are all present."""
    roles = {layer.role for layer in layers}
    return [name for name in PLATFORMS if set(PROFILES[name].required) <= roles]


def select_layers(
    manifest: t.Mapping[str, t.Any],
    platform: str,
    roles: t.Sequence[str] | None = None,
) -> list[SelectedLayer]:
    """The layers to deliver, in manifest order.

    `roles` given: exactly those, each must be there. Otherwise every layer
    the platform takes (a baremetal node gets rootfs, squashfs, uki and iso
    too when the manifest has them), with the required ones present.
    """
    layers = manifest_layers(manifest)
    have = [layer.role for layer in layers]
    profile = PROFILES[canonical_platform(platform) or platform]
    if roles:
        missing = [role for role in roles if role not in have]
        if missing:
            raise SelectionError(
                "the manifest has no %s layer (it has: %s)" % (" and ".join(missing), ", ".join(have) or "none")
            )
        return [layer for layer in layers if layer.role in roles]
    missing = [role for role in profile.required if role not in have]
    if missing:
        raise SelectionError(
            "the manifest has no %s layer, which platform %s needs (it has: %s)"
            % (" and ".join(missing), profile.name, ", ".join(have) or "none")
        )
    return [layer for layer in layers if layer.role in profile.roles]


def normalise_config(config: Document | None) -> Document | None:
    """The config as read, with `commandLine` trimmed (older images end it with a newline)."""
    if config is None or not isinstance(config.get("commandLine"), str):
        return config
    return dict(config, commandLine=config["commandLine"].strip())
