"""ironcore_image_fetch driven through the real ansible CLI.

Images come from this collection's build and from images the tests write in
upstream ironcore-image shape; they are read from local OCI layouts here and
from real registries (pushed with skopeo) in test_fetch_registry.py.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from helpers.images import build_ours, write_raw_document, write_upstream_image
from helpers.tasks import run_tasks

MODULE = "ironcore.image.ironcore_image_fetch"
OURS = "registry.example.com/os/ours:1.0"
UPSTREAM = "registry.example.com/os/upstream:1.0"
LEGACY = "registry.example.com/os/legacy:0.9"
PACKED = "registry.example.com/os/packed:1.0"
COMBOS = [(platform, arch) for platform in ("baremetal", "virtualization") for arch in ("amd64", "arm64")]

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_in(dest) -> dict[str, bytes]:
    """What a consumer sees in dest: everything but the fetch's own bookkeeping."""
    found = {}
    for name in sorted(os.listdir(dest)) if os.path.isdir(dest) else []:
        if not name.startswith(".ironcore-fetch."):
            with open(os.path.join(dest, name), "rb") as stream:
                found[name] = stream.read()
    return found


def everything_in(dest) -> list[str]:
    return sorted(os.listdir(dest)) if os.path.isdir(dest) else []


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One layout holding every image shape: ours, upstream current, upstream legacy, tar+gzip."""
    workdir = tmp_path_factory.mktemp("images")
    layout = str(workdir / "layout")
    return {
        "layout": layout,
        "workdir": workdir,
        OURS: build_ours(layout, OURS, workdir),
        UPSTREAM: write_upstream_image(layout, UPSTREAM, roles=("rootfs", "initramfs", "kernel", "squashfs")),
        LEGACY: write_upstream_image(layout, LEGACY, legacy=True, tag="legacy"),
        PACKED: write_upstream_image(layout, PACKED, layer_format="tar+gzip", tag="packed", cmdline=None),
    }


EXPECTED_ROLES = {
    "baremetal": ["initramfs", "kernel", "rootfs", "squashfs"],
    "virtualization": ["rootfs"],
}


def expected_files(source: dict, platform: str, arch: str, roles=None) -> dict[str, bytes]:
    wanted = roles or [role for role in EXPECTED_ROLES[platform] if (arch, role) in source]
    return {role: source[(arch, role)] for role in sorted(wanted)}


def upstream_files(written, platform: str, arch: str) -> dict[str, bytes]:
    return expected_files(written.files, platform, arch)


def matrix_tasks(images, name: str, tmp_path, label: str):
    tasks, dests = [], []
    for platform, arch in COMBOS:
        dest = str(tmp_path / ("%s-%s-%s" % (label, platform, arch)))
        dests.append(dest)
        tasks.append((MODULE, {"layout": images["layout"], "name": name, "platform": platform, "architecture": arch, "dest": dest}))
    return tasks, dests


def test_every_shape_platform_and_architecture(ansible, images, tmp_path):
    """Ours (combined index), upstream current, legacy v1alpha1, tar+gzip: each combination gets exactly its files."""
    ours, ours_dests = matrix_tasks(images, OURS, tmp_path, "ours")
    shapes = {name: matrix_tasks(images, name, tmp_path, label) for name, label in ((UPSTREAM, "up"), (LEGACY, "legacy"), (PACKED, "packed"))}
    tasks = ours + ours + [task for name in shapes for task in shapes[name][0]] + shapes[PACKED][0]
    results = run_tasks(ansible, str(tmp_path), tasks)

    first, again = results[:4], results[4:8]
    for (platform, arch), dest, result, rerun in zip(COMBOS, ours_dests, first, again, strict=True):
        assert result["changed"] is True, result
        assert files_in(dest) == expected_files(images[OURS], platform, arch), (platform, arch)
        assert result["digest"] == first[0]["digest"] and result["platform"] == platform and result["architecture"] == arch
        assert result["config"] == {"commandLine": "console=ttyS0 arch=%s" % arch}
        assert sorted(result["files"]) == EXPECTED_ROLES[platform]
        for role, entry in result["files"].items():
            assert entry["path"] == os.path.join(dest, role) and entry["digest"] == sha256(images[OURS][(arch, role)])
            assert entry["media_type"] == "application/vnd.ironcore.image." + role and entry["changed"] is True
        assert result["bytes_downloaded"] == sum(len(data) for data in files_in(dest).values())
        assert rerun["changed"] is False and rerun["bytes_downloaded"] == 0, rerun
        assert rerun["manifest_digest"] == result["manifest_digest"]
    assert len({result["manifest_digest"] for result in first}) == 4

    position = 8
    for name, (_, dests) in shapes.items():
        written = images[name]
        for (platform, arch), dest, result in zip(COMBOS, dests, results[position:position + 4], strict=True):
            assert result["changed"] is True, result
            assert files_in(dest) == upstream_files(written, platform, arch), (name, platform, arch)
            assert result["digest"] == written.digest and result["manifest_digest"] == written.manifests[arch]
            for role, entry in result["files"].items():
                assert entry["digest"] == written.blobs[(arch, role)] and entry["unpacked"] is (name == PACKED)
        assert results[position]["config"] == ({} if name == PACKED else {"commandLine": "console=ttyS0"})
        position += 4
    # Unpacked files are recognised again from the state record.
    assert [result["changed"] for result in results[position:]] == [False] * 4


def test_per_platform_index_plain_manifest_pin_and_digest_reference(ansible, images, tmp_path):
    written = images[UPSTREAM]
    layout = images["layout"]
    dests = {key: str(tmp_path / key) for key in ("per-platform", "plain", "pinned", "by-digest")}
    tasks = [
        (MODULE, {"layout": layout, "name": OURS + "-baremetal", "platform": "baremetal", "architecture": "arm64", "dest": dests["per-platform"]}),
        (MODULE, {"layout": layout, "name": OURS + "-baremetal-amd64", "platform": "virtualization", "architecture": "amd64", "dest": dests["plain"]}),
        (MODULE, {"layout": layout, "name": UPSTREAM, "digest": written.digest, "platform": "virtualization", "architecture": "amd64", "dest": dests["pinned"]}),
        (MODULE, {"layout": layout, "name": "registry.example.com/os/upstream@" + written.digest, "platform": "baremetal", "architecture": "arm64", "dest": dests["by-digest"]}),
    ]
    per_platform, plain, pinned, by_digest = run_tasks(ansible, str(tmp_path), tasks)
    assert per_platform["changed"] is True and files_in(dests["per-platform"]) == expected_files(images[OURS], "baremetal", "arm64")
    # A baremetal manifest serves a hypervisor too: it takes the rootfs from it.
    assert plain["changed"] is True and files_in(dests["plain"]) == {"rootfs": images[OURS][("amd64", "rootfs")]}
    assert plain["digest"] == plain["manifest_digest"]
    assert pinned["changed"] is True and pinned["digest"] == written.digest
    assert files_in(dests["pinned"]) == upstream_files(written, "virtualization", "amd64")
    assert by_digest["changed"] is True and files_in(dests["by-digest"]) == upstream_files(written, "baremetal", "arm64")


def test_check_mode_then_real_then_idempotent(ansible, images, tmp_path):
    dest = tmp_path / "boot"
    args = {
        "layout": images["layout"],
        "name": OURS,
        "platform": "baremetal",
        "architecture": "arm64",
        "dest": str(dest),
        "layers": ["kernel", "initramfs"],
        "filenames": {"kernel": "vmlinuz", "initramfs": "initrd"},
        "mode": "0640",
    }
    (checked,) = run_tasks(ansible, str(tmp_path), [(MODULE, args, {"check_mode": True})])
    assert checked["changed"] is True and checked["bytes_downloaded"] == 0, checked
    assert not dest.exists()

    moded = dict(args, mode="0644")
    check = {"check_mode": True}
    real, again_check, again, mode_check, mode_real = run_tasks(
        ansible, str(tmp_path), [(MODULE, args), (MODULE, args, check), (MODULE, args), (MODULE, moded, check), (MODULE, moded)]
    )
    assert real["changed"] is True and real["bytes_downloaded"] > 0
    assert real["files"]["kernel"]["path"] == str(dest / "vmlinuz")
    assert again_check["changed"] is False and again["changed"] is False, (again_check, again)
    assert again["bytes_downloaded"] == 0
    # A mode change alone is a change; check mode only reports it, so the real run still has it to do.
    assert mode_check["changed"] is True and mode_real["changed"] is True
    assert files_in(dest) == {"vmlinuz": images[OURS][("arm64", "kernel")], "initrd": images[OURS][("arm64", "initramfs")]}
    assert {oct(os.stat(dest / name).st_mode & 0o777) for name in ("vmlinuz", "initrd")} == {"0o644"}


def test_verify_rehashes_what_the_state_record_trusts(ansible, images, tmp_path):
    dest = tmp_path / "dest"
    args = {"layout": images["layout"], "name": UPSTREAM, "platform": "virtualization", "architecture": "amd64", "dest": str(dest)}
    expected = images[UPSTREAM].files[("amd64", "rootfs")]
    rootfs = dest / "rootfs"
    (first,) = run_tasks(ansible, str(tmp_path), [(MODULE, args)])
    assert first["changed"] is True
    # Same size and mtime, different bytes: only a re-hash can tell.
    stat = os.stat(rootfs)
    with open(rootfs, "r+b") as stream:
        stream.write(b"X")
    os.utime(rootfs, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    trusted, verified, settled = run_tasks(ansible, str(tmp_path), [(MODULE, args), (MODULE, dict(args, verify=True)), (MODULE, dict(args, verify=True))])
    assert trusted["changed"] is False
    assert verified["changed"] is True and verified["bytes_downloaded"] == len(expected)
    assert settled["changed"] is False and settled["bytes_downloaded"] == 0
    assert rootfs.read_bytes() == expected


def test_symlink_in_dest_is_replaced_not_followed(ansible, images, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"must stay")
    os.symlink(outside, dest / "rootfs")
    args = {"layout": images["layout"], "name": UPSTREAM, "platform": "virtualization", "architecture": "arm64", "dest": str(dest), "mode": "0600"}
    result = ansible.module(MODULE, args)
    assert result["changed"] is True
    assert outside.read_bytes() == b"must stay" and oct(os.stat(outside).st_mode & 0o777) != "0o600"
    assert not os.path.islink(dest / "rootfs") and files_in(dest) == {"rootfs": images[UPSTREAM].files[("arm64", "rootfs")]}


def test_bad_inputs_fail_cleanly_and_touch_nothing(ansible, images, tmp_path):
    layout = images["layout"]
    dest = tmp_path / "dest"
    good = {"layout": layout, "name": UPSTREAM, "platform": "baremetal", "architecture": "amd64", "dest": str(dest)}
    (first,) = run_tasks(ansible, str(tmp_path), [(MODULE, good)])
    assert first["changed"] is True
    before = {name: (dest / name).read_bytes() for name in everything_in(dest)}

    big = json.dumps({"schemaVersion": 2, "layers": [], "padding": "x" * (4 * 1024 * 1024)}).encode()
    write_raw_document(layout, "registry.example.com/os/huge:1", big)
    amd64_only = "registry.example.com/os/amd64-only:1"
    write_upstream_image(layout, amd64_only, architectures=("amd64",))
    metal_only = "registry.example.com/os/metal-only:1"
    write_upstream_image(layout, metal_only, roles=("initramfs", "kernel", "squashfs"), tag="metal")
    cases = [
        ({"filenames": {"kernel": "../kernel"}}, "filenames.kernel: '../kernel' is a path; give a plain file name"),
        ({"filenames": {"kernel": "/boot/vmlinuz"}}, "filenames.kernel: '/boot/vmlinuz' is a path"),
        ({"filenames": {"kernel": "same", "initramfs": "same"}}, "initramfs and kernel would both be written to same"),
        ({"name": amd64_only, "architecture": "arm64"}, "has no linux/arm64 manifest; it has: linux/amd64"),
        ({"name": OURS, "architecture": "arm64", "platform": "virtualization", "layers": ["kernel"]}, "the manifest has no kernel layer (it has: rootfs)"),
        ({"name": metal_only}, "has no rootfs layer, which platform baremetal needs (it has: initramfs, kernel, squashfs)"),
        ({"layers": ["uki"]}, "the manifest has no uki layer"),
        ({"digest": "sha256:" + "0" * 64}, "not the pinned digest sha256:%s; nothing was fetched" % ("0" * 64)),
        ({"name": "registry.example.com/os/huge:1"}, "more than a manifest may be (4 MiB)"),
        ({"name": "registry.example.com/os/absent:1"}, "is not recorded in layout"),
        ({"layout": str(tmp_path / "nowhere")}, "is not an OCI image layout"),
        ({"dest": str(dest / "rootfs")}, "exists and is not a directory"),
    ]
    results = run_tasks(ansible, str(tmp_path), [(MODULE, dict(good, **override)) for override, _ in cases])
    for (override, message), result in zip(cases, results, strict=True):
        assert result.get("failed") is True, (override, result)
        assert message in result["msg"], (message, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    assert {name: (dest / name).read_bytes() for name in everything_in(dest)} == before


def test_corrupt_blob_in_layout_fails_and_every_old_file_stays(ansible, images, tmp_path):
    layout = str(tmp_path / "layout")
    old = write_upstream_image(layout, "registry.example.com/os/c:1", architectures=("amd64",), tag="v1")
    new = write_upstream_image(layout, "registry.example.com/os/c:2", architectures=("amd64",), tag="v2")
    dest = tmp_path / "dest"
    args = {"layout": layout, "platform": "baremetal", "architecture": "amd64", "dest": str(dest)}
    (first,) = run_tasks(ansible, str(tmp_path), [(MODULE, dict(args, name="registry.example.com/os/c:1"))])
    assert first["changed"] is True
    blob = os.path.join(layout, "blobs", "sha256", new.blobs[("amd64", "rootfs")][7:])
    with open(blob, "r+b") as stream:
        stream.seek(100)
        stream.write(b"CORRUPT")
    (failed,) = run_tasks(ansible, str(tmp_path), [(MODULE, dict(args, name="registry.example.com/os/c:2"))])
    assert failed["failed"] is True
    assert "rootfs (rootfs): blob %s failed verification" % new.blobs[("amd64", "rootfs")] in failed["msg"], failed["msg"]
    # Nothing was replaced, not even the layers that verified: no mix of versions in dest.
    assert files_in(dest) == {role: old.files[("amd64", role)] for role in ("initramfs", "kernel", "rootfs")}
    # Verified layers may wait as partial files for the next run; nothing of the corrupt one is left.
    leftovers = [name for name in everything_in(dest) if name not in ("initramfs", "kernel", "rootfs")]
    assert not [name for name in leftovers if "rootfs" in name or name.endswith(".tmp")], leftovers
