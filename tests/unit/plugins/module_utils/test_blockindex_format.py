"""The block index format: hashing in any chunking, the zero map, and refusing indexes that do not add up."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _blockindex as bi

BLOCK = 4096


def layer_bytes() -> bytes:
    # three data blocks, two zero blocks, one data block, then a short zero tail
    return os.urandom(3 * BLOCK) + bytes(2 * BLOCK) + os.urandom(BLOCK) + bytes(100)


def index_of(data: bytes, chunk: int, block_size: int = BLOCK) -> bi.BlockIndex:
    hasher = bi.BlockHasher(block_size)
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    return hasher.finish("sha256:" + hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("chunk", [1000, BLOCK, 3 * BLOCK + 7, 1 << 20])
def test_hashes_do_not_depend_on_chunking(chunk):
    data = layer_bytes()
    index = index_of(data, chunk)
    assert index.blocks == 7
    for number in range(index.blocks):
        offset, length = index.block_span(number)
        assert index.block_hash(number) == hashlib.sha256(data[offset : offset + length]).digest()[:16]
    assert [index.is_zero(n) for n in range(7)] == [False, False, False, True, True, False, True]
    assert index.block_span(6) == (6 * BLOCK, 100)


@pytest.mark.parametrize("as_view", [False, True])
def test_blocks_that_only_start_with_zeros_are_hashed_not_taken_for_zero(as_view):
    almost = [bytes(BLOCK - 1) + b"\x01", bytes(BLOCK // 2) + os.urandom(BLOCK // 2), b"\x00" + os.urandom(BLOCK - 1)]
    data = b"".join(almost) + bytes(BLOCK)
    hasher = bi.BlockHasher(BLOCK)
    for start in range(0, len(data), 3000):
        chunk = data[start : start + 3000]
        hasher.update(memoryview(bytearray(chunk)) if as_view else chunk)
    index = hasher.finish("sha256:" + hashlib.sha256(data).hexdigest())
    assert [index.is_zero(n) for n in range(4)] == [False, False, False, True]
    for number in range(4):
        block = data[number * BLOCK : (number + 1) * BLOCK]
        assert index.block_hash(number) == hashlib.sha256(block).digest()[:16]


def test_an_index_spilled_to_a_file_encodes_as_one_held_in_memory(monkeypatch, tmp_path):
    monkeypatch.setattr(bi, "SPILL_SIZE", 48)  # a few blocks' hashes, so this layer spills many times
    data = layer_bytes() * 5
    layer_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    expected = index_of(data, 3000).encode()
    with open(tmp_path / "spill", "w+b") as spill:
        hasher = bi.BlockHasher(BLOCK, spill=spill)
        for start in range(0, len(data), 3000):
            hasher.update(data[start : start + 3000])
        assert spill.tell() > 0  # it did spill
        with open(tmp_path / "index", "w+b") as out:
            assert hasher.write_index(layer_digest, out) == len(expected)
            out.seek(0)
            assert out.read() == expected
    with pytest.raises(bi.BlockIndexError, match="write_index"):
        hasher.finish(layer_digest)


def test_round_trip_and_size():
    data = layer_bytes()
    index = index_of(data, 5000)
    encoded = index.encode()
    assert len(encoded) == index.header.encoded_size() == len(index.header.encode()) + 7 * 16 + 1
    decoded = bi.decode(encoded, index.header.layer_digest, len(data))
    assert decoded == index


def test_empty_layer_has_no_blocks():
    index = bi.BlockHasher().finish("sha256:" + hashlib.sha256(b"").hexdigest())
    assert index.blocks == 0 and bi.decode(index.encode()).blocks == 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "its header says"),
        (lambda b: b + b"\0", "its header says"),
        (lambda b: b.replace(b'"blockSize":4096', b'"blockSize":4095'), "power of two"),
        (lambda b: b.replace(b'"blocks":7', b'"blocks":8'), "block count"),
        (lambda b: b.replace(b'"version":1', b'"version":2'), "not supported"),
        (lambda b: b.split(b"\n", 1)[1], "header"),
        (lambda b: b"x" * 5000, "no header line"),
    ],
)
def test_bad_indexes_are_refused(damage, message):
    encoded = index_of(layer_bytes(), BLOCK).encode()
    with pytest.raises(bi.BlockIndexError, match=message):
        bi.decode(damage(encoded))


def test_index_for_another_layer_is_refused():
    data = layer_bytes()
    index = index_of(data, BLOCK)
    with pytest.raises(bi.BlockIndexError, match="is for"):
        bi.decode(index.encode(), layer_size=len(data) + 1)
    with pytest.raises(bi.BlockIndexError, match="describes"):
        bi.decode(index.encode(), layer_digest="sha256:" + "0" * 64)


def test_only_large_raw_roots_are_indexed():
    assert bi.wants_index("rootfs", bi.MIN_LAYER_SIZE, True)
    assert not bi.wants_index("rootfs", bi.MIN_LAYER_SIZE - 1, True)
    assert not bi.wants_index("kernel", 1 << 30, True)
    assert not bi.wants_index("squashfs", 1 << 30, False)
