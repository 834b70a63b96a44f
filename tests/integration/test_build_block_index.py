"""The block index ironcore_image_build writes, read back from the layout and recomputed here with hashlib."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

MODULE = "ironcore.image.ironcore_image_build"
NAME = "registry.example.com/os/gardenlinux:2.0"
MiB = 1024 * 1024
INDEX_MEDIA_TYPE = "application/vnd.ironcore.image.blockindex.v1"

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


def expected_index(path: str, block_size: int) -> tuple[bytes, bytes]:
    """(truncated sha256 of every block, the all-zero bitmap) of a file, block by block."""
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
            hashes += hashlib.sha256(block).digest()[:16]
            number += 1
    return bytes(hashes), bytes(zeros)


def layout_blob(layout: str, digest: str) -> bytes:
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as stream:
        data = stream.read()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def rootfs_summaries(result: dict) -> list[dict]:
    return [layer for manifest in result["manifests"] for layer in manifest["layers"] if layer["title"] == "rootfs"]


def check_index(data: bytes, rootfs: str, layer_digest: str, block_size: int) -> None:
    """Every field, every block hash and every zero bit, against the rootfs file itself."""
    header_line, _newline, body = data.partition(b"\n")
    header = json.loads(header_line)
    size = os.path.getsize(rootfs)
    blocks = -(-size // block_size)
    assert header == {
        "mediaType": INDEX_MEDIA_TYPE,
        "version": 1,
        "layer": {"digest": layer_digest, "size": size},
        "blockSize": block_size,
        "hash": "sha256",
        "hashLength": 16,
        "blocks": blocks,
    }
    hashes, zeros = expected_index(rootfs, block_size)
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
    assert block_index["block_size"] == 4096
    # Check mode hashed the same bytes and reports the same index.
    assert rootfs_summaries(checked) == summaries
    # Layers under 64 MiB get none.
    assert all(
        layer["block_index"] is None
        for manifest in built["manifests"]
        for layer in manifest["layers"]
        if layer["title"] != "rootfs"
    )

    data = layout_blob(layout, block_index["digest"])
    assert len(data) == block_index["size"]
    check_index(data, rootfs, layer_digest, 4096)

    again = ansible.module(MODULE, args)
    assert again["changed"] is False, again
    assert rootfs_summaries(again) == summaries


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


def test_block_size_option(ansible, rootfs, boot_files, tmp_path):
    layout = str(tmp_path / "layout")
    built = ansible.module(MODULE, build_args(layout, rootfs, boot_files, block_index_block_size=65536))
    block_index = rootfs_summaries(built)[0]["block_index"]
    assert block_index["block_size"] == 65536
    check_index(layout_blob(layout, block_index["digest"]), rootfs, rootfs_summaries(built)[0]["digest"], 65536)

    refused = ansible.module(
        MODULE, build_args(str(tmp_path / "refused"), rootfs, boot_files, block_index_block_size=1000)
    )
    assert refused.get("failed") is True
    assert refused["msg"].startswith("block_index_block_size: block size 1000 is not a power of two"), refused["msg"]
    assert not os.path.exists(str(tmp_path / "refused"))


def test_tar_gzip_layers_get_no_block_index(ansible, rootfs, boot_files, tmp_path):
    built = ansible.module(
        MODULE, build_args(str(tmp_path / "layout"), rootfs, boot_files, layer_format="tar+gzip", platforms=["kvm"])
    )
    assert built["changed"] is True, built
    assert [layer["block_index"] for layer in rootfs_summaries(built)] == [None]
