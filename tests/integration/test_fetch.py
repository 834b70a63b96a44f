"""ironcore_image_fetch driven through the real ansible CLI.

Images come from this collection's build and from images the tests write in
upstream ironcore-image shape; they are read from local OCI layouts here and
from real registries (pushed with skopeo) in test_fetch_registry.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading

import pytest
from helpers.images import build_ours, skopeo_push, write_raw_document, write_upstream_image
from helpers.registry import blob_data_path
from helpers.tasks import run_tasks

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout

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
        if name != ".ironcore":
            with open(os.path.join(dest, name), "rb") as stream:
                found[name] = stream.read()
    return found


def everything_in(dest) -> list[str]:
    return sorted(os.listdir(dest)) if os.path.isdir(dest) else []


def tree_of(dest) -> dict[str, bytes]:
    """Every file under dest, the fetch's own state directory included, by relative path."""
    found = {}
    for directory, _dirs, names in os.walk(dest):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as stream:
                found[os.path.relpath(path, dest)] = stream.read()
    return found


def leftovers_in(dest, delivered) -> list[str]:
    """Names in dest and its state directory besides the delivered files and the bookkeeping that always stays."""
    kept = {".ironcore", ".ironcore/.ironcore-fetch.lock", ".ironcore/.ironcore-fetch.state.json", *delivered}
    return sorted(name for name in [*tree_of(dest), *everything_in(dest)] if name not in kept)


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
        tasks.append(
            (
                MODULE,
                {"layout": images["layout"], "name": name, "platform": platform, "architecture": arch, "dest": dest},
            )
        )
    return tasks, dests


def test_tar_gzip_layers_every_platform_and_architecture(ansible, images, tmp_path):
    """Layers packed as single-file tar+gzip are unpacked; re-runs know them from the state record.

    The raw shapes (ours, upstream, legacy) run the same matrix from a registry below.
    """
    tasks, dests = matrix_tasks(images, PACKED, tmp_path, "packed")
    results = run_tasks(ansible, str(tmp_path), tasks + tasks)
    written = images[PACKED]
    for (platform, arch), dest, result in zip(COMBOS, dests, results[:4], strict=True):
        assert result["changed"] is True, result
        assert files_in(dest) == upstream_files(written, platform, arch), (platform, arch)
        assert result["digest"] == written.digest and result["manifest_digest"] == written.manifests[arch]
        for role, entry in result["files"].items():
            assert entry["digest"] == written.blobs[(arch, role)] and entry["unpacked"] is True
            assert entry["media_type"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert results[0]["config"] == {}
    assert [result["changed"] for result in results[4:]] == [False] * 4


def test_our_combined_index_from_a_layout(ansible, images, tmp_path):
    tasks, dests = matrix_tasks(images, OURS, tmp_path, "ours")
    results = run_tasks(ansible, str(tmp_path), tasks)
    for (platform, arch), dest, result in zip(COMBOS, dests, results, strict=True):
        assert result["changed"] is True, result
        assert files_in(dest) == expected_files(images[OURS], platform, arch), (platform, arch)
        assert (
            result["digest"] == results[0]["digest"]
            and result["platform"] == platform
            and result["architecture"] == arch
        )
        assert result["config"] == {"commandLine": "console=ttyS0 arch=%s" % arch}
        for role, entry in result["files"].items():
            assert entry["path"] == os.path.join(dest, role) and entry["digest"] == sha256(images[OURS][(arch, role)])
            assert entry["media_type"] == "application/vnd.ironcore.image." + role and entry["changed"] is True
        assert result["bytes_downloaded"] == sum(len(data) for data in files_in(dest).values())
    assert len({result["manifest_digest"] for result in results}) == 4


def test_per_platform_index_plain_manifest_pin_and_digest_reference(ansible, images, tmp_path):
    written = images[UPSTREAM]
    layout = images["layout"]
    dests = {key: str(tmp_path / key) for key in ("per-platform", "plain", "pinned", "by-digest")}
    tasks = [
        (
            MODULE,
            {
                "layout": layout,
                "name": OURS + "-baremetal",
                "platform": "baremetal",
                "architecture": "arm64",
                "dest": dests["per-platform"],
            },
        ),
        (
            MODULE,
            {
                "layout": layout,
                "name": OURS + "-kvm-amd64",
                "platform": "virtualization",
                "architecture": "amd64",
                "dest": dests["plain"],
            },
        ),
        (
            MODULE,
            {
                "layout": layout,
                "name": UPSTREAM,
                "digest": written.digest,
                "platform": "virtualization",
                "architecture": "amd64",
                "dest": dests["pinned"],
            },
        ),
        (
            MODULE,
            {
                "layout": layout,
                "name": "registry.example.com/os/upstream@" + written.digest,
                "platform": "baremetal",
                "architecture": "arm64",
                "dest": dests["by-digest"],
            },
        ),
    ]
    per_platform, plain, pinned, by_digest = run_tasks(ansible, str(tmp_path), tasks)
    assert per_platform["changed"] is True and files_in(dests["per-platform"]) == expected_files(
        images[OURS], "baremetal", "arm64"
    )
    # The os-images alias of the per-architecture virtualization manifest.
    assert plain["changed"] is True and files_in(dests["plain"]) == {"rootfs": images[OURS][("amd64", "rootfs")]}
    assert plain["digest"] == plain["manifest_digest"]
    assert pinned["changed"] is True and pinned["digest"] == written.digest
    assert files_in(dests["pinned"]) == upstream_files(written, "virtualization", "amd64")
    assert by_digest["changed"] is True and files_in(dests["by-digest"]) == upstream_files(
        written, "baremetal", "arm64"
    )


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
        ansible,
        str(tmp_path),
        [(MODULE, args), (MODULE, args, check), (MODULE, args), (MODULE, moded, check), (MODULE, moded)],
    )
    assert real["changed"] is True and real["bytes_downloaded"] > 0
    assert real["files"]["kernel"]["path"] == str(dest / "vmlinuz")
    assert again_check["changed"] is False and again["changed"] is False, (again_check, again)
    assert again["bytes_downloaded"] == 0
    # A mode change alone is a change; check mode only reports it, so the real run still has it to do.
    assert mode_check["changed"] is True and mode_real["changed"] is True
    assert files_in(dest) == {
        "vmlinuz": images[OURS][("arm64", "kernel")],
        "initrd": images[OURS][("arm64", "initramfs")],
    }
    assert {oct(os.stat(dest / name).st_mode & 0o777) for name in ("vmlinuz", "initrd")} == {"0o644"}


