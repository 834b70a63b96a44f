"""Delta fetch logic: the plan from seeds, range coalescing, the seed hash cache, and assembly from a layout."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _delta as delta
from ansible_collections.ironcore.image.plugins.module_utils._blockindex import BlockHasher, BlockIndex
from ansible_collections.ironcore.image.plugins.module_utils._io import FileStream, HashingCounter
from ansible_collections.ironcore.image.plugins.module_utils._select import SelectedLayer
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

BLOCK = 4096


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def index_of(data: bytes, block_size: int = BLOCK) -> BlockIndex:
    hasher = BlockHasher(block_size)
    hasher.update(data)
    return hasher.finish(digest_of(data))


def found_in(index: BlockIndex, hashes_per_seed: list[bytes], pass_blocks: int | None = None):
    """Where the seeds with these block hashes hold each block of the index (what locate_blocks gives)."""
    return delta.match_blocks(index, [functools.partial(list, [hashes]) for hashes in hashes_per_seed], pass_blocks)


def found_by_hash(index: BlockIndex, hashes_per_seed: list[bytes]) -> dict[bytes, int]:
    """Where the seeds hold each hash of the index, found in one dictionary of every wanted hash."""
    wanted = delta.wanted_hashes(index)
    for number, hashes in enumerate(hashes_per_seed):
        delta.find_in_seed(wanted, number, [hashes], index.header.hash_length)
    return wanted


def blocks(count: int, seed: int) -> list[bytes]:
    generator = random.Random(seed)
    return [generator.randbytes(BLOCK) for _number in range(count)]


def old_and_new() -> tuple[bytes, bytes]:
    """A (256 blocks) and B: A's blocks moved by one block, 3 rewritten, 2 zeroed, 10 new at the end, a short tail."""
    old = blocks(256, 1)
    new = [bytes(BLOCK)] + old[:100] + blocks(3, 2) + old[103:200] + [bytes(BLOCK)] * 2 + old[200:] + blocks(10, 3)
    return b"".join(old), b"".join(new) + b"tail"


def test_plan_takes_seed_blocks_wherever_they_are_and_fetches_the_rest():
    old, new = old_and_new()
    index = index_of(new)
    plan = delta.make_plan(index, found_in(index, [index_of(old).hashes]))
    # Every copy points at a seed block with the same content.
    for first, seed, block, count in plan.copies:
        assert seed == 0
        offset, length = plan.span(first, count)
        assert new[offset : offset + length] == old[block * BLOCK : block * BLOCK + length]
    covered = {n for first, _s, _b, count in plan.copies for n in range(first, first + count)}
    fetched = {n for offset, length in plan.ranges for n in range(offset // BLOCK, -(-(offset + length) // BLOCK))}
    assert not covered & fetched
    zeros = {n for n in range(index.blocks) if index.is_zero(n)}
    assert zeros == {0, 201, 202}
    # The three rewritten blocks, the ten new ones and the tail; nothing else.
    assert fetched == {101, 102, 103, *range(index.blocks - 11, index.blocks)}
    assert covered | fetched | zeros == set(range(index.blocks))
    assert plan.fetch_bytes == 13 * BLOCK + 4
    # Copies run over consecutive seed blocks.
    assert len(plan.copies) <= 4


def test_no_seed_means_everything_but_zeros_is_fetched():
    _old, new = old_and_new()
    index = index_of(new)
    plan = delta.make_plan(index, found_in(index, []))
    assert plan.copies == []
    # The two zero blocks in the middle lie within a gap and are fetched with their neighbours.
    assert plan.fetch_bytes == len(new) - BLOCK
    with pytest.raises(delta.DeltaAbandoned, match="more than 60 %"):
        delta.check_worth_it(plan, len(new))


def test_coalesce_merges_gaps_up_to_64_kib_and_splits_long_ranges():
    gap = delta.MAX_GAP // BLOCK
    # Runs of 100 blocks: a 64 KiB gap is within the budget (1/5 of the runs' bytes), a larger one never is.
    runs = [(0, 100), (100 + gap, 200 + gap), (201 + 2 * gap, 301 + 2 * gap)]
    assert delta.coalesce(runs, BLOCK, 10**9) == [(0, (200 + gap) * BLOCK), ((201 + 2 * gap) * BLOCK, 100 * BLOCK)]
    assert delta.coalesce([(0, 1), (2, 3)], BLOCK, 10**9, max_gap=0) == [(0, BLOCK), (2 * BLOCK, BLOCK)]
    # The last block is cut at the layer's end.
    assert delta.coalesce([(0, 2)], BLOCK, BLOCK + 10) == [(0, BLOCK + 10)]
    long_run = delta.MAX_RANGE // BLOCK * 2 + 1
    assert delta.coalesce([(0, long_run)], BLOCK, 10**12) == [
        (0, delta.MAX_RANGE),
        (delta.MAX_RANGE, delta.MAX_RANGE),
        (2 * delta.MAX_RANGE, BLOCK),
    ]


def test_seed_hashes_are_cached_and_dropped_when_the_seed_changes(tmp_path):
    seed_path = tmp_path / "old.img"
    data = b"".join(blocks(8, 4)) + b"x"
    seed_path.write_bytes(data)
    cache = tmp_path / "state"
    cache.mkdir(mode=0o700)
    seed = delta.open_seed(str(seed_path))
    assert isinstance(seed, delta.Seed)
    hashes = b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache)))
    assert hashes == index_of(data).hashes
    (cached,) = list(cache.iterdir())
    assert cached.name.startswith(delta.SEED_CACHE_PREFIX)
    assert oct(cached.stat().st_mode & 0o777) == "0o600"
    seed.close()
    # A cache entry that names the same identity is used as it is: poison it and see it come back.
    poisoned = cached.read_bytes()
    poisoned = poisoned[: -len(hashes)] + bytes(len(hashes))
    cached.write_bytes(poisoned)
    cached.chmod(0o600)
    seed = delta.open_seed(str(seed_path))
    assert b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache))) == bytes(len(hashes))
    seed.close()
    # The seed changes: its identity does, and it is hashed again.
    seed_path.write_bytes(data[::-1])
    seed = delta.open_seed(str(seed_path))
    assert b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache))) == index_of(data[::-1]).hashes
    seed.close()


