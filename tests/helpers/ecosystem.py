"""Images in the shapes the IronCore ecosystem publishes, written byte for byte into an OCI layout.

Each writer builds its documents as compact JSON in the field order the
producing tool uses (not this collection's canonical form), so the digests
are those of the shape itself; `skopeo copy --all --preserve-digests` then
pushes them unchanged. Layer contents are small and distinct per shape,
architecture and role, so a test can tell every delivered file apart.

- `write_os_images`: ironcore-dev/os-images, `V-kvm`/`V-metal` indexes
  (entries `{architecture, os}` only) and `V-kvm-<arch>`/`V-metal-<arch>`
  manifests; metal is initramfs, kernel, squashfs, uki with config `{}`.
- `write_spec_image`: the published OCI-SPEC: manifests annotated `variant`
  `virtualization` (disk `disk.img` plus kernel and initramfs) or `metal`,
  two entries per architecture that only their manifests (or, for arm64,
  their descriptor annotations) tell apart.
- `write_legacy_image`: an older single v1alpha1 manifest serving both
  platforms, config with extra keys and a newline-terminated command line.
- `write_gardenlinux_image`: Garden Linux's PXE index, descriptors annotated
  `cname`/`architecture`, layers `application/io.gardenlinux.*`.
"""

from __future__ import annotations

import hashlib
import json
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
IRONCORE = "application/vnd.ironcore.image."
CONFIG = IRONCORE + "config.v1+json"
LEGACY_CONFIG = IRONCORE + "config.v1alpha1+json"
DISK_IMG = IRONCORE + "disk.img"
GARDENLINUX = "application/io.gardenlinux."
# A layer type no reader knows; every reader must skip it.
UNKNOWN = "application/vnd.example.signature"
TITLE = "org.opencontainers.image.title"
ARCHS = ("amd64", "arm64")