def test_verify_rehashes_what_the_state_record_trusts(ansible, images, tmp_path):
    dest = tmp_path / "dest"
    args = {
        "layout": images["layout"],
        "name": UPSTREAM,
        "platform": "virtualization",
        "architecture": "amd64",
        "dest": str(dest),
    }
    expected = images[UPSTREAM].files[("amd64", "rootfs")]
    rootfs = dest / "rootfs"
    (first,) = run_tasks(ansible, str(tmp_path), [(MODULE, args)])
    assert first["changed"] is True
    # Different bytes whose identity the record matches (root rewrote the record to say so): only a re-hash can tell.
    with open(rootfs, "r+b") as stream:
        stream.write(b"X")
    record = dest / ".ironcore" / ".ironcore-fetch.state.json"
    state = json.loads(record.read_bytes())
    status = os.stat(rootfs)
    state["files"]["rootfs"]["identity"] = [
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    ]
    with open(record, "r+") as stream:
        stream.truncate()
        stream.write(json.dumps(state))
    trusted, verified, settled = run_tasks(
        ansible, str(tmp_path), [(MODULE, args), (MODULE, dict(args, verify=True)), (MODULE, dict(args, verify=True))]
    )
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
    args = {
        "layout": images["layout"],
        "name": UPSTREAM,
        "platform": "virtualization",
        "architecture": "arm64",
        "dest": str(dest),
        "mode": "0600",
    }
    result = ansible.module(MODULE, args)
    assert result["changed"] is True
    assert outside.read_bytes() == b"must stay" and oct(os.stat(outside).st_mode & 0o777) != "0o600"
    assert not os.path.islink(dest / "rootfs") and files_in(dest) == {
        "rootfs": images[UPSTREAM].files[("arm64", "rootfs")]
    }


