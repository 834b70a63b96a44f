# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The block index of a raw layer: one strong hash per fixed-size block.

A node that holds an older rootfs can rebuild a new one from the blocks it
already has and fetch only the rest, if it knows the hash of every block of
the new layer. That list is the block index, a blob of its own attached to
the platform manifest as a referrer. Its format (documented in
docs/image-format.md):

    one line of canonical JSON (the header), then a newline;
    `blocks` hashes of `hashLength` bytes each: the hash the header names
    (`hash`) of every block, the last block hashed over its real length;
    the all-zero map: ceil(blocks / 8) bytes, bit i % 8 (least significant
    first) of byte i // 8 set when block i holds only zero bytes.

Format v2 (the default) hashes blocks with xxh3-128; format v1, which every
release reads, with the first bytes of sha256. The header's `version` and
`hash` go together: (1, sha256) or (2, xxh3-128).

Nothing in the index needs trust, so its hash need not be cryptographic: a
wrong or colliding block hash can only make a node fetch more, because the
assembled file is checked against the layer's own digest before it is used.
This file still refuses any index that does not add up, so a bad one is
noticed early and the node falls back to a full fetch.
Nothing here does I/O beyond the stream it is handed.
"""

from __future__ import annotations

import hashlib
import json
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import canonical_json

MEDIA_TYPE = "application/vnd.ironcore.image.blockindex.v1"
ARTIFACT_TYPE = MEDIA_TYPE
# Annotation on the index layer (and its referrer manifest): the layer it describes.
LAYER_ANNOTATION = "org.ironcore.image.blockindex.layer"
INDEXED_ROLES = frozenset({"rootfs", "squashfs", "iso"})
# Below this a full fetch is cheap enough that an index is not worth its referrer.
MIN_LAYER_SIZE = 64 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 4096
# 128 bits keep accidental collisions out of reach at a quarter of a full digest's size.
DEFAULT_HASH_LENGTH = 16
MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 16 * 1024 * 1024
MIN_HASH_LENGTH = 16
# The header is a few hundred bytes; anything much larger is not one.
MAX_HEADER_SIZE = 4096
SHA256 = "sha256"
XXH3_128 = "xxh3-128"
# What `bench/block_hash.py` measured fastest per 4 KiB block (docs/performance.md): 5.9x sha256's speed.
DEFAULT_HASH = XXH3_128
# The format version that goes with each hash: v1 (sha256) is what every release reads, so an image built
# with it still gives older nodes a delta; v2 names the faster hash.
FORMAT_VERSIONS = {SHA256: 1, XXH3_128: 2}
HASHES = (XXH3_128, SHA256)
# Longest hash each one gives; shorter hash lengths take its first bytes.
DIGEST_SIZES = {SHA256: 32, XXH3_128: 16}
# The Python package that provides a hash, when it is not the standard library's.
HASH_PACKAGES = {XXH3_128: "xxhash"}

BlockHash = t.Callable[[t.Any], bytes]


class BlockIndexError(ImageError):
    """A block index that cannot be used; the caller falls back to a full fetch."""


def check_block_size(block_size: int) -> int:
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise BlockIndexError(
            f"block size {block_size} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}",
            option="block_index_block_size",
        )
    return block_size


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def zero_map_size(blocks: int) -> int:
    return -(-blocks // 8)


def check_hash(name: str, hash_length: int) -> None:
    if name not in FORMAT_VERSIONS:
        raise BlockIndexError("block hash %r is not one of %s" % (name, ", ".join(HASHES)))
    if not MIN_HASH_LENGTH <= hash_length <= DIGEST_SIZES[name]:
        raise BlockIndexError(
            "hash length %d is not between %d and %d for %s" % (hash_length, MIN_HASH_LENGTH, DIGEST_SIZES[name], name)
        )


def block_hash_function(name: str, hash_length: int) -> BlockHash:
    """The function that hashes one block (any buffer) into the `hash_length` bytes an index of `name` holds."""
    check_hash(name, hash_length)
    if name == XXH3_128:
        try:
            # Imported here: only an index of this hash needs the package (a v1 index does not).
            import xxhash
        except ImportError as exc:
            raise BlockIndexError(
                "the block hash %s needs the Python package xxhash: pip install xxhash" % name
            ) from exc
        xxh3_128: BlockHash = xxhash.xxh3_128_digest
        return xxh3_128
    if hash_length == DIGEST_SIZES[SHA256]:
        return lambda block: hashlib.sha256(block).digest()
    return lambda block: hashlib.sha256(block).digest()[:hash_length]


def wants_index(role: str, size: int, media_type_is_raw: bool) -> bool:
    """Whether a layer of this role and size gets a block index at build time."""
    return media_type_is_raw and role in INDEXED_ROLES and size >= MIN_LAYER_SIZE


@dataclass(frozen=True)
class Header:
    layer_digest: str
    layer_size: int
    block_size: int
    hash_length: int
    hash: str = DEFAULT_HASH

    @property
    def blocks(self) -> int:
        return block_count(self.layer_size, self.block_size)

    @property
    def version(self) -> int:
        return FORMAT_VERSIONS[self.hash]

    def hash_function(self) -> BlockHash:
        return block_hash_function(self.hash, self.hash_length)

    def encode(self) -> bytes:
        # A sha256 header is byte for byte the v1 one, so a v1 index keeps its digest across releases.
        return (
            canonical_json(
                {
                    "mediaType": MEDIA_TYPE,
                    "version": self.version,
                    "layer": {"digest": self.layer_digest, "size": self.layer_size},
                    "blockSize": self.block_size,
                    "hash": self.hash,
                    "hashLength": self.hash_length,
                    "blocks": self.blocks,
                }
            )
            + b"\n"
        )

    def encoded_size(self) -> int:
        """Size of the whole index this header starts."""
        return len(self.encode()) + self.blocks * self.hash_length + zero_map_size(self.blocks)


# Hashes a BlockHasher with a spill file holds before it writes them there: 1 MiB is 256 MiB of layer.
SPILL_SIZE = 1024 * 1024


class BlockHasher:
    """Hashes a stream, handed over in chunks of any size, block by block.

    The build feeds it the chunks it copies into the layout, so the index
    costs no second read of the layer.
    """

    def __init__(
        self,
        block_size: int = DEFAULT_BLOCK_SIZE,
        hash_length: int = DEFAULT_HASH_LENGTH,
        spill: t.Any = None,
        hash_name: str = DEFAULT_HASH,
    ):
        self.block_size = check_block_size(block_size)
        self._hash = block_hash_function(hash_name, hash_length)
        self.hash_name = hash_name
        self.hash_length = hash_length
        self.blocks = 0
        self.size = 0
        self._hashes = bytearray()
        self._zeros = bytearray()
        self._pending = bytearray()
        # With a spill file (binary, read-write), the hashes go there as they pile up, so memory
        # stays flat whatever the layer's size; write_index() reads them back.
        self._spill = spill
        self._spilled = 0
        self._zero_block = bytes(block_size)
        self._zero_digest = self._hash(self._zero_block)
        # A block at a time for sha256 (v1), whose zero blocks are cheaper compared than hashed.
        self._batched = hash_name == XXH3_128
        self._zero_run = b""

    def update(self, data: t.Any) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        if self._pending:
            taken = self.block_size - len(self._pending)
            self._pending += view[:taken]
            view = view[taken:]
            if len(self._pending) < self.block_size:
                return
            self._add_block(bytes(self._pending))
            self._pending.clear()
        whole = len(view) - len(view) % self.block_size
        if self._batched:
            self._add_blocks(view[:whole])
        else:
            for offset in range(0, whole, self.block_size):
                self._add_block(view[offset : offset + self.block_size])
        self._pending += view[whole:]
        if self._spill is not None and len(self._hashes) >= SPILL_SIZE:
            self._spill.write(self._hashes)
            self._spilled += len(self._hashes)
            self._hashes.clear()

    def _add_blocks(self, view: memoryview) -> None:
        """Whole blocks, hashed in one comprehension: a method call per block cost as much as xxh3 itself.

        Zero blocks are hashed like the others (xxh3 hashes 4 KiB faster than
        Python compares it with zeros); a block is a zero one when its hash
        is the zero block's and its bytes are zeros, as _add_block decides.
        """
        size = self.block_size
        digests = [self._hash(view[at : at + size]) for at in range(0, len(view), size)]
        first = self.blocks
        self.blocks += len(digests)
        self._zeros += bytes(zero_map_size(self.blocks) - len(self._zeros))
        if self._zero_digest in digests:
            candidates = [number for number, digest in enumerate(digests) if digest == self._zero_digest]
            for run_first, run_end in self._zero_runs(view, candidates):
                self._mark_zero(first + run_first, first + run_end)
        self._hashes += b"".join(digests)

    def _zero_runs(self, view: memoryview, candidates: list[int]) -> t.Iterator[tuple[int, int]]:
        """[first, end) runs of the blocks hashed like the zero block whose bytes are zeros: a run compared at
        once (one memcmp), block by block only in a run that holds another block."""
        size = self.block_size
        if len(self._zero_run) < len(view):
            self._zero_run = bytes(len(view))
        start = 0
        while start < len(candidates):
            end = start + 1
            while end < len(candidates) and candidates[end] == candidates[end - 1] + 1:
                end += 1
            first, last = candidates[start], candidates[end - 1]
            if self._zero_run.startswith(view[first * size : (last + 1) * size]):
                yield first, last + 1
            else:
                for number in candidates[start:end]:
                    if self._zero_run.startswith(view[number * size : (number + 1) * size]):
                        yield number, number + 1
            start = end

    def _mark_zero(self, first: int, end: int) -> None:
        """Set the zero map's bits of blocks [first, end): whole bytes at once where the run covers them."""
        while first < end and first & 7:
            self._zeros[first >> 3] |= 1 << (first & 7)
            first += 1
        whole = (end - first) >> 3
        self._zeros[first >> 3 : (first >> 3) + whole] = b"\xff" * whole
        first += whole << 3
        while first < end:
            self._zeros[first >> 3] |= 1 << (first & 7)
            first += 1

    def _add_block(self, block: t.Any, zero_digest: bytes | None = None) -> None:
        # A raw disk image is mostly zeros, and comparing a block with zeros costs a fifth of hashing
        # it; a block whose first byte is not zero (nearly every block of data) skips even the copy.
        if zero_digest is None and block[0] == 0 and bytes(block) == self._zero_block:
            digest, zero = self._zero_digest, True
        else:
            digest = self._hash(block)
            # A hash equal to the zero block's is confirmed on the bytes: the zero map stays exact whatever
            # the hash (a block crafted to collide with zeros under xxh3 is not taken for a hole).
            zero = digest == (zero_digest or self._zero_digest) and bytes(block) == bytes(len(block))
        if self.blocks % 8 == 0:
            self._zeros.append(0)
        if zero:
            self._zeros[self.blocks >> 3] |= 1 << (self.blocks & 7)
        self._hashes += digest
        self.blocks += 1

    def _last_block(self) -> None:
        if self._pending:
            tail = bytes(self._pending)
            self._pending.clear()
            self._add_block(tail, self._hash(bytes(len(tail))))

    def write_index(self, layer_digest: str, out: t.Any) -> int:
        """Write the encoded index of everything fed so far to `out`, spilled hashes streamed back; its size."""
        self._last_block()
        header = Header(layer_digest, self.size, self.block_size, self.hash_length, self.hash_name).encode()
        out.write(header)
        if self._spill is not None:
            self._spill.seek(0)
            left = self._spilled
            while left > 0:
                chunk = self._spill.read(min(left, SPILL_SIZE))
                if not chunk:
                    raise BlockIndexError("the block index's spill file ended %d bytes early" % left)
                out.write(chunk)
                left -= len(chunk)
        out.write(self._hashes)
        out.write(self._zeros)
        return len(header) + self._spilled + len(self._hashes) + len(self._zeros)

    def finish(self, layer_digest: str) -> BlockIndex:
        """The index of everything fed so far; `layer_digest` is the layer's sha256, taken beside it."""
        if self._spilled:
            raise BlockIndexError("the hashes went to a spill file: write_index() writes this index")
        self._last_block()
        header = Header(layer_digest, self.size, self.block_size, self.hash_length, self.hash_name)
        index = BlockIndex(header, bytes(self._hashes), bytes(self._zeros))
        # The hashes are 0.4 % of the layer (16 MiB for 4 GiB): the hasher lets go of its own copy, so
        # that only the index holds them. The hasher is spent.
        self._hashes, self._zeros = bytearray(), bytearray()
        return index


