"""The IronCore ecosystem's image shapes, read and written through real registries.

Reading: images in every shape the ecosystem publishes (tests/helpers/ecosystem.py)
are pushed byte for byte with skopeo and fetched with ironcore_image_fetch for
each platform (under each of its names) and architecture; info says how each
entry's platform was decided. Writing: this collection's build, pushed with
ironcore_image_push, is read back with `skopeo inspect --raw` through the
selection rules of boot-operator, libvirt/cloud-hypervisor-provider and
ceph-provider (tests/helpers/consumers.py), for every tag it publishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest
from helpers import ecosystem
from helpers.consumers import CONSUMERS, Refused
from helpers.images import build_ours, content, skopeo_push
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image

FETCH = "ironcore.image.ironcore_image_fetch"
INFO = "ironcore.image.ironcore_image_info"
PUSH = "ironcore.image.ironcore_image_push"

OSIMG = "registry.example.com/os/osimg"
SPEC = "registry.example.com/os/spec:2.0"
LEGACY = "registry.example.com/os/legacy:0.9"
GARDENLINUX = "registry.example.com/os/gardenlinux-pxe:1592.1"
ARCHS = ("amd64", "arm64")

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_in(dest: str) -> dict[str, bytes]:
    found = {}
    for name in sorted(os.listdir(dest)) if os.path.isdir(dest) else []:
        # The fetch's own bookkeeping lives in the hidden state directory.
        if name != ".ironcore":
            with open(os.path.join(dest, name), "rb") as stream:
                found[name] = stream.read()
    return found


def in_registry(registry, name: str) -> str:
    """registry.example.com/os/x:1 -> <registry>/os/x:1."""
    return "%s/%s" % (registry.host, name.split("/", 1)[1])


@pytest.fixture(scope="module")
def shapes(registry_plain, tmp_path_factory):
    """Every ecosystem shape in one layout, each name pushed to the plain registry with its digests kept."""
    layout = str(tmp_path_factory.mktemp("ecosystem") / "layout")
    written = ecosystem.write_os_images(layout, OSIMG, "1.0")
    written["spec"] = ecosystem.write_spec_image(layout, SPEC)
    written["legacy"] = ecosystem.write_legacy_image(layout, LEGACY)
    written["gardenlinux"] = ecosystem.write_gardenlinux_image(layout, GARDENLINUX)
    for shape in written.values():
        for name in shape.names:
            skopeo_push(layout, name, in_registry(registry_plain, name), registry_plain.skopeo_flags("dest-"))
    return written


def pick(shape: ecosystem.Shape, arch: str, *roles: str) -> dict[str, bytes]:
    return {role: shape.files[(arch, role)] for role in sorted(roles)}


METAL_ROLES = ("initramfs", "kernel", "squashfs", "uki")
SPEC_METAL_ROLES = ("kernel", "initramfs", "squashfs", "uki", "iso")


def reading_cases(shapes):
    """(name, platform, architecture, files expected or the message expected)."""
    kvm, metal, spec = shapes["kvm"], shapes["metal"], shapes["spec"]
    legacy, gardenlinux = shapes["legacy"], shapes["gardenlinux"]
    return [
        # os-images: the tag suffix tells the platform.
        (OSIMG + ":1.0-kvm", "virtualization", "amd64", pick(kvm, "amd64", "rootfs")),
        (OSIMG + ":1.0-kvm", "kvm", "arm64", pick(kvm, "arm64", "rootfs")),
        (OSIMG + ":1.0-kvm", "baremetal", "amd64", "nothing for baremetal on linux/amd64"),
        (OSIMG + ":1.0-metal", "metal", "amd64", pick(metal, "amd64", *METAL_ROLES)),
        (OSIMG + ":1.0-metal", "baremetal", "arm64", pick(metal, "arm64", *METAL_ROLES)),
        (OSIMG + ":1.0-metal", "virtualization", "amd64", "nothing for virtualization on linux/amd64"),
        (OSIMG + ":1.0-kvm-amd64", "kvm", "amd64", pick(kvm, "amd64", "rootfs")),
        (OSIMG + ":1.0-kvm-arm64", "virtualization", "arm64", pick(kvm, "arm64", "rootfs")),
        (OSIMG + ":1.0-metal-amd64", "baremetal", "amd64", pick(metal, "amd64", *METAL_ROLES)),
        (OSIMG + ":1.0-metal-arm64", "metal", "arm64", pick(metal, "arm64", *METAL_ROLES)),
        (OSIMG + ":1.0-metal-arm64", "metal", "amd64", "single manifest for linux/arm64"),
        # The published spec: two entries per architecture, told apart by their manifests (amd64)
        # or descriptors (arm64); disk.img is the rootfs, unknown layers are skipped.
        (SPEC, "baremetal", "amd64", pick(spec, "amd64", *SPEC_METAL_ROLES)),
        (SPEC, "metal", "arm64", pick(spec, "arm64", *SPEC_METAL_ROLES)),
        (SPEC, "virtualization", "amd64", pick(spec, "amd64", "rootfs")),
        (SPEC, "kvm", "arm64", pick(spec, "arm64", "rootfs")),
        # Older single v1alpha1 manifest: serves both platforms by its layers.
        (LEGACY, "baremetal", "amd64", pick(legacy, "amd64", "rootfs", "squashfs", "initramfs", "kernel")),
        (LEGACY, "metal", "amd64", pick(legacy, "amd64", "rootfs", "squashfs", "initramfs", "kernel")),
        (LEGACY, "virtualization", "amd64", pick(legacy, "amd64", "rootfs")),
        (LEGACY, "kvm", "amd64", pick(legacy, "amd64", "rootfs")),
        # Garden Linux PXE: io.gardenlinux layers, a squashfs root, nothing for a hypervisor.
        (GARDENLINUX, "baremetal", "amd64", pick(gardenlinux, "amd64", "kernel", "initramfs", "squashfs")),
        (GARDENLINUX, "metal", "arm64", pick(gardenlinux, "arm64", "kernel", "initramfs", "squashfs")),
        (GARDENLINUX, "kvm", "amd64", "nothing for virtualization on linux/amd64"),
    ]


def test_every_shape_fetched_for_each_platform_name_and_architecture(ansible, registry_plain, shapes, tmp_path):
    cases = reading_cases(shapes)
    tasks, dests = [], []
    for number, (name, platform, arch, _expected) in enumerate(cases):
        dests.append(str(tmp_path / ("dest-%d" % number)))
        args = dict(registry_plain.registry_args, name=in_registry(registry_plain, name), dest=dests[-1])
        tasks.append((FETCH, dict(args, platform=platform, architecture=arch)))
    results = run_tasks(ansible, str(tmp_path), tasks)

    for (name, platform, arch, expected), dest, result in zip(cases, dests, results, strict=True):
        what = (name, platform, arch)
        if isinstance(expected, str):
            assert result.get("failed") is True, (what, result)
            assert expected in result["msg"] and "\n" not in result["msg"], (what, result["msg"])
            assert files_in(dest) == {}, what
            continue
        assert result.get("failed") is not True, (what, result.get("msg"))
        assert files_in(dest) == expected, what
        assert result["platform"] in ("baremetal", "virtualization") and result["architecture"] == arch
        assert {role: entry["digest"] for role, entry in result["files"].items()} == {
            role: sha256(data) for role, data in expected.items()
        }, what

    by_case = {(name, platform): result for (name, platform, _arch, _e), result in zip(cases, results, strict=True)}
    # The legacy config keeps its extra keys; its command line loses the newline.
    assert by_case[(LEGACY, "baremetal")]["config"] == {
        "commandLine": ecosystem.LEGACY_COMMAND_LINE.strip(),
        "os-release": "ID=gardenlinux\n",
        "arch": "amd64",
    }
    assert by_case[(OSIMG + ":1.0-metal", "metal")]["config"] == {}
    assert by_case[(OSIMG + ":1.0-metal", "metal")]["platform"] == "baremetal"


def test_info_says_how_each_platform_was_decided(ansible, registry_plain, shapes, tmp_path):
    names = [OSIMG + ":1.0-kvm", OSIMG + ":1.0-metal-arm64", SPEC, LEGACY, GARDENLINUX]
    tasks = [(INFO, dict(registry_plain.registry_args, name=in_registry(registry_plain, name))) for name in names]
    tasks.append(
        (
            INFO,
            dict(
                registry_plain.registry_args,
                name=in_registry(registry_plain, SPEC),
                platform="metal",
                architecture="amd64",
            ),
        )
    )
    kvm, metal_arm64, spec, legacy, gardenlinux, selected = run_tasks(ansible, str(tmp_path), tasks)

    def decided(result):
        return [(m["architecture"], m["platform"], m["platforms"], m["decided_by"]) for m in result["manifests"]]

    assert decided(kvm) == [
        ("amd64", "virtualization", ["virtualization"], "tag_suffix"),
        ("arm64", "virtualization", ["virtualization"], "tag_suffix"),
    ]
    assert decided(metal_arm64) == [(None, "baremetal", ["baremetal"], "tag_suffix")]
    assert decided(spec) == [
        ("amd64", "virtualization", ["virtualization"], "manifest_annotation"),
        ("amd64", "baremetal", ["baremetal"], "manifest_annotation"),
        ("arm64", "baremetal", ["baremetal"], "descriptor_annotation"),
        ("arm64", "virtualization", ["virtualization"], "descriptor_annotation"),
    ]
    assert decided(legacy) == [(None, None, ["baremetal", "virtualization"], "layers")]
    assert decided(gardenlinux) == [
        ("amd64", "baremetal", ["baremetal"], "layers"),
        ("arm64", "baremetal", ["baremetal"], "layers"),
    ]
    # Roles of foreign media types, unknown layers left out.
    assert [(layer["role"], layer["media_type"]) for layer in gardenlinux["manifests"][0]["layers"]] == [
        ("kernel", "application/io.gardenlinux.kernel"),
        ("initramfs", "application/io.gardenlinux.initrd"),
        ("squashfs", "application/io.gardenlinux.squashfs"),
    ]
    assert [layer["role"] for layer in spec["manifests"][1]["layers"]] == list(SPEC_METAL_ROLES)
    assert selected["selected"]["platform"] == "baremetal"
    assert selected["selected"]["decided_by"] == "manifest_annotation"
    assert selected["selected"]["manifest_digest"] == spec["manifests"][1]["digest"]
    assert [layer["role"] for layer in selected["selected"]["layers"]] == list(SPEC_METAL_ROLES)


def test_spec_shape_over_tls(ansible, registry_tls, shapes, tmp_path):
    layout_name = SPEC
    target = in_registry(registry_tls, layout_name)
    # The layout the fixture wrote is not kept per test; write the spec shape again, same bytes.
    layout = str(tmp_path / "layout")
    again = ecosystem.write_spec_image(layout, layout_name)
    assert again.names == shapes["spec"].names
    skopeo_push(layout, layout_name, target, registry_tls.skopeo_flags("dest-"))
    dest = str(tmp_path / "dest")
    (result,) = run_tasks(
        ansible,
        str(tmp_path),
        [(FETCH, dict(registry_tls.registry_args, name=target, platform="kvm", architecture="amd64", dest=dest))],
    )
    assert result.get("failed") is not True, result
    assert files_in(dest) == pick(shapes["spec"], "amd64", "rootfs")


# ---- our own builds, read by the consumers ------------------------------------

OURS = "registry.example.com/interop/ours:1.0"
PXE = "registry.example.com/interop/pxe:1.0"


def skopeo_raw(registry, reference: str) -> dict:
    proc = subprocess.run(
        ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), "docker://%s" % reference],
        capture_output=True,
        env=dict(os.environ, **registry.env),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def consumer_view(registry, repository: str, tag: str, arch: str) -> dict[str, object]:
    """consumer -> role -> digest it would use, or the reason it refuses, for one published tag."""
    top = skopeo_raw(registry, "%s/%s:%s" % (registry.host, repository, tag))

    def manifests(digest: str) -> dict:
        return skopeo_raw(registry, "%s/%s@%s" % (registry.host, repository, digest))

    view: dict[str, object] = {}
    for consumer, select in CONSUMERS.items():
        try:
            view[consumer] = select(top, manifests, arch)
        except Refused as exc:
            view[consumer] = "refused: %s" % exc
    return view


@pytest.fixture(scope="module")
def published(ansible, registry_plain, tmp_path_factory):
    """Ours (both platforms, squashfs beside rootfs) and a PXE image (metal, squashfs root), pushed by push."""
    workdir = tmp_path_factory.mktemp("ours")
    layout = str(workdir / "layout")
    files = {OURS: build_ours(layout, OURS, workdir)}
    pxe_files = {}
    artifacts = []
    for arch in ARCHS:
        item = {"architecture": arch}
        for role in ("kernel", "initramfs", "squashfs"):
            pxe_files[(arch, role)] = content(arch, role, 1200, "pxe")
            path = workdir / ("pxe-%s-%s" % (arch, role))
            path.write_bytes(pxe_files[(arch, role)])
            item[role] = str(path)
        artifacts.append(item)
    params = {"layout": layout, "name": PXE, "artifacts": artifacts, "platforms": ["metal"]}
    build_image(dict(params, layer_format="raw", annotations=None, platform_tags=True), check_mode=False)
    files[PXE] = pxe_files
    for name in (OURS, PXE):
        args = dict(
            registry_plain.registry_args, layout=layout, name=name, destination=in_registry(registry_plain, name)
        )
        (result,) = run_tasks(ansible, str(workdir), [(PUSH, args)])
        assert result.get("failed") is not True, result
        files[name + "/tags"] = result["tags"]
    return files


BAREMETAL_TAGS = ("1.0", "1.0-baremetal", "1.0-metal")
VIRTUALIZATION_TAGS = ("1.0-virtualization", "1.0-kvm")


def test_push_publishes_the_os_images_aliases(published):
    words = ("baremetal", "virtualization", "metal", "kvm")
    expected = {"1.0"} | {"1.0-" + w for w in words} | {"1.0-%s-%s" % (w, a) for w in words for a in ARCHS}
    assert set(published[OURS + "/tags"]) == expected
    assert set(published[PXE + "/tags"]) == {"1.0"} | {"1.0-%s" % w for w in ("baremetal", "metal")} | {
        "1.0-%s-%s" % (w, a) for w in ("baremetal", "metal") for a in ARCHS
    }


def test_consumers_read_every_tag_of_ours(registry_plain, published):
    files = published[OURS]

    def digests(arch, *roles):
        return {role: sha256(files[(arch, role)]) for role in roles}

    repository = OURS.split("/", 1)[1].split(":")[0]
    for arch in ARCHS:
        boots = digests(arch, "kernel", "initramfs", "squashfs")
        # squashfs is listed before rootfs, so the rootfs wins the VM disk slot.
        disk = {"disk": sha256(files[(arch, "rootfs")])}
        rootfs = digests(arch, "rootfs")
        for tag in (*BAREMETAL_TAGS, "1.0-baremetal-" + arch, "1.0-metal-" + arch):
            assert consumer_view(registry_plain, repository, tag, arch) == {
                "boot-operator": boots,
                "vm-provider": disk,
                "ceph-provider": rootfs,
            }, tag
        for tag in (*VIRTUALIZATION_TAGS, "1.0-virtualization-" + arch, "1.0-kvm-" + arch):
            assert consumer_view(registry_plain, repository, tag, arch) == {
                "boot-operator": "refused: boot-operator: no kernel and initramfs layer",
                "vm-provider": disk,
                "ceph-provider": rootfs,
            }, tag


def test_consumers_read_a_squashfs_rooted_metal_image(registry_plain, published):
    files = published[PXE]
    repository = PXE.split("/", 1)[1].split(":")[0]
    for arch in ARCHS:
        for tag in ("1.0", "1.0-metal", "1.0-baremetal-" + arch):
            assert consumer_view(registry_plain, repository, tag, arch) == {
                "boot-operator": {role: sha256(files[(arch, role)]) for role in ("kernel", "initramfs", "squashfs")},
                "vm-provider": "refused: vm provider: no rootfs layer",
                "ceph-provider": "refused: ceph-provider: no rootfs layer",
            }, tag


def test_our_fetch_reads_the_squashfs_rooted_metal_image(ansible, registry_plain, published, tmp_path):
    tasks, dests = [], []
    for arch in ARCHS:
        dests.append(str(tmp_path / arch))
        name = in_registry(registry_plain, PXE)
        tasks.append(
            (FETCH, dict(registry_plain.registry_args, name=name, platform="metal", architecture=arch, dest=dests[-1]))
        )
    results = run_tasks(ansible, str(tmp_path), tasks)
    for arch, dest, result in zip(ARCHS, dests, results, strict=True):
        assert result.get("failed") is not True, result
        assert files_in(dest) == {role: published[PXE][(arch, role)] for role in ("initramfs", "kernel", "squashfs")}
