"""The selection rules of IronCore's image consumers, as small pure functions.

Each takes the raw document a reference resolves to (parsed JSON), a
callable that gives a child manifest by digest, and the node's architecture,
and returns role -> layer digest of what that consumer would use, or raises
`Refused` with the reason it would give up. They emulate the behaviour the
consumers document, not their code:

- boot-operator: an index only when its mediaType is exactly the OCI index
  type; the FIRST entry of the architecture (os, variant and annotations
  ignored); kernel and initramfs required (ironcore or io.gardenlinux types,
  never v1alpha1), squashfs optional, rootfs never used.
- libvirt-provider / cloud-hypervisor-provider: the FIRST `linux/<arch>`
  entry; unknown layer types ignored; rootfs required; rootfs and squashfs
  both land in the disk slot and the LATER one in layer order wins.
- ceph-provider: the first `linux/<arch>` entry (architecture set); any
  layer type it does not know is an error (v1alpha1 types are known);
  rootfs required, squashfs does not count.
"""

from __future__ import annotations

import typing as t

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IRONCORE = "application/vnd.ironcore.image."
GARDENLINUX = "application/io.gardenlinux."

Document = t.Dict[str, t.Any]
Manifests = t.Callable[[str], Document]


class Refused(Exception):
    """The consumer would not use this image."""


def _first_entry(index: Document, architecture: str, require_linux: bool) -> Document:
    for entry in index.get("manifests") or []:
        platform = entry.get("platform") or {}
        if platform.get("architecture") != architecture:
            continue
        if require_linux and platform.get("os") != "linux":
            continue
        return entry
    raise Refused("no entry for %s" % architecture)


def _manifest(top: Document, manifests: Manifests, architecture: str, require_linux: bool) -> Document:
    if top.get("mediaType") == OCI_INDEX or (not require_linux and "manifests" in top):
        return manifests(_first_entry(top, architecture, require_linux)["digest"])
    return top


def boot_operator(top: Document, manifests: Manifests, architecture: str) -> dict[str, str]:
    # Anything but the exact OCI index type is read as a manifest.
    manifest = manifests(_first_entry(top, architecture, False)["digest"]) if top.get("mediaType") == OCI_INDEX else top
    types = {
        "kernel": (IRONCORE + "kernel", GARDENLINUX + "kernel"),
        "initramfs": (IRONCORE + "initramfs", GARDENLINUX + "initrd"),
        "squashfs": (IRONCORE + "squashfs", GARDENLINUX + "squashfs"),
    }
    found: dict[str, str] = {}
    for layer in manifest.get("layers") or []:
        for role, accepted in types.items():
            if layer.get("mediaType") in accepted and role not in found:
                found[role] = layer["digest"]
    missing = [role for role in ("kernel", "initramfs") if role not in found]
    if missing:
        raise Refused("boot-operator: no %s layer" % " and ".join(missing))
    return found


def vm_provider(top: Document, manifests: Manifests, architecture: str) -> dict[str, str]:
    """libvirt-provider and cloud-hypervisor-provider (provider-utils)."""
    manifest = _manifest(top, manifests, architecture, True)
    disk = None
    has_rootfs = False
    for layer in manifest.get("layers") or []:
        media_type = layer.get("mediaType")
        if media_type == IRONCORE + "rootfs":
            has_rootfs = True
            disk = layer["digest"]
        elif media_type == IRONCORE + "squashfs":
            # The bug the consumers have: a later squashfs takes the disk slot.
            disk = layer["digest"]
    if not has_rootfs:
        raise Refused("vm provider: no rootfs layer")
    return {"disk": str(disk)}


CEPH_KNOWN = {
    IRONCORE + "rootfs",
    IRONCORE + "kernel",
    IRONCORE + "initramfs",
    IRONCORE + "squashfs",
    IRONCORE + "uki",
    IRONCORE + "iso",
    IRONCORE + "rootfs.v1alpha1.rootfs",
    IRONCORE + "initramfs.v1alpha1.initramfs",
    IRONCORE + "vmlinuz.v1alpha1.vmlinuz",
    IRONCORE + "squashfs.v1alpha1.squashfs",
}


def ceph_provider(top: Document, manifests: Manifests, architecture: str) -> dict[str, str]:
    manifest = _manifest(top, manifests, architecture, True)
    rootfs = None
    for layer in manifest.get("layers") or []:
        media_type = layer.get("mediaType")
        if media_type not in CEPH_KNOWN:
            raise Refused("ceph-provider: unknown layer media type %s" % media_type)
        if media_type in (IRONCORE + "rootfs", IRONCORE + "rootfs.v1alpha1.rootfs") and rootfs is None:
            rootfs = layer["digest"]
    if rootfs is None:
        raise Refused("ceph-provider: no rootfs layer")
    return {"rootfs": rootfs}


CONSUMERS: dict[str, t.Callable[[Document, Manifests, str], dict[str, str]]] = {
    "boot-operator": boot_operator,
    "vm-provider": vm_provider,
    "ceph-provider": ceph_provider,
}