def payload(shape: str, arch: str, role: str, size: int = 1500) -> bytes:
    seed = ("%s %s %s|" % (shape, arch, role)).encode()
    return (seed * (size // len(seed) + 1))[:size]


def document(value: t.Mapping[str, t.Any]) -> bytes:
    """Compact JSON in the order given, like Go's encoding/json of a struct."""
    return json.dumps(value, separators=(",", ":")).encode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: t.Any) -> dict[str, t.Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


@dataclass
class Shape:
    """What a writer recorded: every name, and the bytes of every file a node may get."""

    names: dict[str, str] = field(default_factory=dict)
    # (arch, role) -> bytes of the file a node gets for that layer.
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    # digest -> exact document bytes, for tests that compare what a registry serves.
    documents: dict[str, bytes] = field(default_factory=dict)


class _Writer:
    def __init__(self, layout_path: str, shape: Shape):
        self.layout = OciLayout(layout_path)
        self.layout.ensure()
        self.shape = shape

    def blob(self, data: bytes) -> bytes:
        self.layout.put_bytes(data)
        return data

    def layer(self, media_type: str, arch: str, role: str, shape: str, **extra: t.Any) -> dict[str, t.Any]:
        data = self.blob(payload(shape, arch, role))
        self.shape.files[(arch, role)] = data
        return descriptor(media_type, data, **extra)

    def manifest(
        self,
        config_type: str,
        config: bytes,
        layers: list[dict[str, t.Any]],
        annotations: t.Mapping[str, str] | None = None,
    ) -> bytes:
        value: dict[str, t.Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config_type, self.blob(config)),
            "layers": layers,
        }
        if annotations:
            value["annotations"] = dict(annotations)
        return self.store(document(value))

    def index(self, entries: list[dict[str, t.Any]]) -> bytes:
        return self.store(document({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))

    def store(self, data: bytes) -> bytes:
        self.layout.put_bytes(data)
        self.shape.documents[digest_of(data)] = data
        return data

    def record(self, name: str, data: bytes, media_type: str) -> None:
        with self.layout.locked():
            self.layout.set_refs({name: descriptor(media_type, data)})
        self.shape.names[name] = digest_of(data)


def entry(manifest: bytes, arch: str, **extra: t.Any) -> dict[str, t.Any]:
    return descriptor(OCI_MANIFEST, manifest, platform={"architecture": arch, "os": "linux"}, **extra)


def write_os_images(layout_path: str, repository: str, version: str) -> dict[str, Shape]:
    """`kvm` and `metal` as os-images publishes them; one Shape per platform word."""
    shapes = {}
    for kind in ("kvm", "metal"):
        shape = Shape()
        writer = _Writer(layout_path, shape)
        entries = []
        for arch in ARCHS:
            if kind == "kvm":
                config = document({"commandLine": "console=ttyS0 root=/dev/vda1"})
                layers = [writer.layer(IRONCORE + "rootfs", arch, "rootfs", "osimg-kvm")]
            else:
                config = b"{}"
                layers = [
                    writer.layer(IRONCORE + role, arch, role, "osimg-metal")
                    for role in ("initramfs", "kernel", "squashfs", "uki")
                ]
            manifest = writer.manifest(CONFIG, config, layers)
            writer.record("%s:%s-%s-%s" % (repository, version, kind, arch), manifest, OCI_MANIFEST)
            entries.append(entry(manifest, arch))
        writer.record("%s:%s-%s" % (repository, version, kind), writer.index(entries), OCI_INDEX)
        shapes[kind] = shape
    return shapes


def write_spec_image(layout_path: str, name: str) -> Shape:
    """OCI-SPEC shape: per architecture a virtualization and a metal manifest, told apart only by annotations.

    amd64 lists virtualization first and says nothing on its index entries;
    arm64 lists metal first and carries the spec's `variant` on its descriptors too.
    """
    shape = Shape()
    writer = _Writer(layout_path, shape)
    entries = []
    for arch in ARCHS:
        config = document({"commandLine": "console=ttyS0"})
        virtualization = writer.manifest(
            CONFIG,
            config,
            [
                writer.layer(DISK_IMG, arch, "rootfs", "spec-vm"),
                writer.layer(IRONCORE + "kernel", arch, "vm-kernel", "spec-vm"),
                writer.layer(IRONCORE + "initramfs", arch, "vm-initramfs", "spec-vm"),
            ],
            {"variant": "virtualization", "architecture": arch, TITLE: "spec-virtualization-" + arch},
        )
        metal = writer.manifest(
            CONFIG,
            config,
            [
                writer.layer(IRONCORE + role, arch, role, "spec-metal")
                for role in ("kernel", "initramfs", "squashfs", "uki", "iso")
            ]
            + [writer.layer(UNKNOWN, arch, "signature", "spec-metal")],
            {"variant": "metal", "architecture": arch, TITLE: "spec-metal-" + arch},
        )
        if arch == "amd64":
            entries += [entry(virtualization, arch), entry(metal, arch)]
        else:
            entries += [
                entry(metal, arch, annotations={"variant": "metal"}),
                entry(virtualization, arch, annotations={"variant": "virtualization"}),
            ]
    writer.record(name, writer.index(entries), OCI_INDEX)
    return shape


LEGACY_COMMAND_LINE = "console=ttyS0 root=LABEL=ROOT\n"


def write_legacy_image(layout_path: str, name: str) -> Shape:
    """One v1alpha1 manifest, no index: rootfs, squashfs, initramfs, vmlinuz for both platforms."""
    shape = Shape()
    writer = _Writer(layout_path, shape)
    arch = "amd64"
    config = document({"commandLine": LEGACY_COMMAND_LINE, "os-release": "ID=gardenlinux\n", "arch": arch})
    layers = [
        writer.layer(IRONCORE + "rootfs.v1alpha1.rootfs", arch, "rootfs", "legacy"),
        writer.layer(IRONCORE + "squashfs.v1alpha1.squashfs", arch, "squashfs", "legacy"),
        writer.layer(IRONCORE + "initramfs.v1alpha1.initramfs", arch, "initramfs", "legacy"),
        writer.layer(IRONCORE + "vmlinuz.v1alpha1.vmlinuz", arch, "kernel", "legacy"),
    ]
    writer.record(name, writer.manifest(LEGACY_CONFIG, config, layers), OCI_MANIFEST)
    return shape


def write_gardenlinux_image(layout_path: str, name: str, version: str = "1592.1") -> Shape:
    """Garden Linux's PXE index: cname/architecture descriptor annotations, io.gardenlinux layers."""
    shape = Shape()
    writer = _Writer(layout_path, shape)
    entries = []
    for arch in ARCHS:
        layers = [
            writer.layer(GARDENLINUX + "kernel", arch, "kernel", "gl"),
            writer.layer(GARDENLINUX + "initrd", arch, "initramfs", "gl"),
            writer.layer(GARDENLINUX + "squashfs", arch, "squashfs", "gl"),
        ]
        manifest = writer.manifest(OCI_EMPTY, b"{}", layers)
        annotations = {"cname": "metal_pxe-%s-%s" % (arch, version), "architecture": arch}
        entries.append(entry(manifest, arch, annotations=annotations))
    writer.record(name, writer.index(entries), OCI_INDEX)
    return shape