@dataclass(frozen=True)
class BlockIndex:
    header: Header
    hashes: bytes
    zeros: bytes

    @property
    def blocks(self) -> int:
        return self.header.blocks

    def block_hash(self, number: int) -> bytes:
        start = number * self.header.hash_length
        return self.hashes[start : start + self.header.hash_length]

    def is_zero(self, number: int) -> bool:
        return bool(self.zeros[number >> 3] & (1 << (number & 7)))

    def block_span(self, number: int) -> tuple[int, int]:
        """(offset, length) of a block in the layer; the last one may be short."""
        offset = number * self.header.block_size
        return offset, min(self.header.block_size, self.header.layer_size - offset)

    def encode(self) -> bytes:
        # One join, one allocation: `a + b + c` would build a layer-sized intermediate first.
        return b"".join((self.header.encode(), self.hashes, self.zeros))


def _field(header: t.Mapping[str, t.Any], name: str, kind: type) -> t.Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BlockIndexError(f"block index header field {name!r} is missing or not a {kind.__name__}")
    return value


def decode_header(line: bytes) -> Header:
    try:
        header = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BlockIndexError("block index header is not JSON") from exc
    if not isinstance(header, dict) or header.get("mediaType") != MEDIA_TYPE:
        raise BlockIndexError(f"block index header does not name {MEDIA_TYPE}")
    name = header.get("hash")
    if not isinstance(name, str) or FORMAT_VERSIONS.get(name) != header.get("version"):
        raise BlockIndexError(f"block index version {header.get('version')!r}/{name!r} is not supported")
    layer = header.get("layer")
    if not isinstance(layer, dict):
        raise BlockIndexError("block index header has no layer")
    digest = _field(layer, "digest", str)
    size = _field(layer, "size", int)
    if not digest.startswith("sha256:") or len(digest) != 71 or size < 0:
        raise BlockIndexError("block index header names no valid layer digest and size")
    block_size = check_block_size(_field(header, "blockSize", int))
    hash_length = _field(header, "hashLength", int)
    if not MIN_HASH_LENGTH <= hash_length <= DIGEST_SIZES[name]:
        raise BlockIndexError(f"block index hash length {hash_length} is not supported for {name}")
    decoded = Header(digest, size, block_size, hash_length, name)
    if _field(header, "blocks", int) != decoded.blocks:
        raise BlockIndexError("block index block count does not match its layer size")
    return decoded


def decode(data: bytes | bytearray, layer_digest: str | None = None, layer_size: int | None = None) -> BlockIndex:
    """Parse and check an index; with `layer_digest`/`layer_size`, it must describe that layer."""
    end = data.find(b"\n", 0, MAX_HEADER_SIZE)
    if end < 0:
        raise BlockIndexError("block index has no header line")
    header = decode_header(bytes(data[:end]))
    if layer_digest is not None and header.layer_digest != layer_digest:
        raise BlockIndexError(f"block index describes {header.layer_digest}, not {layer_digest}")
    if layer_size is not None and header.layer_size != layer_size:
        raise BlockIndexError(f"block index is for {header.layer_size} bytes, the layer has {layer_size}")
    body = memoryview(data)[end + 1 :]
    hashes_size = header.blocks * header.hash_length
    if len(body) != hashes_size + zero_map_size(header.blocks):
        raise BlockIndexError(f"block index is {len(data)} bytes, its header says {header.encoded_size()}")
    return BlockIndex(header, bytes(body[:hashes_size]), bytes(body[hashes_size:]))
