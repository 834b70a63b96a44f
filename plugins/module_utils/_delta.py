# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Delta fetch: rebuild a raw layer from local seeds plus ranges of the blob.

A node that holds an older rootfs (the file at dest, the previous release
kept by the provision role, a block device) already has most blocks of the
new one. With the layer's block index (see _blockindex), every block of the
new layer is

- a hole, when the index marks it all-zero (the file is sparse);
- read from a seed whose block hashes to the same value, and confirmed by
  hashing the bytes read;
- or fetched, in single-range GETs of neighbouring blocks (gaps up to
  MAX_GAP are fetched with them), in parallel, each resumed on a reset.

The assembled file is hashed in order, every byte, and must equal the
layer's digest before the fetch may rename it into place. The index is
therefore never trusted: a wrong one can only make the node fetch more, or
make the delta fail and the full download follow. Anything that goes wrong
raises DeltaAbandoned, whose reason the fetch reports before it downloads the
whole blob the usual way.
"""

from __future__ import annotations

import array
import errno
import hashlib
import itertools
import json
import os
import re
import stat
import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ansible_collections.ironcore.image.plugins.module_utils._blockindex import (
    ARTIFACT_TYPE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_HASH,
    DEFAULT_HASH_LENGTH,
    LAYER_ANNOTATION,
    MAX_BLOCK_SIZE,
    MAX_HEADER_SIZE,
    BlockIndex,
    BlockIndexError,
    Header,
    block_count,
    block_hash_function,
    decode,
    decode_header,
)
from ansible_collections.ironcore.image.plugins.module_utils._download import (
    DOWNLOAD_CHUNK,
    PARTIAL_PREFIX,
    Delivered,
    Staged,
    partial_path,
)
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import (
    AtomicFile,
    HashingCounter,
    canonical_json,
    start_writeback,
    stat_identity,
    write_bytes_atomic,
)
from ansible_collections.ironcore.image.plugins.module_utils._progress import ProgressRecorder
from ansible_collections.ironcore.image.plugins.module_utils._select import SelectedLayer
from ansible_collections.ironcore.image.plugins.module_utils._store import ImageSource
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobStream, ResumableRead, run_parallel

DELTA_CHOICES = ("auto", "never")
# Neighbouring ranges closer than this may be fetched as one, within the byte budget below.
MAX_GAP = 64 * 1024
# The bytes of unchanged blocks fetched to join ranges are at most this share of the missing blocks' bytes.
# Without a budget, the gap rule alone doubled the bytes of a package update: its missing blocks are mostly
# single blocks (inode tables, bitmaps, directories) a few blocks apart, so nearly every gap of up to 64 KiB
# was filled. A request costs a round trip and the server's and client's work for it (about 8 ms against a
# local registry on a busy machine, the time of 8 MB on loopback or 100 KB at 100 Mbit/s), so joins still
# pay: the smallest gaps are filled first, which saves the most requests per byte. 1/5 keeps a delta within
# the 1.25 times of what no seed holds that issue 27 asks, with room for the index; measured on bench-delta's
# 256 MiB pair: 1.20 times in 89 requests (1/8: 1.13 times in 129; no budget: 1.28 times in 61).
MAX_GAP_SHARE = 0.2
# A delta that must download more than this share of the layer is not worth the seeks and requests.
MAX_FETCH_SHARE = 0.6
# One range is at most this long, so that a few large changes still spread over `concurrency` requests.
MAX_RANGE = 16 * 1024 * 1024
# Seed blocks are read in runs of up to this many bytes, then confirmed block by block.
SEED_RUN = 1024 * 1024
# An index of 64 MiB describes a 16 GiB layer with 16-byte hashes; anything larger is refused unread.
MAX_INDEX_SIZE = 64 * 1024 * 1024
# The index shapes a delta uses: the build's hash length, and its default block size or coarser ones. A finer
# index would make the node's work and its seed cache grow past what the layer warrants (512-byte blocks:
# eight times the plan, and a seed cache of 1/32 of every seed), so it is refused and the blob downloaded.
DELTA_HASH_LENGTH = DEFAULT_HASH_LENGTH
DELTA_MIN_BLOCK_SIZE = DEFAULT_BLOCK_SIZE
SEED_CACHE_PREFIX = PARTIAL_PREFIX + "seed."
# The state directory a fetch keeps in its dest by default (_fetch.STATE_SUBDIR, which imports this module).
# A file a fetch delivered has its seed cache entry there, and a later fetch into another directory (the
# provision role gives every version of a boot server its own) looks for it there too.
DEFAULT_STATE_SUBDIR = ".ironcore"
# 2: the record names the block hash (an entry of version 1, all sha256, is never read as another hash's).
SEED_CACHE_VERSION = 2
# A seed block number and the seed it comes from, packed into one int: seed << _SEED_SHIFT | block.
_SEED_SHIFT = 40
_NOT_FOUND = -1
# The most non-zero blocks whose hashes are looked for in one pass over the seeds (1 GiB of 4 KiB blocks): the
# wanted-hash dictionary costs about 100 bytes a block, 26 MiB at this size, where a 4 GiB layer's whole
# dictionary took some 100 MiB. A pass more costs a read of each seed's cached hashes, 1/256 of the seed.
PASS_BLOCKS = 1 << 18

Warn = t.Callable[[str], None]


class DeltaAbandoned(ImageError):
    """The delta cannot be used (or failed midway); the message is the reason, and a full fetch follows."""


@dataclass
class DeltaReport:
    """What the fetch returns as `files.<role>.delta`."""

    used: bool = False
    reason: str | None = None
    seed_bytes: int = 0
    fetched_bytes: int = 0
    requests: int = 0
    # Zero blocks left as holes: neither fetched nor read from a seed.
    zero_bytes: int = 0
    # Seed bytes read to hash them (0 when every seed's cache answered).
    seed_hashed_bytes: int = 0
    # The index, when it may describe the delivered file's blocks (kept for the seed cache; not a result).
    index: BlockIndex | None = None

    def as_result(self) -> dict[str, t.Any]:
        if not self.used:
            return {"used": False, "reason": self.reason}
        return {
            "used": True,
            "seed_bytes": self.seed_bytes,
            "fetched_bytes": self.fetched_bytes,
            "requests": self.requests,
            "zero_bytes": self.zero_bytes,
            "seed_hashed_bytes": self.seed_hashed_bytes,
        }


# ---- the index ------------------------------------------------------------------


def check_index_descriptor(size: t.Any, layer: SelectedLayer) -> int:
    """The index blob's size from its descriptor, refused before a byte is read when it cannot be one."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise DeltaAbandoned("the block index descriptor has no valid size")
    if size > MAX_INDEX_SIZE:
        raise DeltaAbandoned("the block index is %d bytes, more than the %d accepted" % (size, MAX_INDEX_SIZE))
    return size


