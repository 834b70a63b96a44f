"""The block index format: hashing in any chunking, the zero map, and refusing indexes that do not add up."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import xxhash

from ansible_collections.ironcore.image.plugins.module_utils import _blockindex as bi

BLOCK = 4096
# Each hash as its own library computes it, 16 bytes: what an index of that hash must hold for each block.
REFERENCE = {
    "sha256": lambda block: hashlib.sha256(block).digest()[:16],
    "xxh3-128": xxhash.xxh3_128_digest,
}


def layer_bytes() -> bytes:
    # three data blocks, two zero blocks, one data block, then a short zero tail
    return os.urandom(3 * BLOCK) + bytes(2 * BLOCK) + os.urandom(BLOCK) + bytes(100)


def index_of(data: bytes, chunk: int, block_size: int = BLOCK, hash_name: str = bi.DEFAULT_HASH) -> bi.BlockIndex:
    hasher = bi.BlockHasher(block_size, hash_name=hash_name)
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    return hasher.finish("sha256:" + hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("hash_name", sorted(REFERENCE))
@pytest.mark.parametrize("chunk", [1000, BLOCK, 3 * BLOCK + 7, 1 << 20])
def test_hashes_do_not_depend_on_chunking(chunk, hash_name):
    data = layer_bytes()
    index = index_of(data, chunk, hash_name=hash_name)
    assert index.blocks == 7 and index.header.hash == hash_name
    for number in range(index.blocks):
        offset, length = index.block_span(number)
        assert index.block_hash(number) == REFERENCE[hash_name](data[offset : offset + length])
    assert [index.is_zero(n) for n in range(7)] == [False, False, False, True, True, False, True]
    assert index.block_span(6) == (6 * BLOCK, 100)


@pytest.mark.parametrize("hash_name", sorted(REFERENCE))
@pytest.mark.parametrize("as_view", [False, True])
def test_blocks_that_only_start_with_zeros_are_hashed_not_taken_for_zero(as_view, hash_name):
    almost = [bytes(BLOCK - 1) + b"\x01", bytes(BLOCK // 2) + os.urandom(BLOCK // 2), b"\x00" + os.urandom(BLOCK - 1)]
    data = b"".join(almost) + bytes(BLOCK)
    hasher = bi.BlockHasher(BLOCK, hash_name=hash_name)
    for start in range(0, len(data), 3000):
        chunk = data[start : start + 3000]
        hasher.update(memoryview(bytearray(chunk)) if as_view else chunk)
    index = hasher.finish("sha256:" + hashlib.sha256(data).hexdigest())
    assert [index.is_zero(n) for n in range(4)] == [False, False, False, True]
    for number in range(4):
        block = data[number * BLOCK : (number + 1) * BLOCK]
        assert index.block_hash(number) == REFERENCE[hash_name](block)


@pytest.mark.parametrize("hash_name", sorted(REFERENCE))
@pytest.mark.parametrize("chunk", [BLOCK, 5 * BLOCK + 1, 1 << 20])
def test_the_zero_map_is_exact_across_its_bytes_in_any_chunking(chunk, hash_name):
    generator = random.Random(chunk)
    zero = [generator.random() < 0.5 for _number in range(301)]
    data = b"".join(bytes(BLOCK) if is_zero else generator.randbytes(BLOCK) for is_zero in zero)
    index = index_of(data, chunk, hash_name=hash_name)
    assert [index.is_zero(n) for n in range(index.blocks)] == zero
    assert len(index.zeros) == 38
    assert index.hashes == b"".join(REFERENCE[hash_name](data[at : at + BLOCK]) for at in range(0, len(data), BLOCK))


def test_a_block_whose_hash_equals_the_zero_blocks_is_only_zero_when_its_bytes_are(monkeypatch):
    # A hash that gives every block the same value: a data block collides with the zero block.
    monkeypatch.setattr(bi, "block_hash_function", lambda name, length: lambda block: bytes(16))
    data = os.urandom(BLOCK) + bytes(BLOCK)
    hasher = bi.BlockHasher(BLOCK)
    hasher.update(data)
    index = hasher.finish("sha256:" + hashlib.sha256(data).hexdigest())
    assert [index.is_zero(n) for n in range(2)] == [False, True]


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


@pytest.mark.parametrize("hash_name", sorted(REFERENCE))
def test_round_trip_and_size(hash_name):
    data = layer_bytes()
    index = index_of(data, 5000, hash_name=hash_name)
    encoded = index.encode()
    assert len(encoded) == index.header.encoded_size() == len(index.header.encode()) + 7 * 16 + 1
    decoded = bi.decode(encoded, index.header.layer_digest, len(data))
    assert decoded == index and decoded.header.hash == hash_name


LAYER = "sha256:" + "ab" * 32


def test_v2_is_the_default_and_names_xxh3_in_its_header():
    header = bi.Header(LAYER, 5 * BLOCK + 1, BLOCK, 16)
    assert header.encode() == (
        b'{"blockSize":4096,"blocks":6,"hash":"xxh3-128","hashLength":16,"layer":{"digest":"%s","size":20481},'
        b'"mediaType":"application/vnd.ironcore.image.blockindex.v1","version":2}\n' % LAYER.encode()
    )
    assert bi.decode_header(header.encode()[:-1]) == header


def test_a_sha256_header_is_the_v1_header_byte_for_byte():
    # What releases before format v2 wrote and read: an index built with sha256 keeps working on them.
    v1 = (
        b'{"blockSize":4096,"blocks":6,"hash":"sha256","hashLength":16,"layer":{"digest":"%s","size":20481},'
        b'"mediaType":"application/vnd.ironcore.image.blockindex.v1","version":1}' % LAYER.encode()
    )
    header = bi.decode_header(v1)
    assert header == bi.Header(LAYER, 5 * BLOCK + 1, BLOCK, 16, "sha256") and header.version == 1
    assert header.encode() == v1 + b"\n"


@pytest.mark.parametrize(
    ("name", "version", "hash_length"),
    [("sha256", 2, 16), ("xxh3-128", 1, 16), ("md5", 2, 16), ("xxh3-128", 2, 32), ("sha256", 1, 33)],
)
def test_a_hash_that_does_not_go_with_its_version_or_length_is_refused(name, version, hash_length):
    line = bi.Header(LAYER, BLOCK, BLOCK, 16, "sha256").encode()[:-1]
    line = line.replace(b'"hash":"sha256"', b'"hash":"%s"' % name.encode())
    line = line.replace(b'"version":1', b'"version":%d' % version)
    line = line.replace(b'"hashLength":16', b'"hashLength":%d' % hash_length)
    with pytest.raises(bi.BlockIndexError, match="not supported"):
        bi.decode_header(line)


def test_the_build_refuses_a_hash_it_does_not_know():
    with pytest.raises(bi.BlockIndexError, match="block hash 'md5' is not one of xxh3-128, sha256"):
        bi.BlockHasher(hash_name="md5")
    with pytest.raises(bi.BlockIndexError, match="between 16 and 16 for xxh3-128"):
        bi.BlockHasher(hash_length=32)


def test_xxh3_without_its_package_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "xxhash", None)
    with pytest.raises(bi.BlockIndexError) as caught:
        bi.block_hash_function("xxh3-128", 16)
    assert str(caught.value) == "the block hash xxh3-128 needs the Python package xxhash: pip install xxhash"
    assert bi.block_hash_function("sha256", 16)(b"") == hashlib.sha256(b"").digest()[:16]


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
        (lambda b: b.replace(b'"version":2', b'"version":1'), "not supported"),
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
