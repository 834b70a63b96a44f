# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Which manifest and which layers a node of a platform and architecture needs.

Pure functions over parsed documents: no I/O, so every rule is unit-tested.
Three image shapes are understood, tried in this order:

1. this collection's combined index, whose entries carry ``platform.variant``
   ``baremetal``/``virtualization``: the entry of that variant is taken and
   its layers used as they are;
2. an index without such variants (upstream ``ironcore-image``, or a
   per-platform index): the linux entry of the architecture is taken, then
   the layers the platform needs are picked from it;
3. a plain manifest: used as is, its layers picked like in 2.
"""

from __future__ import annotations

import json
import platform as host_platform
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._model import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    PLATFORMS,
    PROFILES,
    architecture_of_machine,
    is_packed,
    layer_role,
)

Document = t.Dict[str, t.Any]


class SelectionError(ValueError):
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
        return value
    machine = machine or host_platform.machine()
    architecture = architecture_of_machine(machine)
    if architecture is None:
        raise SelectionError(
            "architecture: auto cannot map machine type %s to amd64 or arm64; set architecture explicitly" % machine
        )
    return architecture


def parse_document(data: bytes, what: str) -> Document:
    """A JSON object from manifest or index bytes, or a one-line reason why not."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise SelectionError("%s is not valid JSON: %s" % (what, exc)) from None
    except RecursionError:
        raise SelectionError("%s is nested too deeply to be a manifest or index" % what) from None
    if not isinstance(document, dict):
        raise SelectionError("%s is not a JSON object" % what)
    return document


def is_index(document: t.Mapping[str, t.Any], media_type: str | None = None) -> bool:
    """Index or manifest, by media type first and by shape when none is given."""
    declared = document.get("mediaType") or media_type
    if declared in INDEX_MEDIA_TYPES:
        return True
    if declared in MANIFEST_MEDIA_TYPES:
        return False
    if isinstance(document.get("manifests"), list):
        return True
    if isinstance(document.get("layers"), list):
        return False
    raise SelectionError(
        "document of media type %s is neither an image index nor an image manifest" % (declared or "(none)")
    )


def _entries(index: t.Mapping[str, t.Any]) -> list[Document]:
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise SelectionError("image index has no manifests list")
    return [entry for entry in entries if isinstance(entry, dict)]


def _platform_of(entry: t.Mapping[str, t.Any]) -> Document:
    platform = entry.get("platform")
    return platform if isinstance(platform, dict) else {}


def has_platform_variants(index: t.Mapping[str, t.Any]) -> bool:
    """True for this collection's combined index (rule 1)."""
    return any(_platform_of(entry).get("variant") in PLATFORMS for entry in _entries(index))


def entry_label(entry: t.Mapping[str, t.Any]) -> str:
    """`os/arch[/variant]` of an index entry, for messages and results."""
    platform = _platform_of(entry)
    parts = [str(platform.get("os") or "?"), str(platform.get("architecture") or "?")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def available(index: t.Mapping[str, t.Any]) -> str:
    labels = [entry_label(entry) for entry in _entries(index)]
    return ", ".join(labels) if labels else "no manifests at all"


def select_entry(index: t.Mapping[str, t.Any], platform: str, architecture: str) -> tuple[Document, bool]:
    """The index entry for the node; the flag tells whether it matched by variant (rule 1)."""
    by_variant = has_platform_variants(index)
    for entry in _entries(index):
        wanted = _platform_of(entry)
        if wanted.get("os") != "linux" or wanted.get("architecture") != architecture:
            continue
        if by_variant and wanted.get("variant") != platform:
            continue
        _check_descriptor(entry, "index entry %s" % entry_label(entry))
        return entry, by_variant
    asked = "linux/%s/%s" % (architecture, platform) if by_variant else "linux/%s" % architecture
    raise SelectionError("the image has no %s manifest; it has: %s" % (asked, available(index)))


def _check_descriptor(descriptor: t.Mapping[str, t.Any], what: str) -> None:
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SelectionError("%s lacks a valid digest and size" % what)


def manifest_layers(manifest: t.Mapping[str, t.Any]) -> list[SelectedLayer]:
    """Every IronCore layer of a manifest, in manifest order; other layers are skipped."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise SelectionError("image manifest has no layers list")
    found: list[SelectedLayer] = []
    for position, descriptor in enumerate(layers):
        if not isinstance(descriptor, dict):
            continue
        role = layer_role(descriptor)
        if role is None:
            continue
        _check_descriptor(descriptor, "layer %d (%s)" % (position, role))
        if any(layer.role == role for layer in found):
            raise SelectionError("the manifest has more than one %s layer; cannot tell which to use" % role)
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
    by_variant: bool = False,
) -> list[SelectedLayer]:
    """The layers to deliver, in manifest order.

    `roles` given: exactly those, each must be there. Otherwise the layers
    the platform needs (every layer when the manifest was chosen by variant,
    as it was built for that platform), with the required ones present.
    """
    layers = manifest_layers(manifest)
    have = [layer.role for layer in layers]
    profile = PROFILES[platform]
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
            % (" and ".join(missing), platform, ", ".join(have) or "none")
        )
    if by_variant:
        return layers
    return [layer for layer in layers if layer.role in profile.roles]