def test_a_seed_cache_of_one_block_hash_is_never_read_for_another(tmp_path):
    seed_path = tmp_path / "old.img"
    data = b"".join(blocks(8, 5))
    seed_path.write_bytes(data)
    cache = tmp_path / "state"
    cache.mkdir(mode=0o700)
    seed = delta.open_seed(str(seed_path))
    assert isinstance(seed, delta.Seed)
    try:
        sha256 = b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache), "sha256"))
        assert sha256 == b"".join(hashlib.sha256(block).digest()[:16] for block in blocks(8, 5))
        (v1_entry,) = list(cache.iterdir())
        assert ".sha256." in v1_entry.name
        # The sha256 entry, even under the xxh3-128 entry's name, is not taken for xxh3-128 hashes.
        v2_name = v1_entry.name.replace(".sha256.", ".xxh3-128.")
        (cache / v2_name).write_bytes(v1_entry.read_bytes())
        (cache / v2_name).chmod(0o600)
        assert b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache), "xxh3-128")) == index_of(data).hashes
        assert json.loads((cache / v2_name).read_bytes().split(b"\n", 1)[0])["hash"] == "xxh3-128"
        # Each format keeps its own entry, and each is used for its own hash.
        assert sorted(path.name for path in cache.iterdir()) == sorted([v1_entry.name, v2_name])
        assert b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache), "sha256")) == sha256
    finally:
        seed.close()


def test_seeds_that_cannot_be_read_are_skipped_with_a_warning(tmp_path):
    warnings: list[str] = []
    real = tmp_path / "real"
    real.write_bytes(b"a" * BLOCK)
    link = tmp_path / "link"
    link.symlink_to(real)
    seeds = delta.open_seeds(
        [str(tmp_path), str(tmp_path / "missing"), str(link)], [str(real), str(tmp_path / "absent")], warnings.append
    )
    try:
        # The link and the file are one seed; the own file that is absent is not worth a warning.
        assert [seed.path for seed in seeds] == [str(link)]
        assert len(warnings) == 2
        assert "is a directory" in warnings[0]
        assert "does not exist" in warnings[1]
    finally:
        delta.close_seeds(seeds)


def test_file_stream_length_bounds_the_range(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 10)
    stream = FileStream(str(path), 10, 5)
    assert b"".join(bytes(c) for c in stream.iter_chunks(2)) == bytes(range(10, 15))
    stream.close()
    # Past the end: from 0, all of it, as a registry that ignores Range answers.
    stream = FileStream(str(path), 5000, 5)
    assert stream.offset == 0
    assert len(b"".join(bytes(c) for c in stream.iter_chunks(1024))) == 2560
    stream.close()


