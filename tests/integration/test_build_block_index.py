"""The block index ironcore_image_build writes, read back from the layout and recomputed here (hashlib, xxhash)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request

import pytest
import xxhash
from helpers.inventory import local_host, write_inventory
from helpers.referrers_registry import ReferrersRegistry, api_listing

MODULE = "ironcore.image.ironcore_image_build"
BUILD_PLAYBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks", "build.yml"
)
NAME = "registry.example.com/os/gardenlinux:2.0"
MiB = 1024 * 1024
INDEX_MEDIA_TYPE = "application/vnd.ironcore.image.blockindex.v1"
LAYER_ANNOTATION = "org.ironcore.image.blockindex.layer"
REF_NAME = "org.opencontainers.image.ref.name"
# Each block hash as its own library computes it, and the format version that goes with it.
BLOCK_HASHES = {"xxh3-128": xxhash.xxh3_128_digest, "sha256": lambda block: hashlib.sha256(block).digest()[:16]}
VERSIONS = {"xxh3-128": 2, "sha256": 1}
EMPTY_CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
}

pytestmark = pytest.mark.integration


def random_region(path: str, offset: int, size: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        stream.write(os.urandom(size))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> str:
    """A 72 MiB + 1000 B raw disk: random regions, zero holes between them, a short random last block."""
    path = str(tmp_path_factory.mktemp("rootfs") / "rootfs.raw")
    subprocess.run(["truncate", "-s", str(72 * MiB + 1000), path], check=True)
    random_region(path, 0, 3 * MiB)
    # Not block-aligned: a block that is half random, half zero, must not count as zero.
    random_region(path, 40 * MiB + 100, 2 * MiB)
    subprocess.run(
        ["dd", "if=/dev/urandom", "of=" + path, "bs=1", "count=300", "seek=%d" % (72 * MiB + 700), "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="module")
def boot_files(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("boot")
    files = {}
    for role in ("kernel", "initramfs"):
        files[role] = str(directory / role)
        with open(files[role], "wb") as stream:
            stream.write(os.urandom(64 * 1024))
    return files


def build_args(layout: str, rootfs: str, boot_files: dict[str, str], **options) -> dict:
    artifact = {"architecture": "amd64", "rootfs": rootfs, **boot_files}
    return {"layout": layout, "name": NAME, "artifacts": [artifact], **options}


def expected_index(path: str, block_size: int, hash_name: str) -> tuple[bytes, bytes]:
    """(the 16-byte hash of every block, the all-zero bitmap) of a file, block by block."""
    hashes = bytearray()
    zeros = bytearray()
    number = 0
    with open(path, "rb") as stream:
        while True:
            block = stream.read(block_size)
            if not block:
                break
            if number % 8 == 0:
                zeros.append(0)
            if block.count(0) == len(block):
                zeros[number // 8] |= 1 << (number % 8)
            hashes += BLOCK_HASHES[hash_name](block)
            number += 1
    return bytes(hashes), bytes(zeros)


def skopeo_raw(layout: str, name: str) -> bytes:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "oci:%s:%s" % (layout, name)], check=True, capture_output=True
    ).stdout


def layout_blob(layout: str, digest: str) -> bytes:
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as stream:
        data = stream.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def attached_indexes(layout: str, manifest_digest: str) -> list[tuple[dict, dict]]:
    """(referrer manifest, its index layer) of every block index attached to a manifest, read off the files by hand.

    The referrers tag schema: the name sha256-<hex of the manifest> in index.json, an image index of referrers.
    """
    tag = manifest_digest.replace(":", "-", 1)
    with open(os.path.join(layout, "index.json"), "rb") as stream:
        names = json.load(stream)["manifests"]
    entries = [entry for entry in names if entry.get("annotations", {}).get(REF_NAME) == tag]
    if not entries:
        return []
    assert len(entries) == 1, entries
    referrers = json.loads(layout_blob(layout, entries[0]["digest"]))
    assert referrers["mediaType"] == "application/vnd.oci.image.index.v1+json"
    found = []
    for entry in referrers["manifests"]:
        if entry.get("artifactType") != INDEX_MEDIA_TYPE:
            continue
        manifest = json.loads(layout_blob(layout, entry["digest"]))
        assert manifest["artifactType"] == INDEX_MEDIA_TYPE
        assert manifest["config"] == EMPTY_CONFIG
        assert manifest["subject"]["digest"] == manifest_digest
        assert manifest["subject"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        (layer,) = manifest["layers"]
        assert layer["mediaType"] == INDEX_MEDIA_TYPE
        assert manifest["annotations"][LAYER_ANNOTATION] == layer["annotations"][LAYER_ANNOTATION]
        found.append((manifest, layer))
    return found


def rootfs_summaries(result: dict) -> list[dict]:
    return [layer for manifest in result["manifests"] for layer in manifest["layers"] if layer["title"] == "rootfs"]


def check_index(data: bytes, rootfs: str, layer_digest: str, block_size: int, hash_name: str = "xxh3-128") -> None:
    """Every field, every block hash and every zero bit, against the rootfs file itself."""
    header_line, _newline, body = data.partition(b"\n")
    header = json.loads(header_line)
    size = os.path.getsize(rootfs)
    blocks = -(-size // block_size)
    assert header == {
        "mediaType": INDEX_MEDIA_TYPE,
        "version": VERSIONS[hash_name],
        "layer": {"digest": layer_digest, "size": size},
        "blockSize": block_size,
        "hash": hash_name,
        "hashLength": 16,
        "blocks": blocks,
    }
    hashes, zeros = expected_index(rootfs, block_size, hash_name)
    assert body[: len(hashes)] == hashes
    assert body[len(hashes) :] == zeros
    # The fixture's zero holes are there, and the blocks touched by random bytes are not among them.
    zero_blocks = sum(bin(byte).count("1") for byte in zeros)
    random_blocks = -(-3 * MiB // block_size) + (2 * MiB // block_size + 1) + 1
    assert zero_blocks == blocks - random_blocks


def test_build_writes_a_block_index_of_every_block(ansible, rootfs, boot_files, tmp_path):
    layout = str(tmp_path / "layout")
    args = build_args(layout, rootfs, boot_files)

    checked = ansible.module(MODULE, args, check=True)
    assert checked["changed"] is True, checked
    assert not os.path.exists(layout)

    built = ansible.module(MODULE, args)
    assert built["changed"] is True, built
    layer_digest = (
        "sha256:" + subprocess.run(["sha256sum", rootfs], check=True, capture_output=True, text=True).stdout.split()[0]
    )
    summaries = rootfs_summaries(built)
    # The rootfs is in both platform manifests, one index describes it.
    assert len(summaries) == 2 and summaries[0] == summaries[1]
    assert summaries[0]["digest"] == layer_digest
    block_index = summaries[0]["block_index"]
    assert block_index["block_size"] == 4096 and block_index["hash"] == "xxh3-128"
    # Check mode hashed the same bytes and reports the same index.
    assert rootfs_summaries(checked) == summaries
    # Layers under 64 MiB get none.
    assert all(
        layer["block_index"] is None
        for manifest in built["manifests"]
        for layer in manifest["layers"]
        if layer["title"] != "rootfs"
    )

    # One referrer per platform manifest holding the rootfs, both naming the same index blob.
    for manifest in built["manifests"]:
        (attached,) = attached_indexes(layout, manifest["digest"])
        _referrer, layer = attached
        assert layer["annotations"][LAYER_ANNOTATION] == layer_digest
        assert (layer["digest"], layer["size"]) == (block_index["digest"], block_index["size"])
    data = layout_blob(layout, block_index["digest"])
    check_index(data, rootfs, layer_digest, 4096)

    again = ansible.module(MODULE, args)
    assert again["changed"] is False, again
    assert rootfs_summaries(again) == summaries

    # The rebuild took the layer from the digest cache and its index from the referrer: it read neither.
    # Were the layer blob read again, these zeros in its place would give another index, attached beside.
    blob = os.path.join(layout, "blobs", "sha256", layer_digest.split(":", 1)[1])
    with open(blob, "r+b") as stream:
        stream.write(bytes(3 * MiB))
    unread = ansible.module(MODULE, args)
    assert unread["changed"] is False, unread
    assert all(len(attached_indexes(layout, manifest["digest"])) == 1 for manifest in built["manifests"])

    # Another image of the same files (its own command line, so manifests of its own) is given the index
    # the layout already holds for the layer: with those zeros still in the blob, reading it would differ.
    artifact = dict(args["artifacts"][0], cmdline="console=ttyS1")
    other = ansible.module(MODULE, dict(args, name=NAME + "-other", artifacts=[artifact]))
    assert other["changed"] is True, other
    assert {manifest["digest"] for manifest in other["manifests"]}.isdisjoint(
        manifest["digest"] for manifest in built["manifests"]
    )
    assert rootfs_summaries(other) == summaries
    for manifest in other["manifests"]:
        ((_referrer, layer),) = attached_indexes(layout, manifest["digest"])
        assert (layer["digest"], layer["size"]) == (block_index["digest"], block_index["size"])


def test_block_index_leaves_the_image_unchanged(ansible, rootfs, boot_files, tmp_path):
    with_index = ansible.module(MODULE, build_args(str(tmp_path / "with"), rootfs, boot_files))
    layout = str(tmp_path / "without")
    without = ansible.module(MODULE, build_args(layout, rootfs, boot_files, block_index=False))
    assert without["changed"] is True, without
    assert without["digest"] == with_index["digest"]
    assert [m["digest"] for m in without["manifests"]] == [m["digest"] for m in with_index["manifests"]]
    assert all(layer["block_index"] is None for manifest in without["manifests"] for layer in manifest["layers"])
    index_digest = rootfs_summaries(with_index)[0]["block_index"]["digest"]
    assert not os.path.exists(os.path.join(layout, "blobs", "sha256", index_digest.split(":", 1)[1]))
    assert all(attached_indexes(layout, manifest["digest"]) == [] for manifest in without["manifests"])
    # skopeo reads every name of the image byte for byte as without the index.
    for name in without["refs"]:
        assert skopeo_raw(layout, name) == skopeo_raw(str(tmp_path / "with"), name)

    # A layout built before the index (here: without it) gets it on the next build, from one read of the blob,
    # and the rebuild after that reads nothing and changes nothing.
    later = ansible.module(MODULE, build_args(layout, rootfs, boot_files))
    assert later["changed"] is True, later
    assert rootfs_summaries(later) == rootfs_summaries(with_index)
    assert all(len(attached_indexes(layout, manifest["digest"])) == 1 for manifest in later["manifests"])
    check_index(layout_blob(layout, index_digest), rootfs, rootfs_summaries(later)[0]["digest"], 4096)
    assert ansible.module(MODULE, build_args(layout, rootfs, boot_files))["changed"] is False


def test_block_size_option(ansible, rootfs, boot_files, tmp_path):
    layout = str(tmp_path / "layout")
    built = ansible.module(MODULE, build_args(layout, rootfs, boot_files, block_index_block_size=65536))
    block_index = rootfs_summaries(built)[0]["block_index"]
    assert block_index["block_size"] == 65536
    check_index(layout_blob(layout, block_index["digest"]), rootfs, rootfs_summaries(built)[0]["digest"], 65536)
    # Another block size is another index, attached beside the first one.
    other = ansible.module(MODULE, build_args(layout, rootfs, boot_files))
    assert other["changed"] is True and rootfs_summaries(other)[0]["block_index"]["block_size"] == 4096
    manifest = other["manifests"][0]["digest"]
    assert sorted(layer["size"] for _referrer, layer in attached_indexes(layout, manifest)) == sorted(
        [block_index["size"], rootfs_summaries(other)[0]["block_index"]["size"]]
    )

    refused = ansible.module(
        MODULE, build_args(str(tmp_path / "refused"), rootfs, boot_files, block_index_block_size=1000)
    )
    assert refused.get("failed") is True
    assert refused["msg"].startswith("block_index_block_size: block size 1000 is not a power of two"), refused["msg"]
    assert not os.path.exists(str(tmp_path / "refused"))


def test_block_index_hash_option(ansible, rootfs, boot_files, tmp_path):
    layout = str(tmp_path / "layout")
    # sha256 writes format v1, what nodes with releases before v2 read.
    v1 = ansible.module(MODULE, build_args(layout, rootfs, boot_files, block_index_hash="sha256"))
    v1_index = rootfs_summaries(v1)[0]["block_index"]
    assert v1_index["hash"] == "sha256", v1_index
    check_index(layout_blob(layout, v1_index["digest"]), rootfs, rootfs_summaries(v1)[0]["digest"], 4096, "sha256")
    # The default hash is another index, attached beside the v1 one rather than taken for it.
    v2 = ansible.module(MODULE, build_args(layout, rootfs, boot_files))
    assert v2["changed"] is True, v2
    v2_index = rootfs_summaries(v2)[0]["block_index"]
    assert v2_index["hash"] == "xxh3-128" and v2_index["digest"] != v1_index["digest"], v2_index
    check_index(layout_blob(layout, v2_index["digest"]), rootfs, rootfs_summaries(v2)[0]["digest"], 4096)
    manifest = v2["manifests"][0]["digest"]
    assert sorted(layer["digest"] for _referrer, layer in attached_indexes(layout, manifest)) == sorted(
        [v1_index["digest"], v2_index["digest"]]
    )


def test_tar_gzip_layers_get_no_block_index(ansible, rootfs, boot_files, tmp_path):
    built = ansible.module(
        MODULE, build_args(str(tmp_path / "layout"), rootfs, boot_files, layer_format="tar+gzip", platforms=["kvm"])
    )
    assert built["changed"] is True, built
    assert [layer["block_index"] for layer in rootfs_summaries(built)] == [None]


# ---- push carries the referrers (the referrers engineer's carrying, step 2) ----------------------------------------


@pytest.mark.parametrize("fixture", ["registry_plain", "registry_referrers"])
def test_push_carries_the_block_index_to_the_registry(ansible, rootfs, boot_files, tmp_path, request, fixture):
    """distribution 2.8 has no referrers API: the index is found through the sha256-<hex> tag, read with skopeo.

    A registry with the API lists it itself: no tag is written, the API's answer lists it.
    """
    registry = request.getfixturevalue(fixture)
    layout = str(tmp_path / "layout")
    built = ansible.module(MODULE, build_args(layout, rootfs, boot_files, platforms=["virtualization"]))
    repository = "%s/blockindex/os" % registry.host
    args = {"layout": layout, "name": NAME, "destination": repository + ":2.0", **registry.registry_args}
    pushed = ansible.module("ironcore.image.ironcore_image_push", args)
    assert pushed.get("failed") is not True, pushed

    def remote(reference: str) -> bytes:
        proc = subprocess.run(
            ["skopeo", "inspect", "--raw", *registry.skopeo_flags(), "docker://%s%s" % (repository, reference)],
            check=False,
            capture_output=True,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    # The image's own names hold the layout's exact bytes.
    assert remote(":2.0") == skopeo_raw(layout, NAME)
    (manifest,) = built["manifests"]
    (attached,) = attached_indexes(layout, manifest["digest"])
    tag = manifest["digest"].replace(":", "-", 1)
    if isinstance(registry, ReferrersRegistry):
        referrers = api_listing(registry, "blockindex/os", manifest["digest"], INDEX_MEDIA_TYPE)
        tags = subprocess.run(
            ["skopeo", "list-tags", *registry.skopeo_flags(), "docker://%s" % repository],
            check=True,
            capture_output=True,
        )
        assert tag not in json.loads(tags.stdout)["Tags"]
    else:
        referrers = json.loads(remote(":" + tag))
    (entry,) = [entry for entry in referrers["manifests"] if entry.get("artifactType") == INDEX_MEDIA_TYPE]
    remote_referrer = remote("@" + entry["digest"])
    assert json.loads(remote_referrer) == attached[0]
    index_layer = attached[1]
    with urllib.request.urlopen(
        "http://%s/v2/blockindex/os/blobs/%s" % (registry.host, index_layer["digest"]), timeout=60
    ) as response:
        data = response.read()
    assert data == layout_blob(layout, index_layer["digest"])
    check_index(data, rootfs, rootfs_summaries(built)[0]["digest"], 4096)


def index_headers(layout: str) -> list[dict]:
    """The header of every block index blob the layout holds, found by its first bytes."""
    headers = []
    directory = os.path.join(layout, "blobs", "sha256")
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as stream:
            head = stream.read(4096)
        if head.startswith(b'{"blockSize":'):
            headers.append(json.loads(head.split(b"\n", 1)[0]))
    return headers


def test_the_build_role_passes_its_block_index_hash(ansible, rootfs, boot_files, tmp_path):
    artifacts = [{"architecture": "amd64", "rootfs": rootfs, **boot_files}]
    hosts = {
        label: local_host(build_name=NAME, build_layout=str(tmp_path / label), build_artifacts=artifacts, **extra)
        for label, extra in (("v2", {}), ("v1", {"build_block_index_hash": "sha256"}))
    }
    inventory = write_inventory(str(tmp_path / "hosts.yml"), {"build_hosts": hosts})
    rc, _document, stderr = ansible.playbook(BUILD_PLAYBOOK, inventory=inventory)
    assert rc == 0, stderr
    assert [(h["version"], h["hash"]) for h in index_headers(str(tmp_path / "v2"))] == [(2, "xxh3-128")]
    assert [(h["version"], h["hash"]) for h in index_headers(str(tmp_path / "v1"))] == [(1, "sha256")]