def test_bad_inputs_fail_cleanly_and_touch_nothing(ansible, images, tmp_path):
    layout = images["layout"]
    dest = tmp_path / "dest"
    good = {"layout": layout, "name": UPSTREAM, "platform": "baremetal", "architecture": "amd64", "dest": str(dest)}
    (first,) = run_tasks(ansible, str(tmp_path), [(MODULE, good)])
    assert first["changed"] is True
    before = tree_of(dest)

    big = json.dumps({"schemaVersion": 2, "layers": [], "padding": "x" * (4 * 1024 * 1024)}).encode()
    write_raw_document(layout, "registry.example.com/os/huge:1", big)
    amd64_only = "registry.example.com/os/amd64-only:1"
    write_upstream_image(layout, amd64_only, architectures=("amd64",))
    metal_only = "registry.example.com/os/metal-only:1"
    write_upstream_image(layout, metal_only, roles=("initramfs", "kernel", "squashfs"), tag="metal")
    vm_only = "registry.example.com/os/vm-only:1"
    rootfs = tmp_path / "vm-rootfs"
    rootfs.write_bytes(b"vm rootfs")
    build_image(
        {
            "layout": layout,
            "name": vm_only,
            "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
            "platforms": ["virtualization"],
            "layer_format": "raw",
            "annotations": None,
            "platform_tags": False,
        },
        check_mode=False,
    )
    cases = [
        ({"name": amd64_only, "architecture": "arm64"}, "has no linux/arm64 manifest; it has: linux/amd64"),
        (
            {"name": metal_only, "platform": "virtualization"},
            "the image has nothing for virtualization on linux/amd64; its linux/amd64 entries serve"
            " linux/amd64: baremetal (by layers)",
        ),
        (
            {"name": vm_only},
            "the image has nothing for baremetal on linux/amd64; its linux/amd64 entries serve"
            " linux/amd64/virtualization: virtualization (by platform variant)",
        ),
        # Our baremetal manifest says so in its annotations, rootfs or not: not for a hypervisor.
        (
            {"name": OURS + "-baremetal-amd64", "platform": "virtualization"},
            "the image has nothing for virtualization: it is a single manifest that serves baremetal"
            " (by manifest annotation)",
        ),
        ({"layers": ["uki"]}, "the manifest has no uki layer"),
        ({"name": "registry.example.com/os/huge:1"}, "more than a manifest may be (4 MiB)"),
        ({"name": "registry.example.com/os/absent:1"}, "is not recorded in layout"),
        ({"layout": str(tmp_path / "nowhere")}, "is not an OCI image layout"),
        ({"dest": str(dest / "rootfs")}, "exists and is not a directory"),
    ]
    results = run_tasks(ansible, str(tmp_path), [(MODULE, dict(good, **override)) for override, _message in cases])
    for (override, message), result in zip(cases, results, strict=True):
        assert result.get("failed") is True, (override, result)
        assert message in result["msg"], (message, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    assert tree_of(dest) == before


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
    assert "rootfs: blob %s failed verification" % new.blobs[("amd64", "rootfs")] in failed["msg"], failed["msg"]
    # Nothing was replaced, not even the layers that verified: no mix of versions in dest.
    assert files_in(dest) == {role: old.files[("amd64", role)] for role in ("initramfs", "kernel", "rootfs")}
    # Verified layers may wait as partial files for the next run; nothing of the corrupt one is left.
    leftovers = leftovers_in(dest, ("initramfs", "kernel", "rootfs"))
    assert not [name for name in leftovers if "rootfs" in name or name.endswith(".tmp")], leftovers


# ---- from real registries ----------------------------------------------------

RETRIES_FAST = {"retries": 2, "timeout": 5}


def repository_of(name: str) -> str:
    """registry.example.com/os/x:1 -> os/x:1, the path the tests push it under."""
    return name.split("/", 1)[1]


@pytest.fixture(scope="module")
def pushed(registry_plain, tmp_path_factory):
    """Ours, upstream and legacy images pushed byte for byte (skopeo --preserve-digests) to the plain registry."""
    workdir = tmp_path_factory.mktemp("pushed")
    layout = str(workdir / "layout")
    images = {
        OURS: build_ours(layout, OURS, workdir),
        UPSTREAM: write_upstream_image(layout, UPSTREAM, roles=("rootfs", "initramfs", "kernel", "squashfs")),
        LEGACY: write_upstream_image(layout, LEGACY, legacy=True, tag="legacy"),
    }
    store = OciLayout(layout)
    for name in images:
        skopeo_push(
            layout, name, "%s/%s" % (registry_plain.host, repository_of(name)), registry_plain.skopeo_flags("dest-")
        )
    images["digests"] = {name: store.resolve(name)["digest"] for name in images}
    images["layout"] = layout
    return images


def remote(registry, name: str, **extra):
    return dict(registry.registry_args, name="%s/%s" % (registry.host, repository_of(name)), **extra)


def test_registry_every_shape_platform_and_architecture(ansible, registry_plain, pushed, tmp_path):
    tasks, dests = [], []
    for name in (OURS, UPSTREAM, LEGACY):
        for platform, arch in COMBOS:
            dest = str(tmp_path / ("%s-%s-%s" % (name.rsplit("/", maxsplit=1)[-1], platform, arch)))
            dests.append((name, platform, arch, dest))
            tasks.append((MODULE, remote(registry_plain, name, platform=platform, architecture=arch, dest=dest)))
    auto_dest = str(tmp_path / "auto")
    tasks += [*tasks[:4], (MODULE, remote(registry_plain, UPSTREAM, platform="virtualization", dest=auto_dest))]
    results = run_tasks(ansible, str(tmp_path), tasks)

    for (name, platform, arch, dest), result in zip(dests, results[:12], strict=True):
        assert result["changed"] is True, result
        assert result["digest"] == pushed["digests"][name], "skopeo must have kept the digest"
        if name == OURS:
            assert files_in(dest) == expected_files(pushed[OURS], platform, arch), (platform, arch)
            assert result["config"] == {"commandLine": "console=ttyS0 arch=%s" % arch}
        else:
            assert files_in(dest) == upstream_files(pushed[name], platform, arch), (name, platform, arch)
            assert result["manifest_digest"] == pushed[name].manifests[arch]
        assert result["bytes_downloaded"] == sum(entry["size"] for entry in result["files"].values())
    for again in results[12:16]:
        assert again["changed"] is False and again["bytes_downloaded"] == 0, again
    auto = results[16]
    machine = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    assert auto["architecture"] == machine and files_in(auto_dest) == upstream_files(
        pushed[UPSTREAM], "virtualization", machine
    )


@pytest.mark.parametrize("fixture", ["registry_tls", "registry_token"])
def test_tls_and_authenticated_registries(ansible, request, pushed, tmp_path, fixture):
    registry = request.getfixturevalue(fixture)
    skopeo_push(pushed["layout"], OURS, "%s/%s" % (registry.host, repository_of(OURS)), registry.skopeo_flags("dest-"))
    dest = tmp_path / "dest"
    args = remote(registry, OURS, platform="baremetal", architecture="arm64", dest=str(dest))
    anonymous = {key: value for key, value in args.items() if key not in ("username", "password")}
    anonymous.update(docker_config=str(tmp_path / "no-config.json"), dest=str(tmp_path / "anonymous"))
    fetched, refused = run_tasks(ansible, str(tmp_path), [(MODULE, args), (MODULE, anonymous)])
    assert fetched["changed"] is True, fetched
    assert files_in(dest) == expected_files(pushed[OURS], "baremetal", "arm64")
    assert refused["failed"] is True and "requires authentication" in refused["msg"]
    assert not os.path.exists(tmp_path / "anonymous")
    assert registry.password not in json.dumps([fetched, refused])


@pytest.fixture(scope="module")
def faulty(registry_plain, tmp_path_factory):
    """Images with MiB-sized layers for interruptions, pushed to the plain registry."""
    workdir = tmp_path_factory.mktemp("faulty")
    layout = str(workdir / "layout")
    images = {}
    for tag in ("1", "2", "3", "4"):
        name = "registry.example.com/faults/image:" + tag
        images[tag] = write_upstream_image(layout, name, architectures=("amd64",), size=3 * 1024 * 1024 + 17, tag=tag)
        skopeo_push(
            layout, name, "%s/faults/image:%s" % (registry_plain.host, tag), registry_plain.skopeo_flags("dest-")
        )
    return images


def through(proxy, tag: str, dest, **extra):
    return dict(
        proxy.registry_args,
        name="%s/faults/image:%s" % (proxy.host, tag),
        platform="virtualization",
        architecture="amd64",
        dest=str(dest),
        **extra,
    )


def blob_requests(proxy, digest: str) -> list[str]:
    return [action for method, path, action in proxy.log if method == "GET" and path.endswith("/blobs/" + digest)]


def test_reset_mid_blob_resumes_with_range_within_a_run_and_across_runs(
    ansible, registry_plain, faulty, fault_proxy, tmp_path
):
    within, across = fault_proxy(registry_plain), fault_proxy(registry_plain)
    size = len(faulty["1"].files[("amd64", "rootfs")])
    rootfs_1, rootfs_2 = faulty["1"].blobs[("amd64", "rootfs")], faulty["2"].blobs[("amd64", "rootfs")]
    within.add("reset_response", method="GET", path="/blobs/" + rootfs_1, after_bytes=2_200_000)
    # Across runs: a reset, then the registry keeps failing, so the first run gives up with a partial file.
    across.add("reset_response", method="GET", path="/blobs/" + rootfs_2, after_bytes=1_500_000)
    across.add("status", method="GET", path="/blobs/" + rootfs_2, status=500, times=-1)
    first, gave_up = run_tasks(
        ansible,
        str(tmp_path),
        [
            (MODULE, through(within, "1", tmp_path / "a", **RETRIES_FAST)),
            (MODULE, through(across, "2", tmp_path / "b", retries=0)),
        ],
    )
    assert first["changed"] is True and files_in(tmp_path / "a") == {"rootfs": faulty["1"].files[("amd64", "rootfs")]}
    assert blob_requests(within, rootfs_1) == ["reset_response", "forward"]
    first_get, second_get = [
        headers for method, path, headers in within.requests if path.endswith("/blobs/" + rootfs_1)
    ]
    assert "range" not in first_get
    resumed_at = int(second_get["range"][len("bytes=") :].split("-")[0])
    # A bounded range: exactly the missing bytes.
    assert second_get["range"] == "bytes=%d-%d" % (resumed_at, size - 1) and 0 < resumed_at < size
    # Every byte was received once: the second GET asked for the rest only.
    assert first["bytes_downloaded"] == size
    # The resumed reset is a retry the user hears of, although the resumed attempt gained bytes.
    assert first["retries"] == 1, first
    (warning,) = first["warnings"]
    assert warning.startswith("resuming rootfs (%s) at byte %d of %d: " % (rootfs_1, resumed_at, size)), warning

    assert gave_up["failed"] is True and "run again to resume" in gave_up["msg"], gave_up
    (partial,) = [name for name in everything_in(tmp_path / "b" / ".ironcore") if name.endswith(".partial")]
    kept = os.path.getsize(tmp_path / "b" / ".ironcore" / partial)
    assert 0 < kept < size and files_in(tmp_path / "b") == {}
    across.clear()
    (resumed,) = run_tasks(ansible, str(tmp_path), [(MODULE, through(across, "2", tmp_path / "b"))])
    assert resumed["changed"] is True and resumed["bytes_downloaded"] == size - kept
    assert blob_requests(across, rootfs_2) == ["forward"]
    assert [
        headers.get("range") for _method, path, headers in across.requests if path.endswith("/blobs/" + rootfs_2)
    ] == ["bytes=%d-%d" % (kept, size - 1)]
    assert files_in(tmp_path / "b") == {"rootfs": faulty["2"].files[("amd64", "rootfs")]}
    assert everything_in(tmp_path / "b") == [".ironcore", "rootfs"]
    assert everything_in(tmp_path / "b" / ".ironcore") == [
        ".ironcore-fetch.lock",
        ".ironcore-fetch.state.json",
        "progress.json",
    ]


def test_corrupted_blob_in_registry_storage(ansible, registry_plain, faulty, tmp_path):
    dest = tmp_path / "dest"
    args = dict(registry_plain.registry_args, platform="baremetal", architecture="amd64", dest=str(dest))
    (first,) = run_tasks(ansible, str(tmp_path), [(MODULE, dict(args, name="%s/faults/image:3" % registry_plain.host))])
    assert first["changed"] is True
    before = files_in(dest)
    rootfs = faulty["4"].blobs[("amd64", "rootfs")]
    with open(blob_data_path(registry_plain.storage, rootfs), "r+b") as stream:
        stream.seek(2 * 1024 * 1024)
        stream.write(b"bit rot")
    (failed,) = run_tasks(
        ansible, str(tmp_path), [(MODULE, dict(args, name="%s/faults/image:4" % registry_plain.host))]
    )
    assert failed["failed"] is True
    assert "rootfs: blob %s failed verification: its content hashes to sha256:" % rootfs in failed["msg"], failed["msg"]
    assert files_in(dest) == before
    leftovers = leftovers_in(dest, ("initramfs", "kernel", "rootfs"))
    assert not [name for name in leftovers if "rootfs" in name or name.endswith(".tmp")], leftovers


def test_error_answers_and_stalls(ansible, registry_plain, faulty, fault_proxy, tmp_path):
    transient, persistent, stalled, stalled_once = (fault_proxy(registry_plain) for _number in range(4))
    rootfs = faulty["1"].blobs[("amd64", "rootfs")]
    transient.add("status", method="GET", path="/manifests/", status=503, times=1)
    transient.add("status", method="GET", path="/blobs/" + rootfs, status=429, times=1)
    transient.add("status", method="GET", path="/blobs/" + rootfs, status=502, times=1)
    persistent.add("status", method="GET", path="/blobs/" + rootfs, status=500, times=-1)
    stalled.add("stall", method="GET", path="/blobs/" + rootfs, seconds=20, times=-1)
    stalled_once.add("stall", method="GET", path="/blobs/" + rootfs, seconds=20, times=1)
    results = run_tasks(
        ansible,
        str(tmp_path),
        [
            (MODULE, through(transient, "1", tmp_path / "transient", **RETRIES_FAST)),
            (MODULE, through(persistent, "1", tmp_path / "persistent", retries=1)),
            (MODULE, through(stalled, "1", tmp_path / "stalled", retries=1, timeout=1)),
            (MODULE, through(stalled_once, "1", tmp_path / "stalled-once", retries=1, timeout=1)),
        ],
    )
    ok, failing, timed_out, recovered = results
    expected = {"rootfs": faulty["1"].files[("amd64", "rootfs")]}
    assert ok["changed"] is True and files_in(tmp_path / "transient") == expected
    assert [action for _method, _path, action in transient.log].count("status") == 3
    assert failing["failed"] is True and "HTTP 500" in failing["msg"] and "\n" not in failing["msg"], failing["msg"]
    # retries=1: the first request and one retry, no more.
    assert blob_requests(persistent, rootfs) == ["status", "status"]
    assert timed_out["failed"] is True and "did not answer within timeout=1s" in timed_out["msg"], timed_out["msg"]
    assert recovered["changed"] is True and files_in(tmp_path / "stalled-once") == expected
    assert files_in(tmp_path / "persistent") == {} and files_in(tmp_path / "stalled") == {}


class _OversizedManifests(http.server.BaseHTTPRequestHandler):
    """Answers every manifest GET with a 5 MiB JSON document: what docker-registry refuses to store."""

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "pad": "x" * (5 * 1024 * 1024),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        if "declared" in self.path:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:
        pass


def test_bad_inputs_against_a_registry(ansible, registry_plain, pushed, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OversizedManifests)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    oversized = "127.0.0.1:%d" % server.server_address[1]
    dest = tmp_path / "dest"
    try:
        good = remote(registry_plain, UPSTREAM, platform="baremetal", architecture="amd64", dest=str(dest))
        cases = [
            ({"name": "%s/os/absent:1" % registry_plain.host}, "MANIFEST_UNKNOWN"),
            (
                remote(registry_plain, LEGACY, layers=["squashfs"]),
                "the manifest has no squashfs layer (it has: rootfs, initramfs, kernel)",
            ),
            (
                remote(registry_plain, OURS, platform="virtualization", layers=["kernel"]),
                "the manifest has no kernel layer (it has: rootfs)",
            ),
            (
                {"digest": pushed["digests"][OURS]},
                "not the pinned digest %s; nothing was fetched" % pushed["digests"][OURS],
            ),
            ({"name": "os/upstream:1.0"}, "names no registry host"),
            ({"name": "%s/os/huge:declared" % oversized, "plain_http": True}, "more than a manifest may be (4 MiB)"),
            ({"name": "%s/os/huge:chunked" % oversized, "plain_http": True}, "more than a manifest may be (4 MiB)"),
            ({"filenames": {"rootfs": "../../etc/rootfs"}}, "is a path; give a plain file name"),
        ]
        results = run_tasks(ansible, str(tmp_path), [(MODULE, dict(good, **override)) for override, _message in cases])
    finally:
        server.shutdown()
        server.server_close()
    for (override, message), result in zip(cases, results, strict=True):
        assert result.get("failed") is True, (override, result)
        assert message in result["msg"], (message, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    assert not dest.exists()


def test_unusable_docker_config_and_malformed_config_size_fail_in_one_line(ansible, images, tmp_path):
    """Errors raised while opening the source or reading descriptors are module failures, not tracebacks."""
    broken = tmp_path / "config.json"
    broken.write_text("{bad")
    dest = tmp_path / "dest"
    # The registry is never contacted: the client cannot even be built.
    remote_args = {
        "name": "127.0.0.1:9/os/any:1",
        "plain_http": True,
        "docker_config": str(broken),
        "platform": "virtualization",
        "architecture": "amd64",
    }
    config_size = "registry.example.com/os/config-size:1"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.ironcore.image.config.v1+json", "digest": sha256(b"{}"), "size": "x"},
        "layers": [{"mediaType": "application/vnd.ironcore.image.rootfs", "digest": sha256(b"r"), "size": 1}],
    }
    write_raw_document(images["layout"], config_size, json.dumps(manifest).encode())
    layout_args = {
        "layout": images["layout"],
        "name": config_size,
        "platform": "virtualization",
        "architecture": "amd64",
    }
    cases = [
        ((MODULE, dict(remote_args, dest=str(dest))), "docker_config %s cannot be read" % broken),
        (("ironcore.image.ironcore_image_info", remote_args), "docker_config %s cannot be read" % broken),
        ((MODULE, dict(layout_args, dest=str(dest))), "the config descriptor of %s" % config_size),
        (("ironcore.image.ironcore_image_info", layout_args), "the config descriptor of %s" % config_size),
    ]
    results = run_tasks(ansible, str(tmp_path), [task for task, _message in cases])
    for (task, message), result in zip(cases, results, strict=True):
        assert result.get("failed") is True, (task, result)
        # An uncaught exception also fails the task, but its msg says "Task failed: Module failed: ...".
        assert result["msg"].startswith(message), (message, result["msg"])
        assert "module_stderr" not in result, result
        assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    assert not dest.exists()


@pytest.mark.parametrize(("given", "arch"), [("x86_64", "amd64"), ("aarch64", "arm64")])
def test_the_kernels_architecture_names_are_read_as_the_oci_ones(ansible, images, tmp_path, given, arch):
    dest = tmp_path / "dest"
    args = {"layout": images["layout"], "name": OURS, "platform": "virtualization", "dest": str(dest)}
    result = ansible.module("ironcore.image.ironcore_image_fetch", dict(args, architecture=given))
    assert result.get("failed") is not True, result.get("msg")
    assert result["architecture"] == arch
    assert files_in(dest) == expected_files(images[OURS], "virtualization", arch)
    described = ansible.module(
        "ironcore.image.ironcore_image_info",
        {"layout": images["layout"], "name": OURS, "platform": "virtualization", "architecture": given},
    )
    assert described.get("failed") is not True, described.get("msg")
    assert described["selected"]["architecture"] == arch