class Setup:
    def __init__(self, tmp_path, old: bytes, new: bytes):
        self.layout = tmp_path / "layout"
        (self.layout / "blobs" / "sha256").mkdir(parents=True)
        (self.layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.new = new
        self.digest = digest_of(new)
        (self.layout / "blobs" / "sha256" / self.digest.split(":")[1]).write_bytes(new)
        self.dest = tmp_path / "dest"
        self.dest.mkdir()
        self.state = tmp_path / "state"
        self.state.mkdir(mode=0o700)
        self.seed_path = tmp_path / "seed.img"
        self.seed_path.write_bytes(old)
        self.source = LayoutStore(str(self.layout))
        self.layer = SelectedLayer("rootfs", "application/vnd.ironcore.image.rootfs", self.digest, len(new), False)

    def job(self) -> delta.DeltaJob:
        seeds = delta.open_seeds([str(self.seed_path)], [], lambda _m: None)
        return delta.DeltaJob(
            self.source, self.layer, str(self.dest / "rootfs"), str(self.state), seeds, str(self.state), 4, 1, 0.0
        )

    def deliver(self, descriptor: dict, job: delta.DeltaJob | None = None) -> delta.DeltaReport:
        """Run the delta, commit it, and check that dest holds the new layer."""
        job = job or self.job()
        staged, report = delta.try_delta(job, lambda _layer: descriptor)
        delta.close_seeds(job.seeds)
        assert staged is not None, report.reason
        staged.commit()
        assert (self.dest / "rootfs").read_bytes() == self.new
        return report

    def add_index(self, data: bytes) -> dict:
        index_digest = digest_of(data)
        (self.layout / "blobs" / "sha256" / index_digest.split(":")[1]).write_bytes(data)
        return {"digest": index_digest, "size": len(data)}


def test_assembly_rebuilds_the_layer_from_seed_and_ranges(tmp_path):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    descriptor = setup.add_index(index_of(new).encode())
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert report.reason is None and staged is not None
    staged.commit()
    assert (setup.dest / "rootfs").read_bytes() == new
    result = report.as_result()
    assert result["used"] is True
    assert result["fetched_bytes"] == 13 * BLOCK + 4
    assert result["seed_bytes"] == len(new) - 3 * BLOCK - result["fetched_bytes"]
    # Two ranges: the three rewritten blocks, and the new blocks with the tail.
    assert result["requests"] == 2
    # The three zero blocks are holes.
    assert result["zero_bytes"] == 3 * BLOCK


def test_a_second_delta_with_the_same_seed_reads_its_cache_instead_of_the_seed(tmp_path):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    descriptor = setup.add_index(index_of(new).encode())
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is not None, report.reason
    staged.discard()
    # The first run read the whole seed to hash it, and left its hashes in the state directory.
    assert report.as_result()["seed_hashed_bytes"] == len(old)
    (entry,) = [p for p in setup.state.iterdir() if p.name.startswith(delta.SEED_CACHE_PREFIX)]
    before = entry.stat()
    report = setup.deliver(descriptor)
    # The second read the cache: no byte of the seed hashed, the entry neither rewritten nor replaced.
    assert report.as_result()["seed_hashed_bytes"] == 0
    after = entry.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_seed_delivered_into_another_directory_is_read_from_the_cache_the_fetch_left_beside_it(tmp_path):
    _old, new = old_and_new()
    # The provision role gives every version of a boot server its own directory, and so its own state.
    earlier = tmp_path / "boot" / "os-1"
    (earlier / ".ironcore").mkdir(parents=True, mode=0o700)
    path = earlier / "rootfs"
    path.write_bytes(new)
    index = index_of(new)
    # Marked: if the file were hashed, these would not come back.
    marked = BlockIndex(index.header, bytes(len(index.hashes)), index.zeros)
    delta.remember_hashes(str(path), marked, str(earlier / ".ironcore"))
    state = tmp_path / "boot" / "os-2" / ".ironcore"
    state.mkdir(parents=True, mode=0o700)
    seed = delta.open_seed(str(path))
    assert isinstance(seed, delta.Seed)
    try:
        assert b"".join(delta.seed_hashes(seed, BLOCK, 16, str(state))) == marked.hashes
    finally:
        seed.close()
    assert seed.hashed_bytes == 0
    assert list(state.iterdir()) == []


def test_the_in_order_digest_follows_the_parts_as_they_finish(tmp_path):
    data = os.urandom(40 * BLOCK + 100)
    path = tmp_path / "file"
    path.write_bytes(bytes(len(data)))
    parts = [(0, 5 * BLOCK), (7 * BLOCK, 10 * BLOCK), (20 * BLOCK, 20 * BLOCK + 100)]
    with open(path, "r+b") as handle:
        fd = handle.fileno()
        # Between the parts: holes, zero in the file and in the data alike.
        data = bytearray(data)
        for start, end in [(5 * BLOCK, 7 * BLOCK), (17 * BLOCK, 20 * BLOCK)]:
            data[start:end] = bytes(end - start)
        digest = delta.InOrderDigest(fd, len(data), parts)
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(digest.run)
            # Written and finished last part first: nothing may be hashed before the first part is there.
            for offset, length in reversed(parts):
                os.pwrite(fd, bytes(data[offset : offset + length]), offset)
                digest.finished(offset)
            counter = running.result(timeout=30)
        assert counter is not None
        assert (counter.size, counter.digest) == (len(data), digest_of(bytes(data)))
        stopped = delta.InOrderDigest(fd, len(data), parts)
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(stopped.run)
            stopped.stop()
            assert running.result(timeout=30) is None


def test_the_wanted_hashes_and_the_seed_lookup_agree_with_a_block_by_block_walk():
    generator = random.Random(5)
    chosen = blocks(20, 9)
    # Repeated blocks, runs of zero blocks of every length, and a last block of a few bytes.
    layer = [bytes(BLOCK) if generator.random() < 0.4 else generator.choice(chosen) for _number in range(203)]
    data = b"".join(layer) + b"end"
    index = index_of(data)
    expected = {}
    for number in range(index.blocks):
        if not index.is_zero(number):
            expected.setdefault(index.block_hash(number), -1)
    wanted = delta.wanted_hashes(index)
    assert wanted == expected
    seed = b"".join(generator.choice(chosen) for _number in range(50))
    seed_hashes = index_of(seed).hashes
    delta.find_in_seed(wanted, 1, [seed_hashes[: 16 * 7], seed_hashes[16 * 7 :]], 16)
    listed = [seed_hashes[at : at + 16] for at in range(0, len(seed_hashes), 16)]
    for digest, where in wanted.items():
        if digest in listed:
            # The first block of the seed with that content.
            assert (where >> 40, where & ((1 << 40) - 1)) == (1, listed.index(digest))
        else:
            assert where == -1
    assert sum(where != -1 for where in wanted.values()) >= 10


def plan_block_by_block(index: BlockIndex, found: dict[bytes, int]) -> tuple[list[tuple[int, int]], list[tuple]]:
    """The plan walked one block at a time, the plainest way, from where the seeds hold each hash (a dictionary,
    as locate_blocks once gave): missing runs, then copies that skip fetched blocks."""
    runs: list[tuple[int, int]] = []
    for number in range(index.blocks):
        if not index.is_zero(number) and found[index.block_hash(number)] == -1:
            if runs and runs[-1][1] == number:
                runs[-1] = (runs[-1][0], number + 1)
            else:
                runs.append((number, number + 1))
    ranges = delta.coalesce(runs, BLOCK, index.header.layer_size)
    fetched = {n for offset, length in ranges for n in range(offset // BLOCK, -(-(offset + length) // BLOCK))}
    copies: list[tuple] = []
    per_run = delta.SEED_RUN // BLOCK
    for number in range(index.blocks):
        if number in fetched or index.is_zero(number):
            continue
        where = found[index.block_hash(number)]
        seed, block = where >> 40, where & ((1 << 40) - 1)
        if copies:
            first, last_seed, last_block, count = copies[-1]
            if first + count == number and last_seed == seed and last_block + count == block and count < per_run:
                copies[-1] = (first, seed, last_block, count + 1)
                continue
        copies.append((number, seed, block, 1))
    return ranges, copies


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_agrees_with_a_block_by_block_walk(seed):
    generator = random.Random(seed)
    old = blocks(700, 10 + seed)
    new_blocks = blocks(40, 50 + seed)
    layer = []
    while len(layer) < 900:
        pick = generator.random()
        if pick < 0.15:
            layer.extend([bytes(BLOCK)] * generator.randint(1, 20))
        elif pick < 0.3:
            layer.extend(generator.sample(new_blocks, generator.randint(1, 5)))
        elif pick < 0.4:
            # A seed block between two new ones: the gap is joined, and the seed block fetched, not copied.
            layer.extend([generator.choice(new_blocks), generator.choice(old), generator.choice(new_blocks)])
        else:
            # A stretch of the seed, long enough at times to be cut at SEED_RUN.
            start = generator.randrange(len(old))
            layer.extend(old[start : start + generator.choice([1, 3, 30, 300])])
    data = b"".join(layer) + b"x" * generator.randrange(BLOCK)
    index = index_of(data)
    # Two seeds: the second holds a part of the first again, so the first seed's block is the one found.
    seeds = [index_of(b"".join(old)).hashes, index_of(b"".join(old[100:400])).hashes]
    locations = found_in(index, seeds)
    plan = delta.make_plan(index, locations)
    assert (plan.ranges, plan.copies) == plan_block_by_block(index, found_by_hash(index, seeds))
    assert any(count == delta.SEED_RUN // BLOCK for _f, _s, _b, count in plan.copies)
    # Matched a few blocks at a time, in passes that cut runs anywhere: the same locations.
    assert found_in(index, seeds, pass_blocks=37) == locations
    assert found_in(index, seeds, pass_blocks=1) == locations


def test_a_seed_block_in_a_joined_gap_is_fetched_not_copied():
    old, new = blocks(40, 21), blocks(10, 22)
    data = b"".join([*new[:5], old[5], *new[5:], *old[20:40]])
    index = index_of(data)
    seeds = [index_of(b"".join(old)).hashes]
    locations = found_in(index, seeds)
    plan = delta.make_plan(index, locations)
    # Ten missing blocks allow two blocks of gap: the seed block between them travels with them.
    assert plan.ranges == [(0, 11 * BLOCK)]
    assert plan.copies == [(11, 0, 20, 20)]
    assert (plan.ranges, plan.copies) == plan_block_by_block(index, found_by_hash(index, seeds))
    # The plan leaves the locations it was given as they were.
    assert locations == found_in(index, seeds)


def test_a_wrong_index_is_abandoned_and_nothing_reaches_dest(tmp_path):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    # Claims the layer is exactly the old file padded: every block would come from the seed.
    lying = index_of(old + new[len(old) :])
    wrong = BlockIndex(index_of(new).header, lying.hashes, lying.zeros)
    descriptor = setup.add_index(wrong.encode())
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is None
    assert "not the layer digest" in str(report.reason)
    assert list(setup.dest.iterdir()) == []
    assert [p.name for p in setup.state.iterdir() if p.name.endswith(".partial")] == []


def test_an_index_for_another_size_is_refused(tmp_path):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    other = index_of(new + bytes(BLOCK))
    descriptor = setup.add_index(other.encode())
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is None
    assert "not this layer" in str(report.reason)


def test_a_truncated_index_is_refused(tmp_path):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    encoded = index_of(new).encode()
    descriptor = setup.add_index(encoded[:-10])
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is None
    assert "disagrees with its header" in str(report.reason)


def test_seed_blocks_that_changed_since_hashing_are_fetched_instead(tmp_path, monkeypatch):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    descriptor = setup.add_index(index_of(new).encode())
    job = setup.job()
    planned = delta.make_plan

    def plan_then_change_the_seed(index, found):
        plan = planned(index, found)
        # Between hashing and reading, someone rewrites a hundred blocks of the seed in place.
        with open(setup.seed_path, "r+b") as handle:
            handle.seek(50 * BLOCK)
            handle.write(os.urandom(100 * BLOCK))
        return plan

    monkeypatch.setattr(delta, "make_plan", plan_then_change_the_seed)
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is not None, report.reason
    staged.commit()
    assert (setup.dest / "rootfs").read_bytes() == new
    assert report.fetched_bytes >= 100 * BLOCK


def test_a_delivered_file_gets_its_hashes_from_the_index_without_being_read(tmp_path):
    _old, new = old_and_new()
    path = tmp_path / "rootfs"
    path.write_bytes(new)
    cache = tmp_path / "state"
    cache.mkdir(mode=0o700)
    index = index_of(new)
    # Marked: if the file were hashed, these would not come back.
    marked = BlockIndex(index.header, bytes(len(index.hashes)), index.zeros)
    delta.remember_hashes(str(path), marked, str(cache))
    seed = delta.open_seed(str(path))
    assert isinstance(seed, delta.Seed)
    assert b"".join(delta.seed_hashes(seed, BLOCK, 16, str(cache))) == marked.hashes
    seed.close()
    # A file of another size than the index's is not remembered.
    other = tmp_path / "other"
    other.write_bytes(new[:-1])
    delta.remember_hashes(str(other), marked, str(cache))
    assert len(list(cache.iterdir())) == 1


def test_an_interrupted_full_download_is_continued_rather_than_replaced(tmp_path):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    descriptor = setup.add_index(index_of(new).encode())
    partial = delta.partial_path(str(setup.state), "rootfs", setup.digest)
    with open(partial, "wb") as kept:
        kept.write(new[:5000])
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is None
    assert "continued instead" in str(report.reason)
    with open(partial, "rb") as kept:
        assert kept.read() == new[:5000]


# ---- what an index may cost the node ----------------------------------------------------


@pytest.mark.parametrize(
    "block_size, hash_length, refusal",
    [
        (4096, 16, None),
        (65536, 16, None),
        (16 * 1024 * 1024, 16, None),
        (512, 16, "512-byte blocks"),
        (2048, 16, "2048-byte blocks"),
        (32 * 1024 * 1024, 16, "33554432-byte blocks"),
        (4096, 32, "32-byte hashes"),
        (4096, 20, "20-byte hashes"),
    ],
)
def test_a_delta_uses_only_the_index_shapes_the_build_writes(block_size, hash_length, refusal):
    header = delta.Header(digest_of(b"layer"), 10**9, block_size, hash_length)
    if refusal is None:
        delta.check_index_shape(header)
        return
    with pytest.raises(delta.DeltaAbandoned) as caught:
        delta.check_index_shape(header)
    assert refusal in str(caught.value) and "\n" not in str(caught.value)


def test_coalesce_fills_the_smallest_gaps_first_and_wastes_at_most_a_fifth_of_the_missing_bytes():
    # A package update: single missing blocks a few blocks apart. Filling every gap of up to 64 KiB would
    # fetch several times the missing bytes; the budget keeps the unchanged blocks fetched to 1/5 of them.
    generator = random.Random(7)
    runs, at = [], 0
    for _number in range(400):
        at += generator.choice([1, 2, 4, 5, 8, 12, 16])
        runs.append((at, at + 1))
        at += 1
    ranges = delta.coalesce(runs, BLOCK, 10**9)
    missing = len(runs) * BLOCK
    fetched = sum(length for _offset, length in ranges)
    # The goal of issue 27: at most 1.25 times the missing bytes (the budget is 1/5).
    assert missing < fetched <= missing * 1.25
    assert len(ranges) < len(runs)
    # Every missing block is fetched; the gaps that were filled are the smallest ones.
    covered = {n for offset, length in ranges for n in range(offset // BLOCK, (offset + length) // BLOCK)}
    assert {first for first, _end in runs} <= covered
    filled = [runs[n + 1][0] - runs[n][1] for n in range(len(runs) - 1) if runs[n][1] in covered]
    left = [runs[n + 1][0] - runs[n][1] for n in range(len(runs) - 1) if runs[n][1] not in covered]
    assert max(filled) <= min(left)


@pytest.mark.parametrize(
    "block_size, hash_length, reason", [(512, 16, "512-byte blocks"), (4096, 32, "32-byte hashes")]
)
def test_a_fine_index_is_refused_from_its_header_before_any_seed_is_read(
    tmp_path, monkeypatch, block_size, hash_length, reason
):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    hasher = BlockHasher(block_size, hash_length, hash_name="sha256")
    hasher.update(new)
    descriptor = setup.add_index(hasher.finish(setup.digest).encode())

    def never(*_args):
        raise AssertionError("a seed was hashed")

    monkeypatch.setattr(delta, "seed_hashes", never)
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is None
    assert reason in str(report.reason), report.reason
    assert [p.name for p in setup.state.iterdir()] == []


def test_seeds_too_small_to_pay_are_never_hashed(tmp_path, monkeypatch):
    old, new = old_and_new()
    # One block of the old release: at most one of the layer's ~270 blocks could come from it.
    setup = Setup(tmp_path, old[:BLOCK], new)
    descriptor = setup.add_index(index_of(new).encode())

    def never(*_args):
        raise AssertionError("a seed was hashed")

    monkeypatch.setattr(delta, "seed_hashes", never)
    job = setup.job()
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    delta.close_seeds(job.seeds)
    assert staged is None
    assert "the seeds hold 1 blocks" in str(report.reason) and "more than 60 %" in str(report.reason), report.reason


@pytest.mark.parametrize("block_size", [BLOCK, 65536])
def test_seed_hashes_stream_in_batches_and_the_cache_stays_a_256th_of_the_seed(tmp_path, block_size):
    seed_path = tmp_path / "seed.img"
    data = os.urandom(3 * delta.SEED_READ + 5000)
    seed_path.write_bytes(data)
    cache = tmp_path / "state"
    cache.mkdir(mode=0o700)
    seed = delta.open_seed(str(seed_path))
    assert isinstance(seed, delta.Seed)
    try:
        batches = list(delta.seed_hashes(seed, block_size, 16, str(cache)))
    finally:
        seed.close()
    # Never the seed's whole list at once: a batch covers one read of the seed.
    assert len(batches) == 4
    assert max(len(batch) for batch in batches) == delta.SEED_READ // block_size * 16
    assert b"".join(batches) == index_of(data, block_size).hashes
    (cached,) = list(cache.iterdir())
    header_size = cached.read_bytes().index(b"\n") + 1
    assert cached.stat().st_size == header_size + len(b"".join(batches))
    assert cached.stat().st_size <= len(data) // 256 + 4096


def test_a_hash_list_finer_than_the_default_is_never_cached(tmp_path):
    seed_path = tmp_path / "seed.img"
    data = os.urandom(64 * 1024)
    seed_path.write_bytes(data)
    cache = tmp_path / "state"
    cache.mkdir(mode=0o700)
    seed = delta.open_seed(str(seed_path))
    assert isinstance(seed, delta.Seed)
    try:
        assert b"".join(delta.seed_hashes(seed, 512, 16, str(cache))) == index_of(data, 512).hashes
        assert b"".join(delta.seed_hashes(seed, BLOCK, 32, str(cache), "sha256")) == index_of_with(data, BLOCK, 32)
    finally:
        seed.close()
    assert list(cache.iterdir()) == []


def index_of_with(data: bytes, block_size: int, hash_length: int) -> bytes:
    hasher = BlockHasher(block_size, hash_length, hash_name="sha256")
    hasher.update(data)
    return hasher.finish(digest_of(data)).hashes


def test_an_index_whose_hash_this_host_cannot_compute_means_a_full_fetch(monkeypatch):
    # xxh3-128 without the xxhash package: refused from the header, with what to install, as a delta reason.
    monkeypatch.setitem(sys.modules, "xxhash", None)
    with pytest.raises(delta.DeltaAbandoned) as caught:
        delta.check_index_shape(delta.Header(digest_of(b"layer"), 10**9, BLOCK, 16, "xxh3-128"))
    assert str(caught.value) == (
        "the block index is unusable: the block hash xxh3-128 needs the Python package xxhash: pip install xxhash"
    )
    delta.check_index_shape(delta.Header(digest_of(b"layer"), 10**9, BLOCK, 16, "sha256"))


def test_nonzero_runs_read_from_the_zero_map_agree_with_every_block():
    generator = random.Random(7)
    for _round in range(50):
        count = generator.randint(1, 200)
        # Long zero stretches (whole 0xff map bytes), long data ones (0x00 bytes), and mixed bytes.
        zero = [generator.random() < 0.5 for _number in range(count)]
        for _stretch in range(3):
            start = generator.randrange(count)
            value = generator.random() < 0.5
            for number in range(start, min(count, start + generator.randint(1, 40))):
                zero[number] = value
        data = b"".join(bytes(BLOCK) if z else b"\x01" + bytes(BLOCK - 1) for z in zero) + b"\x02"
        index = index_of(data)
        expected = [n for n in range(index.blocks) if not index.is_zero(n)]
        runs = delta.nonzero_runs(index)
        assert [n for first, end in runs for n in range(first, end)] == expected
        # Runs are maximal: none touches the next.
        assert all(left[1] < right[0] for left, right in zip(runs, runs[1:]))


def mostly_zeros() -> bytes:
    """200 blocks: data at 0, at 50 and 52 (a zero block between, within a coalesced range), 120-129, and a tail."""
    data = bytearray(200 * BLOCK)
    for number in (0, 50, 52, *range(120, 130)):
        data[number * BLOCK : (number + 1) * BLOCK] = random.Random(number).randbytes(BLOCK)
    return bytes(data) + b"tail"


def test_with_no_seed_only_the_non_zero_blocks_are_fetched_into_a_sparse_file(tmp_path):
    new = mostly_zeros()
    setup = Setup(tmp_path, b"", new)
    descriptor = setup.add_index(index_of(new).encode())
    job = setup.job()
    assert job.seeds == []
    staged, report = delta.try_delta(job, lambda _layer: descriptor)
    assert report.reason is None and staged is not None, report.reason
    staged.commit()
    path = setup.dest / "rootfs"
    assert path.read_bytes() == new
    result = report.as_result()
    # Block 0; 50 to 52 in one range (block 51's zeros travel, they are not written); 120 to 129; the tail.
    assert result == {
        "used": True,
        "seed_bytes": 0,
        "fetched_bytes": 14 * BLOCK + 4,
        "requests": 4,
        "zero_bytes": len(new) - 14 * BLOCK - 4,
        "seed_hashed_bytes": 0,
    }
    # Holes, the zero block within the fetched range among them.
    assert os.stat(path).st_blocks * 512 <= 16 * BLOCK
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.lseek(fd, 51 * BLOCK, os.SEEK_HOLE) == 51 * BLOCK
    finally:
        os.close(fd)
    # The index is kept: the next update reads this file's hashes from the cache.
    assert report.index is not None


def test_with_no_seed_and_too_few_zero_blocks_the_blob_is_downloaded_whole(tmp_path):
    _old, new = old_and_new()
    setup = Setup(tmp_path, b"", new)
    descriptor = setup.add_index(index_of(new).encode())
    staged, report = delta.try_delta(setup.job(), lambda _layer: descriptor)
    assert staged is None
    assert report.reason == (
        "no seed to build from, and a sparse fetch would leave only %d of the layer's %d bytes as holes (it needs"
        " at least 40 %% zero blocks)" % (BLOCK, len(new))
    )
    assert report.index is not None and report.fetched_bytes == 0


def file_digest(fd: int, size: int) -> HashingCounter:
    """The whole file through hash_span, as the in-order digest hashes it."""
    counter = HashingCounter()
    delta.hash_span(fd, counter, 0, size)
    return counter


def test_the_digest_of_a_sparse_file_is_that_of_its_bytes(tmp_path):
    path = tmp_path / "sparse"
    data = bytearray(9 * 1024 * 1024 + 5)
    data[5 * 1024 * 1024 : 5 * 1024 * 1024 + 3] = b"abc"
    data[-1:] = b"z"
    with open(path, "wb") as out:
        out.truncate(len(data))
        out.seek(5 * 1024 * 1024)
        out.write(b"abc")
        out.seek(len(data) - 1)
        out.write(b"z")
    fd = os.open(path, os.O_RDONLY)
    try:
        counter = file_digest(fd, len(data))
    finally:
        os.close(fd)
    assert (counter.digest, counter.size) == (digest_of(bytes(data)), len(data))


def test_the_digest_reads_everything_where_the_file_system_cannot_tell_holes(tmp_path, monkeypatch):
    path = tmp_path / "file"
    data = bytes(3 * 1024 * 1024) + b"data" + bytes(5000)
    path.write_bytes(data)
    real_lseek = os.lseek

    def no_seek_data(fd: int, offset: int, whence: int) -> int:
        if whence in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(22, "Invalid argument")
        return real_lseek(fd, offset, whence)

    monkeypatch.setattr(os, "lseek", no_seek_data)
    fd = os.open(path, os.O_RDONLY)
    try:
        counter = file_digest(fd, len(data))
    finally:
        os.close(fd)
    assert (counter.digest, counter.size) == (digest_of(data), len(data))


def test_sparse_writes_at_any_offset_give_the_bytes_and_skip_only_zero_grains(tmp_path):
    generator = random.Random(3)
    size = 64 * BLOCK
    expected = bytearray(size)
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        position = 0
        while position < size:
            length = min(size - position, generator.randint(1, 3 * BLOCK))
            piece = bytearray(length) if generator.random() < 0.5 else bytearray(generator.randbytes(length))
            if length > 10 and generator.random() < 0.5:
                piece[length // 2] = 1
            delta._pwrite_sparse(fd, piece, position)
            expected[position : position + length] = piece
            position += length
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(expected)


def test_the_state_directory_looked_in_beside_a_seed_is_the_fetchs_default():
    from ansible_collections.ironcore.image.plugins.module_utils._fetch import STATE_SUBDIR

    assert delta.DEFAULT_STATE_SUBDIR == STATE_SUBDIR


@pytest.mark.parametrize("cached", [True, False], ids=["with a cache", "without a cache"])
def test_a_layer_matched_in_passes_reads_each_seed_once_and_is_rebuilt(tmp_path, monkeypatch, cached):
    old, new = old_and_new()
    setup = Setup(tmp_path, old, new)
    index = index_of(new)
    descriptor = setup.add_index(index.encode())
    hashed = []
    hashing = delta._hashed

    def counted(seed, *args):
        hashed.append(seed.path)
        return hashing(seed, *args)

    monkeypatch.setattr(delta, "_hashed", counted)
    # About 260 non-zero blocks in passes of 50: six passes over the seed's hashes.
    monkeypatch.setattr(delta, "PASS_BLOCKS", 50)
    job = setup.job()
    if not cached:
        job.cache_dir = None
    single = found_in(index, [index_of(old).hashes])
    assert delta.locate_blocks(index, job.seeds, job.cache_dir) == single
    # Read and hashed in the first pass; then from its cache, or from the hashes the first pass kept.
    assert hashed == [str(setup.seed_path)]
    assert any(p.name.startswith(delta.SEED_CACHE_PREFIX) for p in setup.state.iterdir()) == cached
    report = setup.deliver(descriptor, job)
    assert report.fetched_bytes == 13 * BLOCK + 4


def test_seeds_smaller_than_the_layer_pay_when_its_blocks_repeat(tmp_path, monkeypatch):
    # 300 blocks of one content and 20 others: the non-zero blocks bound the distinct hashes, counted exactly
    # (a share of the hash space at a time) before the delta gives up.
    others = blocks(20, 31)
    new = b"".join([*([others[0]] * 300), *others[1:]])
    old = b"".join(others)
    monkeypatch.setattr(delta, "PASS_BLOCKS", 8)
    index = index_of(new)
    assert delta.distinct_hashes(index, delta.nonzero_runs(index)) == 20
    setup = Setup(tmp_path, old, new)
    report = setup.deliver(setup.add_index(index.encode()))
    assert report.fetched_bytes == 0


def test_passes_take_at_most_so_many_blocks_and_cut_runs_where_they_are_full():
    runs = [(0, 5), (10, 12), (20, 31)]
    assert list(delta._passes(runs, 4)) == [
        [(0, 4)],
        [(4, 5), (10, 12), (20, 21)],
        [(21, 25)],
        [(25, 29)],
        [(29, 31)],
    ]
    assert list(delta._passes(runs, 100)) == [runs]
    assert list(delta._passes([], 4)) == []
