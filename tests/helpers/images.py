"""Images the tests write themselves, in the shapes other tools produce.

Upstream `ironcore-image` writes an index without `platform.variant`, one
manifest per architecture with raw layers in the order rootfs, initramfs,
kernel (then squashfs, uki, iso), no annotations on manifests, and the
config `{"commandLine": ...}`. Older releases used the v1alpha1 media types.
These helpers write exactly that into an OCI layout, from which
`skopeo copy --all --preserve-digests` can push it.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
import typing as t
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json, descriptor_for
from ansible_collections.ironcore.image.plugins.module_utils._model import (
    CONFIG_MEDIA_TYPE,
    LEGACY_CONFIG_MEDIA_TYPE,
    OCI_INDEX,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
    TITLE_ANNOTATION,
)

PREFIX = "application/vnd.ironcore.image."
UPSTREAM_ORDER = ("rootfs", "initramfs", "kernel", "squashfs", "uki", "iso")
LEGACY_TYPES = {
    "rootfs": PREFIX + "rootfs.v1alpha1.rootfs",
    "initramfs": PREFIX + "initramfs.v1alpha1.initramfs",
    "kernel": PREFIX + "vmlinuz.v1alpha1.vmlinuz",
    "squashfs": PREFIX + "squashfs.v1alpha1.squashfs",
}


def content(arch: str, role: str, size: int = 3000, tag: str = "") -> bytes:
    """Distinct, recognisable bytes per architecture and role."""
    seed = ("%s %s %s|" % (tag, arch, role)).encode()
    return (seed * (size // len(seed) + 1))[:size]


def packed(name: str, data: bytes) -> bytes:
    """A single-file tar+gzip, like `layer_format: tar+gzip` or other OCI tools write."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass
class WrittenImage:
    """What a helper wrote: digests of the index and per-architecture manifests, file contents."""

    name: str
    digest: str
    manifests: dict[str, str] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[tuple[str, str], str] = field(default_factory=dict)


def _record(layout: OciLayout, name: str, data: bytes, media_type: str) -> str:
    layout.put_bytes(data)
    desc = descriptor_for(media_type, data)
    with layout.locked():
        layout.set_refs({name: desc})
    return desc["digest"]


def write_upstream_image(
    layout_path: str,
    name: str,
    architectures: t.Sequence[str] = ("amd64", "arm64"),
    roles: t.Sequence[str] = ("rootfs", "initramfs", "kernel"),
    legacy: bool = False,
    cmdline: str | None = "console=ttyS0",
    size: int = 3000,
    tag: str = "",
    index: bool = True,
    layer_format: str = "raw",
) -> WrittenImage:
    """An image as upstream ironcore-image builds it (index without variants, one manifest per architecture)."""
    layout = OciLayout(layout_path)
    layout.ensure()
    written = WrittenImage(name=name, digest="")
    entries = []
    for arch in architectures:
        config = canonical_json({"commandLine": cmdline} if cmdline else {})
        layout.put_bytes(config)
        layers = []
        for role in [role for role in UPSTREAM_ORDER if role in roles]:
            data = content(arch, role, size, tag)
            written.files[(arch, role)] = data
            if layer_format == "tar+gzip":
                blob = packed(role, data)
                layer = descriptor_for(OCI_LAYER_TAR_GZIP, blob, annotations={TITLE_ANNOTATION: role})
            else:
                blob = data
                layer = descriptor_for(LEGACY_TYPES[role] if legacy else PREFIX + role, blob)
            layout.put_bytes(blob)
            written.blobs[(arch, role)] = layer["digest"]
            layers.append(layer)
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor_for(LEGACY_CONFIG_MEDIA_TYPE if legacy else CONFIG_MEDIA_TYPE, config),
                "layers": layers,
            }
        )
        layout.put_bytes(manifest)
        manifest_desc = descriptor_for(OCI_MANIFEST, manifest)
        written.manifests[arch] = manifest_desc["digest"]
        entries.append(dict(manifest_desc, platform={"architecture": arch, "os": "linux"}))
        if not index:
            written.digest = _record(layout, name, manifest, OCI_MANIFEST)
            return written
    document = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    written.digest = _record(layout, name, document, OCI_INDEX)
    return written