def check_index_shape(header: Header) -> None:
    """Refuse an index whose block size or hash length the build does not write for a delta.

    What a delta costs the node (the plan's entries, the seed cache's bytes)
    is per block: only shapes as coarse as the build's default keep that
    at its share of the layer, whatever the index claims.
    """
    if header.hash_length != DELTA_HASH_LENGTH:
        raise DeltaAbandoned(
            "the block index has %d-byte hashes; a delta uses the build's %d-byte ones"
            % (header.hash_length, DELTA_HASH_LENGTH)
        )
    block_size = header.block_size
    if not DELTA_MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise DeltaAbandoned(
            "the block index has %d-byte blocks; a delta uses blocks of %d bytes to %d MiB (a power of two)"
            % (block_size, DELTA_MIN_BLOCK_SIZE, MAX_BLOCK_SIZE // (1024 * 1024))
        )
    try:
        # A hash this host cannot compute (xxh3-128 without the xxhash package) is refused before the index is read.
        header.hash_function()
    except BlockIndexError as exc:
        raise DeltaAbandoned("the block index is unusable: %s" % exc) from exc


def parse_index(data: bytes | bytearray, layer: SelectedLayer) -> BlockIndex:
    """The index, checked to describe exactly this layer (digest and size) in a shape a delta uses."""
    try:
        index = decode(data, layer.digest, layer.size)
    except BlockIndexError as exc:
        raise DeltaAbandoned("the block index is unusable: %s" % exc) from exc
    check_index_shape(index.header)
    return index


def expected_index_size(head: bytes, layer: SelectedLayer) -> int:
    """From the index's first bytes: the size the whole index must have, refused when it is not this layer's."""
    end = head.find(b"\n", 0, MAX_HEADER_SIZE)
    if end < 0:
        raise DeltaAbandoned("the block index is unusable: it has no header line")
    try:
        header = decode_header(head[:end])
    except BlockIndexError as exc:
        raise DeltaAbandoned("the block index is unusable: %s" % exc) from exc
    if header.layer_digest != layer.digest or header.layer_size != layer.size:
        raise DeltaAbandoned(
            "the block index describes %s (%d bytes), not this layer" % (header.layer_digest, header.layer_size)
        )
    # Before the rest of it is read: a hostile shape costs its first bytes only.
    check_index_shape(header)
    return header.encoded_size()


# ---- seeds ----------------------------------------------------------------------


@dataclass
class Seed:
    """A local file or block device that may hold blocks of the new layer, open for reading."""

    path: str
    fd: int
    size: int
    identity: list[int]
    device: bool
    # Bytes of the seed read and hashed in this run: 0 when its cache answered.
    hashed_bytes: int = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_seed(path: str, follow_symlinks: bool = True) -> Seed | str:
    """The seed at `path`, or why it cannot be one (missing, a directory, not a file or block device)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return "it does not exist"
    except OSError as exc:
        return "it cannot be opened: %s" % (exc.strerror or exc)
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise ValueError("it is a directory")
        if stat.S_ISREG(status.st_mode):
            size, device = status.st_size, False
        elif stat.S_ISBLK(status.st_mode):
            size, device = os.lseek(fd, 0, os.SEEK_END), True
        else:
            raise ValueError("it is neither a regular file nor a block device")
    except (OSError, ValueError) as exc:
        os.close(fd)
        return str(exc) if isinstance(exc, ValueError) else "it cannot be read: %s" % (exc.strerror or exc)
    return Seed(path, fd, size, stat_identity(status), device)


def open_seeds(paths: t.Sequence[str], own: t.Sequence[str], warn: Warn) -> list[Seed]:
    """Every usable seed once: `paths` as given (links followed, the user chose them), then `own`.

    `own` are the fetch's own files (the file at dest): opened without
    following links, and skipped silently when absent. The same file under
    two names is read once.
    """
    seeds: list[Seed] = []
    seen: set[tuple[int, int]] = set()
    for path, given in [(p, True) for p in paths] + [(p, False) for p in own]:
        opened = open_seed(path, follow_symlinks=given)
        if isinstance(opened, str):
            if given:
                warn("seeds: %s is skipped: %s" % (path, opened))
            continue
        key = (opened.identity[0], opened.identity[1])
        if key in seen or opened.size == 0:
            opened.close()
            continue
        seen.add(key)
        seeds.append(opened)
    return seeds


def _cache_path(cache_dir: str, seed: Seed, block_size: int, hash_length: int, hash_name: str) -> str:
    # Named after the seed's path and the index's shape, hash included, so that indexes of both formats keep
    # an entry each; what it holds is only used when the recorded identity and hash still match.
    name = hashlib.sha256(os.path.abspath(seed.path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(
        cache_dir, "%s%s.%s.%d.%d.hashes" % (SEED_CACHE_PREFIX, name, hash_name, block_size, hash_length)
    )


def _cache_header(seed: Seed, block_size: int, hash_length: int, hash_name: str) -> dict[str, t.Any]:
    return {
        "version": SEED_CACHE_VERSION,
        "path": os.path.abspath(seed.path),
        "identity": seed.identity,
        "blockSize": block_size,
        "hash": hash_name,
        "hashLength": hash_length,
    }


# Seed bytes read (and their block hashes handed on) at a time.
SEED_READ = DOWNLOAD_CHUNK * 4


def seed_read_size(block_size: int) -> int:
    """A whole number of blocks (both are powers of two): SEED_READ, or one block when blocks are larger."""
    return max(SEED_READ, block_size)


def _open_cached(path: str, seed: Seed, block_size: int, hash_length: int, hash_name: str) -> t.BinaryIO | None:
    """The cache file positioned at its first hash, when its record matches the seed and its size the hashes."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    stream = os.fdopen(fd, "rb")
    try:
        status = os.fstat(fd)
        # Ours alone, as every record the fetch relies on (a wrong one would only cost bandwidth).
        if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid() or status.st_mode & 0o022:
            raise ValueError("not a private regular file")
        head = stream.readline(MAX_HEADER_SIZE)
        if not head.endswith(b"\n") or json.loads(head) != _cache_header(seed, block_size, hash_length, hash_name):
            raise ValueError("another seed's record")
        if status.st_size != len(head) + block_count(seed.size, block_size) * hash_length:
            raise ValueError("not this seed's size")
    except (OSError, ValueError, RecursionError):
        stream.close()
        return None
    return stream


def hash_batch_size(block_size: int, hash_length: int) -> int:
    """The bytes of block hashes of one seed read: the batch a seed's hashes come in."""
    return seed_read_size(block_size) // block_size * hash_length


def _cached_hashes(stream: t.BinaryIO, seed: Seed, block_size: int, hash_length: int) -> t.Iterator[bytes]:
    left = block_count(seed.size, block_size) * hash_length
    batch = hash_batch_size(block_size, hash_length)
    with stream:
        while left > 0:
            data = stream.read(min(batch, left))
            if not data:
                return
            left -= len(data)
            yield data


def _hashed(seed: Seed, block_size: int, hash_length: int, hash_name: str, cache: str | None) -> t.Iterator[bytes]:
    """The seed read once, in order, hashed with the index's hash; with `cache`, the hashes go to the cache file
    as they are made."""
    block_hash = block_hash_function(hash_name, hash_length)
    out = None
    if cache is not None:
        try:
            out = AtomicFile(cache, mode=0o600)
            out.write(canonical_json(_cache_header(seed, block_size, hash_length, hash_name)) + b"\n")
        except OSError:
            out = None
    try:
        offset = 0
        # One buffer for every read: a new 4 MiB bytes per read cost a mapping and its page faults each time.
        buffer = memoryview(bytearray(seed_read_size(block_size)))
        while offset < seed.size:
            data = buffer[: os.preadv(seed.fd, [buffer[: seed.size - offset]], offset)]
            if not data:
                break
            batch = b"".join(block_hash(data[start : start + block_size]) for start in range(0, len(data), block_size))
            offset += len(data)
            seed.hashed_bytes = offset
            out = _cache_write(out, batch)
            yield batch
            if len(data) % block_size:
                break
        # Only a seed read whole, that did not change while it was read, is worth remembering.
        if out is not None and offset == seed.size and stat_identity(os.fstat(seed.fd)) == seed.identity:
            try:
                out.commit()
            except OSError:
                pass
    finally:
        if out is not None:
            out.discard()


def _cache_write(out: AtomicFile | None, data: bytes) -> AtomicFile | None:
    """Append to the cache being written; a cache that cannot be written (a full disk) is given up, not the delta."""
    if out is None:
        return None
    try:
        out.write(data)
    except OSError:
        out.discard()
        return None
    return out


def _cacheable(block_size: int, hash_length: int) -> bool:
    # A cache entry is at most 1/256 of its seed: no index shape makes it grow past the default's.
    return block_size // hash_length >= DEFAULT_BLOCK_SIZE // DEFAULT_HASH_LENGTH


def seed_hashes(
    seed: Seed, block_size: int, hash_length: int, cache_dir: str | None, hash_name: str = DEFAULT_HASH
) -> t.Iterator[bytes]:
    """The seed's block hashes in order, in batches: from the cache beside the fetch's state when the seed is
    unchanged since, else read once and hashed, the cache written as the hashes come.

    Only a batch is held at a time, never the seed's whole list. A block
    device's identity says nothing about its content, so a device is hashed
    every time. A cache entry that is wrong can only cost bandwidth: every
    block read from a seed is hashed again before it is used.
    """
    cache = None
    if cache_dir is not None and not seed.device and _cacheable(block_size, hash_length):
        cache = _cache_path(cache_dir, seed, block_size, hash_length, hash_name)
        for directory in _cache_dirs(cache_dir, seed):
            cached = _open_cached(
                _cache_path(directory, seed, block_size, hash_length, hash_name),
                seed,
                block_size,
                hash_length,
                hash_name,
            )
            if cached is not None:
                return _cached_hashes(cached, seed, block_size, hash_length)
    return _hashed(seed, block_size, hash_length, hash_name, cache)


def _cache_dirs(cache_dir: str, seed: Seed) -> list[str]:
    """Where a seed's cache entry may be: this fetch's state directory, then the default one beside the seed.

    The second is where the fetch that delivered the seed left its entry
    (remember_hashes). It is only read: its entry is used on the same terms
    as one of ours (a private regular file, recording this very file).
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(seed.path)), DEFAULT_STATE_SUBDIR)
    return [cache_dir] if os.path.abspath(cache_dir) == beside else [cache_dir, beside]


def remember_hashes(path: str, index: BlockIndex, cache_dir: str) -> None:
    """Cache the index's block hashes for the file just delivered at `path`, as hash_seed() would have.

    The file hashed to the layer digest; hashes of the index that are wrong
    can only make the next update fetch blocks it could have copied.
    """
    seed = open_seed(path, follow_symlinks=False)
    if isinstance(seed, str):
        return
    try:
        header = index.header
        if seed.device or seed.size != header.layer_size:
            return
        shape = (header.block_size, header.hash_length, header.hash)
        document = canonical_json(_cache_header(seed, *shape))
        write_bytes_atomic(_cache_path(cache_dir, seed, *shape), document + b"\n" + index.hashes, 0o600)
    except OSError:
        pass
    finally:
        seed.close()


# ---- the plan -------------------------------------------------------------------


@dataclass
class Plan:
    """How each block of the new layer is made: copy runs from seeds, byte ranges to fetch, the rest holes."""

    block_size: int
    layer_size: int
    # (first block of the new layer, seed number, first block of the seed, block count)
    copies: list[tuple[int, int, int, int]] = field(default_factory=list)
    # (offset, length) in the layer
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def fetch_bytes(self) -> int:
        return sum(length for _offset, length in self.ranges)

    @property
    def seed_bytes(self) -> int:
        return sum(self.span(first, count)[1] for first, _seed, _block, count in self.copies)

    @property
    def hole_bytes(self) -> int:
        """The zero blocks that are neither fetched nor copied: holes in the file (ranges and copies never overlap)."""
        return self.layer_size - self.fetch_bytes - self.seed_bytes

    def span(self, first: int, count: int) -> tuple[int, int]:
        offset = first * self.block_size
        return offset, min(count * self.block_size, self.layer_size - offset)


def wanted_hashes(index: BlockIndex) -> dict[bytes, int]:
    """Hash of every non-zero block of the new layer -> _NOT_FOUND, for the seeds to fill in: the layer's
    whole wanted set in one dictionary, about 100 bytes a distinct hash. match_blocks builds the same a pass
    of at most PASS_BLOCKS blocks at a time."""
    return dict.fromkeys(_block_hashes(index, nonzero_runs(index)), _NOT_FOUND)


def _block_hashes(index: BlockIndex, runs: t.Iterable[tuple[int, int]]) -> list[bytes]:
    """The hash of every block of `runs`, in order."""
    length = index.header.hash_length
    hashes: list[bytes] = []
    for first, end in runs:
        hashes.extend(_split(index.hashes[first * length : end * length], length))
    return hashes


def _split(hashes: bytes, length: int) -> list[bytes]:
    """A run of hashes, one bytes object each: a comprehension, as a call per hash cost a second per GiB."""
    return [hashes[at : at + length] for at in range(0, len(hashes), length)]


def find_in_seed(wanted: dict[bytes, int], seed_number: int, batches: t.Iterable[bytes], hash_length: int) -> None:
    """Record, for each wanted hash not found yet, where this seed has it (seed << shift | block).

    The seed's hashes stream past a batch at a time: only the batch's hits
    are looked at one by one, and nothing of the seed is kept. Within a
    batch, the first block with a hash is the one recorded.
    """
    block = seed_number << _SEED_SHIFT
    for batch in batches:
        keys = _split(batch, hash_length)
        hits = wanted.keys() & keys
        if hits:
            # Reversed, so that the first of equal blocks is the one that stays.
            where = dict(zip(reversed(keys), range(block + len(keys) - 1, block - 1, -1)))
            for digest in hits:
                if wanted[digest] == _NOT_FOUND:
                    wanted[digest] = where[digest]
        block += len(keys)


def check_seeds_could_pay(index: BlockIndex, runs: t.Sequence[tuple[int, int]], seeds: t.Sequence[Seed]) -> None:
    """Give up before any seed is read when they are too small to hold enough of the layer.

    Each seed block can supply at most one distinct hash, so at least the
    distinct hashes beyond the seeds' block count are fetched, a block each.
    The non-zero blocks bound the distinct hashes: they are only counted
    when the seeds are smaller than that bound.
    """
    block_size = index.header.block_size
    layer_size = index.header.layer_size
    seed_blocks = sum(block_count(seed.size, block_size) for seed in seeds)

    def at_least(needed: int) -> int:
        # Less one block for the layer's last, which may be short.
        return max(needed - seed_blocks - 1, 0) * block_size

    if at_least(sum(end - first for first, end in runs)) <= MAX_FETCH_SHARE * layer_size:
        return
    distinct = distinct_hashes(index, runs)
    if at_least(distinct) > MAX_FETCH_SHARE * layer_size:
        raise DeltaAbandoned(
            "the seeds hold %d blocks, the layer needs %d distinct ones: the delta would download at least %d of"
            " its %d bytes (more than %d %%)"
            % (seed_blocks, distinct, at_least(distinct), layer_size, int(MAX_FETCH_SHARE * 100))
        )


def distinct_hashes(index: BlockIndex, runs: t.Sequence[tuple[int, int]]) -> int:
    """How many distinct hashes the blocks of `runs` have: counted a share of the hash space at a time, so that
    no set holds more than about PASS_BLOCKS of them."""
    length = index.header.hash_length
    shares = min(256, max(1, -(-sum(end - first for first, end in runs) // PASS_BLOCKS)))
    distinct = 0
    for share in range(shares):
        low, high = 256 * share // shares, 256 * (share + 1) // shares
        seen: set[bytes] = set()
        for first, end in runs:
            run = index.hashes[first * length : end * length]
            seen.update([run[at : at + length] for at in range(0, len(run), length) if low <= run[at] < high])
        distinct += len(seen)
    return distinct


SeedHashes = t.Callable[[], t.Iterable[bytes]]


def match_blocks(index: BlockIndex, seeds: t.Sequence[SeedHashes], pass_blocks: int | None = None) -> array.array[int]:
    """Where the seeds hold each block of the layer: seed << shift | block, _NOT_FOUND where none does and for
    zero blocks. Each of `seeds` gives that seed's block hashes, in batches, every time it is called.

    The wanted hashes of at most `pass_blocks` non-zero blocks are in the
    dictionary at a time, and every pass streams the seeds' hashes again:
    the dictionary, about 100 bytes a block, would otherwise be the one
    part of a delta's memory that grows with the layer. The answer is an
    array of 8 bytes a block.
    """
    locations = array.array("q", [_NOT_FOUND]) * index.blocks
    for runs in _passes(nonzero_runs(index), pass_blocks or PASS_BLOCKS):
        _match_pass(index, runs, seeds, locations)
    return locations


def _match_pass(
    index: BlockIndex, runs: t.Sequence[tuple[int, int]], seeds: t.Sequence[SeedHashes], locations: array.array[int]
) -> None:
    """One pass of match_blocks: its dictionary is gone before the next pass builds its own."""
    # The pass's hashes are split once: the dictionary is made from them, and the locations read through them.
    keys = _block_hashes(index, runs)
    wanted = dict.fromkeys(keys, _NOT_FOUND)
    for number, hashes in enumerate(seeds):
        find_in_seed(wanted, number, hashes(), index.header.hash_length)
    at = 0
    for first, end in runs:
        locations[first:end] = array.array("q", [wanted[key] for key in keys[at : at + end - first]])
        at += end - first


def _passes(runs: t.Sequence[tuple[int, int]], pass_blocks: int) -> t.Iterator[list[tuple[int, int]]]:
    """The runs in groups of at most `pass_blocks` blocks, a run cut where a group is full."""
    group: list[tuple[int, int]] = []
    room = pass_blocks
    for first, end in runs:
        while first < end:
            stop = min(end, first + room)
            group.append((first, stop))
            room -= stop - first
            first = stop
            if room == 0:
                yield group
                group, room = [], pass_blocks
    if group:
        yield group


class _ReplayedHashes:
    """A seed's block hashes for match_blocks, once per pass. The first pass reads the cache or hashes the
    seed, writing its cache; later ones read that cache. A seed that gets no cache (a block device) keeps
    the first pass's hashes in memory instead, 16 bytes a block, rather than be read again per pass."""

    def __init__(self, seed: Seed, header: Header, cache_dir: str | None, passes: int):
        self._seed = seed
        self._header = header
        self._cache_dir = cache_dir
        self._keep = passes > 1 and (
            cache_dir is None or seed.device or not _cacheable(header.block_size, header.hash_length)
        )
        self._kept: bytearray | None = None

    def __call__(self) -> t.Iterable[bytes]:
        header = self._header
        if self._kept is not None:
            return _batches(self._kept, hash_batch_size(header.block_size, header.hash_length))
        hashes = seed_hashes(self._seed, header.block_size, header.hash_length, self._cache_dir, header.hash)
        return self._keeping(hashes) if self._keep else hashes

    def _keeping(self, hashes: t.Iterable[bytes]) -> t.Iterator[bytes]:
        kept = bytearray()
        for batch in hashes:
            kept += batch
            yield batch
        self._kept = kept


def _batches(data: bytearray, size: int) -> t.Iterator[bytes]:
    view = memoryview(data)
    for at in range(0, len(data), size):
        yield bytes(view[at : at + size])


def locate_blocks(index: BlockIndex, seeds: t.Sequence[Seed], cache_dir: str | None) -> array.array[int]:
    """Where the seeds hold each block of the layer (match_blocks), after checking that they could pay."""
    runs = nonzero_runs(index)
    check_seeds_could_pay(index, runs, seeds)
    passes = -(-sum(end - first for first, end in runs) // PASS_BLOCKS)
    return match_blocks(index, [_ReplayedHashes(seed, index.header, cache_dir, passes) for seed in seeds])


def _missing_runs(locations: array.array[int], runs: t.Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """[first, end) block runs that no seed has and that are not zero: the missing stretches of each non-zero run."""
    missing: list[tuple[int, int]] = []
    for first, end in runs:
        at = first
        while True:
            try:
                # array.index scans in C: the found blocks, nearly all of them, cost no Python step each.
                at = locations.index(_NOT_FOUND, at, end)
            except ValueError:
                break
            stop = at + 1
            while stop < end and locations[stop] == _NOT_FOUND:
                stop += 1
            missing.append((at, stop))
            at = stop
    return missing


def _seed_stretches(locations: t.Sequence[int]) -> t.Iterator[tuple[int, int]]:
    """[start, end) of the stretches of `locations` found in one seed, block after block (missing ones left out)."""
    breaks = [
        number
        # islice, not a slice: a copy of a 4 GiB layer's run would be 8 MiB more at the plan's peak.
        for number, (before, after) in enumerate(zip(locations, itertools.islice(locations, 1, None)), 1)
        if after != before + 1 or before == _NOT_FOUND
    ]
    start = 0
    for end in [*breaks, len(locations)]:
        if locations[start] != _NOT_FOUND:
            yield start, end
        start = end


def _copyable_runs(
    locations: array.array[int], runs: t.Iterable[tuple[int, int]], fetched: list[tuple[int, int]]
) -> t.Iterator[tuple[int, array.array[int]]]:
    """Each non-zero run's locations, with the blocks a range fetches anyway (a gap joined between two missing
    runs) marked _NOT_FOUND, so that no copy writes them too. Both lists are in block order; `locations` is
    left as it is."""
    number = 0
    for first, end in runs:
        run = locations[first:end]
        while number < len(fetched) and fetched[number][1] <= first:
            number += 1
        overlapping = number
        while overlapping < len(fetched) and fetched[overlapping][0] < end:
            start, stop = max(fetched[overlapping][0], first), min(fetched[overlapping][1], end)
            run[start - first : stop - first] = array.array("q", [_NOT_FOUND]) * (stop - start)
            overlapping += 1
        yield first, run


def coalesce(
    runs: t.Iterable[tuple[int, int]], block_size: int, layer_size: int, max_gap: int = MAX_GAP
) -> list[tuple[int, int]]:
    """Block runs [first, end), in order, as byte ranges (offset, length).

    Neighbours at most `max_gap` apart are joined, the smallest gaps first,
    while the gaps' bytes stay within MAX_GAP_SHARE of the runs' bytes.
    """
    listed = list(runs)
    joined = _gaps_to_join(listed, max_gap // block_size)
    merged: list[list[int]] = []
    for number, (first, end) in enumerate(listed):
        if merged and number - 1 in joined:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([first, end])
    ranges: list[tuple[int, int]] = []
    for first, end in merged:
        offset, stop = first * block_size, min(end * block_size, layer_size)
        while offset < stop:
            length = min(MAX_RANGE, stop - offset)
            ranges.append((offset, length))
            offset += length
    return ranges


def _gaps_to_join(runs: t.Sequence[tuple[int, int]], gap_blocks: int) -> set[int]:
    """Numbers n of the gaps (after run n) to fill: up to `gap_blocks` long, smallest first, within the budget."""
    budget = int(sum(end - first for first, end in runs) * MAX_GAP_SHARE)
    gaps = sorted(
        (runs[number + 1][0] - runs[number][1], number)
        for number in range(len(runs) - 1)
        if runs[number + 1][0] - runs[number][1] <= gap_blocks
    )
    joined: set[int] = set()
    for size, number in gaps:
        if size > budget:
            break
        budget -= size
        joined.add(number)
    return joined


def make_plan(index: BlockIndex, locations: array.array[int]) -> Plan:
    """Which blocks come from which seed (`locations`, from locate_blocks), and which byte ranges are fetched."""
    block_size = index.header.block_size
    plan = Plan(block_size, index.header.layer_size)
    runs = nonzero_runs(index)
    plan.ranges = coalesce(_missing_runs(locations, runs), block_size, index.header.layer_size)
    fetched = [(offset // block_size, -(-(offset + length) // block_size)) for offset, length in plan.ranges]
    per_run = max(1, SEED_RUN // block_size)
    mask = (1 << _SEED_SHIFT) - 1
    for first, run in _copyable_runs(locations, runs, fetched):
        for start, stop in _seed_stretches(run):
            seed, block = run[start] >> _SEED_SHIFT, run[start] & mask
            for piece in range(start, stop, per_run):
                plan.copies.append((first + piece, seed, block + piece - start, min(per_run, stop - piece)))
    return plan


# A byte of the zero map: all eight blocks data, all eight zero, or a mix looked at bit by bit.
_ZERO_MAP_RUNS = re.compile(rb"\x00+|\xff+|[\x01-\xfe]")


def nonzero_runs(index: BlockIndex) -> list[tuple[int, int]]:
    """[first, end) block runs of the layer that are not all-zero, read from the zero map a byte at a time
    (eight blocks) where the map allows: a 4 GiB layer has a million blocks, and a mostly empty one few runs."""
    runs: list[tuple[int, int]] = []
    blocks = index.blocks

    def add(first: int, end: int) -> None:
        end = min(end, blocks)
        if first >= end:
            return
        if runs and runs[-1][1] == first:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((first, end))

    for match in _ZERO_MAP_RUNS.finditer(index.zeros):
        first, end = match.start() * 8, match.end() * 8
        kind = match.group()[0]
        if kind == 0x00:
            add(first, end)
        elif kind != 0xFF:
            for bit in range(8):
                if not kind & (1 << bit):
                    add(first + bit, first + bit + 1)
    return runs


def sparse_plan(index: BlockIndex) -> Plan:
    """With no seed: every non-zero block fetched in coalesced ranges, every zero block left a hole.

    Built from the zero map alone, without the per-block dictionary a seed
    lookup needs.
    """
    header = index.header
    plan = Plan(header.block_size, header.layer_size)
    plan.ranges = coalesce(nonzero_runs(index), header.block_size, header.layer_size)
    return plan


def check_sparse_worth_it(plan: Plan, layer_size: int) -> None:
    """The same bar as a delta's, for the same reasons.

    Against a full download, ranges into a sparse file save the zero bytes
    on the wire and on disk, but cost a request per range, and the zeros
    must still be hashed (sha256 has no shortcut), behind the ranges. Below
    40 % of zeros the requests and that hashing take back most of what a
    fast link saved, and the disk room is the smaller gain; from there on the
    saving wins on every link, and on a slow one by far.
    """
    if plan.fetch_bytes > MAX_FETCH_SHARE * layer_size:
        raise DeltaAbandoned(
            "no seed to build from, and a sparse fetch would leave only %d of the layer's %d bytes as holes (it"
            " needs at least %d %% zero blocks)" % (plan.hole_bytes, layer_size, 100 - int(MAX_FETCH_SHARE * 100))
        )


def check_worth_it(plan: Plan, layer_size: int) -> None:
    if plan.fetch_bytes > MAX_FETCH_SHARE * layer_size:
        raise DeltaAbandoned(
            "the delta would download %d of the layer's %d bytes (more than %d %%)"
            % (plan.fetch_bytes, layer_size, int(MAX_FETCH_SHARE * 100))
        )


# ---- assembly -------------------------------------------------------------------


@dataclass
class _Counters:
    seed_bytes: int = 0
    fetched_bytes: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set when the assembly failed elsewhere: downloads still running stop at their next chunk.
    stopped: threading.Event = field(default_factory=threading.Event)

    def add(self, fetched: int = 0, requests: int = 0) -> None:
        with self.lock:
            self.fetched_bytes += fetched
            self.requests += requests


def copy_from_seeds(
    index: BlockIndex, plan: Plan, seeds: t.Sequence[Seed], fd: int, done: t.Callable[[int], None] | None = None
) -> tuple[int, list[int]]:
    """Write every planned seed block that still hashes right; returns (bytes written, blocks to fetch instead).

    `done(offset)` is told of each copy run written whole.
    """
    block_size = index.header.block_size
    length = index.header.hash_length
    block_hash = index.header.hash_function()
    written = 0
    refetch: list[int] = []
    # One buffer for every run: a new 1 MiB bytes per read cost a mapping and its page faults each time.
    buffer = memoryview(bytearray(max((plan.span(first, count)[1] for first, _s, _b, count in plan.copies), default=0)))
    for first, seed_number, seed_block, count in plan.copies:
        offset, size = plan.span(first, count)
        data = buffer[: os.preadv(seeds[seed_number].fd, [buffer[:size]], seed_block * block_size)]
        # The whole run confirmed at once, as it nearly always is; block by block only when it is not.
        hashes = b"".join(block_hash(data[at : at + block_size]) for at in range(0, size, block_size))
        if len(data) == size and hashes == index.hashes[first * length : (first + count) * length]:
            written += _pwrite_all(fd, data, offset)
            if done is not None:
                done(offset)
            continue
        good_start = -1
        for k in range(count):
            piece = data[k * block_size : min((k + 1) * block_size, size)]
            expected = min(block_size, size - k * block_size)
            if len(piece) == expected and block_hash(piece) == index.block_hash(first + k):
                if good_start < 0:
                    good_start = k
                continue
            # Changed (or shrunk) since it was hashed: this block is fetched instead.
            refetch.append(first + k)
            if good_start >= 0:
                written += _write_run(fd, data, good_start, k, block_size, offset)
                good_start = -1
        if good_start >= 0:
            written += _write_run(fd, data, good_start, count, block_size, offset)
    return written, refetch


def _pwrite_all(fd: int, data: t.Any, position: int) -> int:
    piece = memoryview(data)
    written = len(piece)
    while piece:
        count = os.pwrite(fd, piece, position)
        piece, position = piece[count:], position + count
    return written


# Zero blocks inside a fetched range (a gap of up to MAX_GAP between two changed runs) are not written, so they
# stay holes like the others: the grain of a file system's holes.
HOLE_GRAIN = 4096
_ZERO_GRAIN = bytes(HOLE_GRAIN)


def _pwrite_sparse(fd: int, data: t.Any, position: int) -> int:
    """Write `data` at `position` into a part of the file never written before (a hole), except its aligned
    all-zero grains: reading them back gives zeros all the same, and the file stays sparse."""
    piece = memoryview(data)
    # The first grain boundary at or after `position`, relative to the piece.
    cut = -position % HOLE_GRAIN
    written_from = 0
    while cut + HOLE_GRAIN <= len(piece):
        if piece[cut : cut + HOLE_GRAIN] == _ZERO_GRAIN:
            if written_from < cut:
                _pwrite_all(fd, piece[written_from:cut], position + written_from)
            written_from = cut + HOLE_GRAIN
        cut += HOLE_GRAIN
    if written_from < len(piece):
        _pwrite_all(fd, piece[written_from:], position + written_from)
    return len(piece)


def _write_run(fd: int, data: memoryview, start: int, end: int, block_size: int, offset: int) -> int:
    return _pwrite_all(fd, data[start * block_size : end * block_size], offset + start * block_size)


def _runs_of(blocks: t.Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for number in blocks:
        if runs and runs[-1][1] == number:
            runs[-1] = (runs[-1][0], number + 1)
        else:
            runs.append((number, number + 1))
    return runs


class _RangeReader(ResumableRead):
    """Bytes [start, start+size) of a blob into the file at the same offset, bounded on every request."""

    def __init__(
        self,
        source: ImageSource,
        digest: str,
        offset: int,
        length: int,
        fd: int,
        retries: int,
        backoff: float,
        counters: _Counters,
        progress: t.Callable[[int], None] | None,
    ):
        super().__init__("range at %d of blob %s" % (offset, digest), offset, length, retries, backoff)
        self.source = source
        self.digest = digest
        self.fd = fd
        self.counters = counters
        self.progress = progress

    def length_of_request(self, offset: int) -> int | None:
        return self.size - self.received

    def open_at(self, offset: int, length: int | None) -> BlobStream:
        self.counters.add(requests=1)
        return self.source.open_blob(self.digest, offset, length)

    def restart(self) -> None:
        raise DeltaAbandoned("the source answered a Range request with the whole blob")

    def mismatch(self, answered: int, asked: int) -> ImageError:
        return DeltaAbandoned("the source answered a Range request with the whole blob")

    def overrun(self) -> ImageError:
        return DeltaAbandoned("the source answered a Range request with more than was asked (the whole blob?)")

    def accept(self, chunk: t.Any) -> None:
        if self.counters.stopped.is_set():
            raise DeltaAbandoned("stopped: the assembly failed")
        _pwrite_sparse(self.fd, chunk, self.start + self.received - len(chunk))
        self.counters.add(fetched=len(chunk))
        if self.progress is not None:
            self.progress(len(chunk))

    def give_up(self, exc: ImageError) -> ImageError:
        return DeltaAbandoned("a range request failed after %d retries: %s" % (self.retries, exc))


def fetch_range(
    source: ImageSource,
    digest: str,
    offset: int,
    length: int,
    fd: int,
    retries: int,
    backoff: float,
    counters: _Counters,
    progress: t.Callable[[int], None] | None = None,
) -> None:
    """GET bytes [offset, offset+length) into the file at the same offset; a broken transfer continues where it was."""
    try:
        _RangeReader(source, digest, offset, length, fd, retries, backoff, counters, progress).run()
    except DeltaAbandoned:
        raise
    except ImageError as exc:
        # Not retryable (the reader retries the others).
        raise DeltaAbandoned("a range request failed: %s" % exc) from exc


def fetch_ranges(
    source: ImageSource,
    digest: str,
    ranges: t.Sequence[tuple[int, int]],
    fd: int,
    concurrency: int,
    retries: int,
    backoff: float,
    counters: _Counters,
    progress: t.Callable[[int], None] | None = None,
    done: t.Callable[[int], None] | None = None,
) -> None:
    """Every range into the file, `concurrency` at a time; `done(offset)` is told of each range received whole."""

    def one(item: tuple[int, int]) -> None:
        fetch_range(source, digest, item[0], item[1], fd, retries, backoff, counters, progress)
        if done is not None:
            done(item[0])

    run_parallel(max(1, concurrency), one, ranges)


def _next_data(fd: int, offset: int, size: int) -> int:
    """Where the next data at or after `offset` starts (`size` when only a hole follows); `offset` itself where
    the file system cannot tell holes apart, which then reads them like data."""
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return size
        return offset


def _next_hole(fd: int, offset: int, size: int) -> int:
    try:
        return min(os.lseek(fd, offset, os.SEEK_HOLE), size)
    except OSError:
        return size


_HASH_STEP = DOWNLOAD_CHUNK * 4


def hash_span(fd: int, counter: HashingCounter, offset: int, size: int, zeros: memoryview | None = None) -> None:
    """Bytes [offset, size) of the file into `counter`, in order, holes included.

    sha256 has no shortcut for zeros, so a hole is hashed like data; but it
    is not read: SEEK_DATA and SEEK_HOLE find the holes, and their zeros come
    from one buffer (`zeros`, or one made here). Should the file system
    report a hole where there are bytes, the digest would not match and the
    delta is abandoned: a wrong answer costs a full download, never a wrong
    file.
    """
    step = _HASH_STEP
    if zeros is None:
        zeros = memoryview(bytes(step))
    while offset < size:
        data_at = _next_data(fd, offset, size)
        while offset < data_at:
            count = min(step, data_at - offset)
            counter.update(zeros[:count])
            offset += count
        hole_at = _next_hole(fd, offset, size) if offset < size else size
        if hole_at <= offset:
            # Not a hole after all (the file system cannot tell): read one step.
            hole_at = min(offset + step, size)
        while offset < hole_at:
            data = os.pread(fd, min(step, hole_at - offset), offset)
            if not data:
                return
            counter.update(data)
            offset += len(data)


class InOrderDigest:
    """The assembled file's sha256, taken while it is assembled: every byte in order, each part once written.

    The parts being written (copy runs and ranges, by offset) are told when
    they are finished; everything else is a hole from the start. `run` reads
    the file back and hashes it up to the first part not finished, then waits
    for more. A part is read only after its last write, so what is hashed is
    what the file holds, holes included, exactly as a read after the assembly
    would see it. The sha256 lets go of the GIL on large buffers: it runs on
    the other core while the seeds are copied and the ranges arrive.
    """

    def __init__(self, fd: int, size: int, parts: t.Iterable[tuple[int, int]]):
        self.fd = fd
        self.size = size
        self._starts = sorted(offset for offset, _length in parts)
        self._finished: set[int] = set()
        self._next = 0
        self._ready = self._frontier()
        self._stopped = False
        self._changed = threading.Condition()

    def _frontier(self) -> int:
        return self._starts[self._next] if self._next < len(self._starts) else self.size

    def finished(self, offset: int) -> None:
        with self._changed:
            self._finished.add(offset)
            while self._next < len(self._starts) and self._starts[self._next] in self._finished:
                self._finished.discard(self._starts[self._next])
                self._next += 1
            self._ready = self._frontier()
            self._changed.notify()

    def all_finished(self) -> None:
        """Every part is written (blocks refetched after a seed changed included)."""
        with self._changed:
            self._next = len(self._starts)
            self._ready = self.size
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()

    def run(self) -> HashingCounter | None:
        """The digest of the whole file, or None when stopped first."""
        counter = HashingCounter()
        zeros = memoryview(bytes(_HASH_STEP))
        while counter.size < self.size:
            with self._changed:
                while self._ready <= counter.size and not self._stopped:
                    self._changed.wait()
                if self._stopped:
                    return None
                ready = self._ready
            while counter.size < ready:
                if self._stopped:
                    # Stopped in the middle of a long part (a stop signal): not a gigabyte later.
                    return None
                before = counter.size
                # A few steps at a time, so that a stop is seen; the holes (zero blocks) are not read.
                hash_span(self.fd, counter, before, min(ready, before + 4 * _HASH_STEP), zeros)
                if counter.size == before:
                    # Shorter than it was made: the size check after says so.
                    return counter
                # Hashed, so written for good: the disk takes it now, and the fsync before the rename
                # waits only for the tail (as a download's AtomicFile does every few MiB).
                start_writeback(self.fd, before, counter.size - before)
        return counter


@dataclass
class DeltaJob:
    """Everything a delta of one layer needs besides the index."""

    source: ImageSource
    layer: SelectedLayer
    path: str
    partial_dir: str | None
    seeds: list[Seed]
    cache_dir: str | None
    concurrency: int = 1
    retries: int = 0
    backoff: float = 0.5
    progress: ProgressRecorder | None = None


def assemble(job: DeltaJob, index: BlockIndex, report: DeltaReport) -> Staged:
    """Build the layer in its partial file from seeds and ranges; verified against the layer digest, not committed."""
    layer = job.layer
    header = index.header
    directory, filename = os.path.split(job.path)
    partial = partial_path(job.partial_dir or directory, filename, layer.digest)
    try:
        kept = os.lstat(partial).st_size
    except FileNotFoundError:
        kept = -1
    if 0 <= kept < layer.size:
        # An interrupted full download of this very blob: continuing it is cheaper than starting over.
        raise DeltaAbandoned("a partial download of this layer is continued instead")
    if job.seeds:
        locations = locate_blocks(index, job.seeds, job.cache_dir)
        report.seed_hashed_bytes = sum(seed.hashed_bytes for seed in job.seeds)
        plan = make_plan(index, locations)
        del locations
        check_worth_it(plan, layer.size)
    else:
        plan = sparse_plan(index)
        check_sparse_worth_it(plan, layer.size)
    report.zero_bytes = plan.hole_bytes
    out = AtomicFile(job.path, temp_path=partial)
    try:
        fd = out.file.fileno()
        # Holes wherever nothing is written: the zero blocks.
        os.ftruncate(fd, layer.size)
        counters = _Counters()

        def advance(count: int) -> None:
            if job.progress is not None:
                job.progress.advance(layer.role, count)

        parts = [plan.span(first, count) for first, _seed, _block, count in plan.copies] + list(plan.ranges)
        digest = InOrderDigest(fd, layer.size, parts)

        def fetch(ranges: t.Sequence[tuple[int, int]]) -> None:
            fetch_ranges(
                job.source,
                layer.digest,
                ranges,
                fd,
                job.concurrency,
                job.retries,
                job.backoff,
                counters,
                advance,
                digest.finished,
            )

        # Three at once: the ranges download, the seed blocks are read and confirmed, and the file's sha256
        # follows behind both. The network waits, the hashes let go of the GIL, and each part of the file is
        # written by one of them only.
        with ThreadPoolExecutor(max_workers=2) as background:
            digesting = background.submit(digest.run)
            try:
                try:
                    downloading = background.submit(fetch, plan.ranges)
                    try:
                        counters.seed_bytes, refetch = copy_from_seeds(index, plan, job.seeds, fd, digest.finished)
                    except BaseException:
                        counters.stopped.set()
                        raise
                    finally:
                        # Never leave while a download still writes to the file.
                        wait([downloading])
                    downloading.result()
                    advance(layer.size - plan.fetch_bytes)
                    # Seed blocks that changed since they were hashed.
                    fetch(coalesce(_runs_of(refetch), header.block_size, layer.size, max_gap=0))
                finally:
                    # Also when it fails: what was received counts in bytes_downloaded either way.
                    report.seed_bytes = counters.seed_bytes
                    report.fetched_bytes = counters.fetched_bytes
                    report.requests = counters.requests
                digest.all_finished()
            except BaseException:
                digest.stop()
                raise
            assembled = digesting.result()
        if assembled is None or assembled.size != layer.size or assembled.digest != layer.digest:
            raise DeltaAbandoned(
                "the assembled file hashes to %s, not the layer digest; abandoned (the block index is wrong"
                " or a seed changed)" % (assembled.digest if assembled is not None else "nothing")
            )
    except BaseException:
        out.discard()
        raise
    return Staged(out, Delivered(layer.digest, layer.size, counters.fetched_bytes))


def close_seeds(seeds: t.Iterable[Seed]) -> None:
    for seed in seeds:
        seed.close()


# ---- finding the index, and the whole delta -------------------------------------------


def read_index_blob(source: ImageSource, descriptor: t.Mapping[str, t.Any], layer: SelectedLayer) -> BlockIndex:
    """The index blob the referrer names: bounded by its descriptor, refused from its header on if it is not
    this layer's, and checked against its own digest."""
    size = check_index_descriptor(descriptor.get("size"), layer)
    digest = descriptor.get("digest")
    if not isinstance(digest, str):
        raise DeltaAbandoned("the block index descriptor has no digest")
    data = bytearray()
    try:
        stream = source.open_blob(digest, 0)
        try:
            for chunk in stream.iter_chunks(DOWNLOAD_CHUNK):
                data += chunk
                if len(data) > size:
                    raise DeltaAbandoned("the block index is larger than its descriptor says")
                if len(data) - len(chunk) < MAX_HEADER_SIZE <= len(data) or len(data) == size:
                    if expected_index_size(bytes(data[:MAX_HEADER_SIZE]), layer) != size:
                        raise DeltaAbandoned("the block index's size disagrees with its header")
        finally:
            stream.close()
    except DeltaAbandoned:
        raise
    except ImageError as exc:
        raise DeltaAbandoned("the block index cannot be read: %s" % exc) from exc
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise DeltaAbandoned("the block index does not match its digest")
    # The bytearray itself: a copy into bytes held the index (16 MiB for a 4 GiB layer) once more.
    return parse_index(data, layer)


IndexFinder = t.Callable[[SelectedLayer], t.Optional[t.Mapping[str, t.Any]]]


def try_delta(job: DeltaJob, find_index: IndexFinder) -> tuple[Staged | None, DeltaReport]:
    """The layer staged from seeds and ranges, or None and the reason the full download is to be used."""
    report = DeltaReport()
    try:
        try:
            descriptor = find_index(job.layer)
        except (ImageError, OSError) as exc:
            raise DeltaAbandoned("the block index cannot be looked up: %s" % exc) from exc
        if descriptor is None:
            raise DeltaAbandoned("the image has no block index for this layer")
        index = read_index_blob(job.source, descriptor, job.layer)
        if not job.seeds:
            # The first delivery, sparse or whole: the index will spare the next update hashing this file.
            report.index = index
        staged = assemble(job, index, report)
        report.index = index
    except DeltaAbandoned as exc:
        report.reason = str(exc)
        return None, report
    except OSError as exc:
        # A seed that cannot be read (EIO on a device), a partial file that cannot be written: the
        # full download says what is wrong with dest, if anything.
        report.reason = "reading a seed or writing the partial file failed: %s" % (exc.strerror or exc)
        return None, report
    report.used = True
    return staged, report


def index_finder(source: ImageSource, manifest_digest: str) -> IndexFinder:
    """Finds a layer's block index among the platform manifest's referrers (listed once for every layer)."""
    listed: list[dict[str, t.Any]] | None = None

    def indexes() -> list[dict[str, t.Any]]:
        # Here, not at the top: reading a local layout must not need the registry client's HTTP library.
        from ansible_collections.ironcore.image.plugins.module_utils._referrers import list_referrers, read_referrer

        # Behind mirrors, listed at the origin and at the mirrors when it cannot answer (as signatures
        # are); the ranges still go to whichever source serves the blob.
        found: list[dict[str, t.Any]] = []
        for referrer in list_referrers(source, manifest_digest, ARTIFACT_TYPE):
            manifest = read_referrer(source, referrer)
            found.extend(layer for layer in manifest.get("layers", []) if isinstance(layer, dict))
        return found

    def find(layer: SelectedLayer) -> t.Mapping[str, t.Any] | None:
        nonlocal listed
        if listed is None:
            listed = indexes()
        for descriptor in listed:
            annotations = descriptor.get("annotations")
            if isinstance(annotations, dict) and annotations.get(LAYER_ANNOTATION) == layer.digest:
                return descriptor
        return None

    return find


class DeltaFetch:
    """The delta side of one fetch: per layer, a staged file from seeds and ranges, or the reason to go full."""

    def __init__(
        self,
        source: ImageSource,
        manifest_digest: str,
        params: t.Mapping[str, t.Any],
        state_dir: str | None,
        warn: Warn,
    ):
        self.source = source
        self.enabled = (params.get("delta") or "auto") != "never"
        self.seed_paths = [str(path) for path in params.get("seeds") or []]
        self.state_dir = state_dir
        self.concurrency = int(params.get("concurrency") or 1)
        self.retries = int(params.get("retries") or 0)
        self.warn = warn
        self.find_index = index_finder(source, manifest_digest) if self.enabled else None
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._indexes: dict[str, BlockIndex] = {}

    def _warn_once(self, message: str) -> None:
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        self.warn(message)

    def stage(
        self,
        layer: SelectedLayer,
        path: str,
        partial_dir: str | None,
        progress: ProgressRecorder | None,
        full: t.Callable[[], Staged],
    ) -> tuple[Staged, DeltaReport]:
        """The layer staged for `path`: from a delta when it works out, else by `full` (the whole blob)."""
        if not self.enabled or self.find_index is None:
            return full(), DeltaReport(reason="delta: never")
        if layer.packed:
            return full(), DeltaReport(reason="the layer is packed (tar+gzip); only raw layers have block indexes")
        seeds = open_seeds(self.seed_paths, [path], self._warn_once)
        try:
            job = DeltaJob(
                self.source,
                layer,
                path,
                partial_dir,
                seeds,
                self.state_dir,
                self.concurrency,
                self.retries,
                progress=progress,
            )
            staged, report = try_delta(job, self.find_index)
        finally:
            close_seeds(seeds)
        if report.index is not None:
            with self._lock:
                self._indexes[path] = report.index
            report.index = None
        if staged is None:
            staged = full()
            staged.delivered.bytes_downloaded += report.fetched_bytes
        return staged, report

    def remember(self, path: str) -> None:
        """With the file at `path` in place and its attributes final: cache its block hashes for the next update."""
        index = self._indexes.pop(path, None)
        if index is not None and self.state_dir is not None:
            remember_hashes(path, index, self.state_dir)