def build_ours(
    layout: str, name: str, workdir: t.Any, tag: str = "", layer_format: str = "raw"
) -> dict[tuple[str, str], bytes]:
    """Build with this collection (its Python entry point: the module itself is tested in test_build)."""
    files: dict[tuple[str, str], bytes] = {}
    artifacts = []
    for arch in ("amd64", "arm64"):
        item = {"architecture": arch, "cmdline": "console=ttyS0 arch=%s" % arch}
        for role in ("kernel", "initramfs", "rootfs", "squashfs"):
            data = content(arch, role, 2500, "ours" + tag)
            path = os.path.join(str(workdir), "artifacts%s-%s-%s" % (tag, arch, role))
            with open(path, "wb") as stream:
                stream.write(data)
            files[(arch, role)] = data
            item[role] = path
        artifacts.append(item)
    params = {
        "layout": layout,
        "name": name,
        "artifacts": artifacts,
        "platforms": ["baremetal", "virtualization"],
        "layer_format": layer_format,
        "annotations": None,
        "platform_tags": True,
    }
    build_image(params, check_mode=False)
    return files


def push_built_image(ansible: t.Any, registry: t.Any, root: t.Any, name: str, repository: str) -> tuple[str, str, dict]:
    """build_ours into root/layout, pushed by the push module as <registry>/<repository>:1.0.

    The build is tagged by the repository, so images pushed to different repositories differ.
    Returns (the layout, the pushed reference, the push module's result).
    """
    layout = os.path.join(str(root), "layout")
    workdir = os.path.join(str(root), "in")
    os.makedirs(workdir, exist_ok=True)
    build_ours(layout, name, workdir, tag=repository.replace("/", "-"))
    reference = "%s/%s:1.0" % (registry.host, repository)
    pushed = ansible.module(
        "ironcore.image.ironcore_image_push",
        dict(registry.registry_args, layout=layout, name=name, destination=reference),
    )
    assert pushed["changed"] is True, pushed
    return layout, reference, pushed


def write_single_layer_image(
    layout_path: str, name: str, blob: bytes, role: str = "rootfs", architecture: str = "amd64"
) -> str:
    """An upstream-shaped image whose one layer is `blob`, a tar+gzip layer titled `role` (for hostile layers)."""
    layout = OciLayout(layout_path)
    layout.ensure()
    config = canonical_json({})
    layout.put_bytes(config)
    layout.put_bytes(blob)
    layer = descriptor_for(OCI_LAYER_TAR_GZIP, blob, annotations={TITLE_ANNOTATION: role})
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor_for(CONFIG_MEDIA_TYPE, config),
            "layers": [layer],
        }
    )
    layout.put_bytes(manifest)
    entry = dict(descriptor_for(OCI_MANIFEST, manifest), platform={"architecture": architecture, "os": "linux"})
    document = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    return _record(layout, name, document, OCI_INDEX)


def write_raw_document(layout_path: str, name: str, data: bytes, media_type: str = OCI_MANIFEST) -> str:
    """Record arbitrary manifest bytes under a name (for refusal tests)."""
    layout = OciLayout(layout_path)
    layout.ensure()
    return _record(layout, name, data, media_type)


def skopeo_push(
    layout_path: str, name: str, target: str, skopeo_args: t.Sequence[str] = (), env: t.Mapping[str, str] | None = None
) -> None:
    """Push every manifest of a layout name to a registry, byte for byte."""
    # --retry-times: on a loaded machine skopeo's 10 s TLS handshake timeout can expire against the token
    # registry; what is pushed is then read back and compared, so a retried push cannot hide a wrong byte.
    command = ["skopeo", "copy", "--all", "--preserve-digests", "--quiet", "--retry-times", "3", *skopeo_args]
    command += ["oci:%s:%s" % (layout_path, name), "docker://%s" % target]
    run_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(command, capture_output=True, text=True, env=run_env, timeout=300, check=False)
    if proc.returncode != 0:
        raise AssertionError("skopeo copy failed: %s" % proc.stderr.strip())
