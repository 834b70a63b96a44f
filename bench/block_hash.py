"""Block hash speed (`make bench-hash`): the candidates for the block index, per 4 KiB block, in Python.

Each hash is called once per block, as the block index and the seed hashing call it, so the table counts
the per-call cost (the Python call, the hash object, the digest bytes) together with the hashing itself:
- `ns/call`: one call on an empty block, the fixed cost;
- `1 core`: one thread hashing block after block;
- `2 threads`: two threads of one process, each over its own blocks (the way the modules run the block
  index beside the layer's sha256, and a seed beside the range downloads): it scales only when the binding
  lets go of the GIL while it hashes;
- `2 processes`: the same work in two processes, the machine's ceiling for two cores.
GiB/s is of block data hashed, summed over the workers. Every hash gives 128 bits (sha256 truncated to its
first 16 bytes, as index v1 does). A missing binding is listed as such (`pip install xxhash blake3`).

Try it small: --size-mib=16 --rounds=1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import multiprocessing
import os
import threading
import time
import typing as t

BLOCK = 4096
MiB = 1024 * 1024
GiB = 1024 * MiB

Hash = t.Callable[[t.Any], bytes]


def _sha256_128(block: t.Any) -> bytes:
    return hashlib.sha256(block).digest()[:16]


def _blake2b_128(block: t.Any) -> bytes:
    return hashlib.blake2b(block, digest_size=16).digest()


def candidates() -> dict[str, Hash | str]:
    """Each candidate's block hash, or why it cannot be measured here."""
    found: dict[str, Hash | str] = {"sha256-128": _sha256_128, "blake2b-128": _blake2b_128}
    try:
        import blake3

        found["blake3-128"] = lambda block: blake3.blake3(block).digest(16)
    except ImportError:
        found["blake3-128"] = "not installed (pip install blake3)"
    try:
        import xxhash

        found["xxh3-128"] = xxhash.xxh3_128_digest
    except ImportError:
        found["xxh3-128"] = "not installed (pip install xxhash)"
    return found


def _hash_all(function: Hash, data: bytes) -> None:
    view = memoryview(data)
    for offset in range(0, len(view), BLOCK):
        function(view[offset : offset + BLOCK])


def per_call_ns(function: Hash, calls: int = 200_000) -> float:
    empty = memoryview(b"")
    start = time.perf_counter()
    for _call in range(calls):
        function(empty)
    return (time.perf_counter() - start) / calls * 1e9


def one_core(function: Hash, data: bytes) -> float:
    start = time.perf_counter()
    _hash_all(function, data)
    return len(data) / (time.perf_counter() - start) / GiB


def threads(function: Hash, data: bytes, count: int) -> float:
    barrier = threading.Barrier(count + 1)

    def work() -> None:
        barrier.wait()
        _hash_all(function, data)

    workers = [threading.Thread(target=work) for _worker in range(count)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return count * len(data) / (time.perf_counter() - start) / GiB


def _process_work(name: str, size: int) -> float:
    function = candidates()[name]
    assert callable(function)
    data = os.urandom(size)
    return one_core(function, data)


def processes(name: str, size: int, count: int) -> float:
    # Each process times its own loop; they run at once, so the sum is the machine's rate.
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(count, mp_context=context) as pool:
        rates = list(pool.map(_process_work, [name] * count, [size] * count))
    return sum(rates)


def measure(size_mib: int, rounds: int) -> list[list[str]]:
    data = os.urandom(size_mib * MiB)
    rows = []
    baseline = None
    for name, function in candidates().items():
        if not callable(function):
            rows.append([name, function, "", "", "", "", ""])
            continue
        ns = min(per_call_ns(function) for _round in range(rounds))
        single = max(one_core(function, data) for _round in range(rounds))
        two_threads = max(threads(function, data, 2) for _round in range(rounds))
        two_processes = max(processes(name, size_mib * MiB, 2) for _round in range(rounds))
        baseline = baseline or single
        rows.append(
            [
                name,
                "%.0f" % ns,
                "%.2f" % (BLOCK / (single * GiB) * 1e6),
                "%.2f" % single,
                "%.2f" % two_threads,
                "%.2f" % two_processes,
                "%.1fx" % (single / baseline),
            ]
        )
    return rows


def table(rows: t.Sequence[t.Sequence[str]]) -> str:
    head = [
        "hash",
        "ns/call",
        "µs/4 KiB block",
        "GiB/s 1 core",
        "GiB/s 2 threads",
        "GiB/s 2 processes",
        "1 core vs sha256",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="block data hashed per worker and round")
    parser.add_argument("--rounds", type=int, default=3, help="the best of this many rounds is kept")
    args = parser.parse_args()
    print(
        "%d-byte blocks, %d MiB per worker, best of %d rounds, %d CPUs, load average %.2f"
        % (BLOCK, args.size_mib, args.rounds, os.cpu_count() or 0, os.getloadavg()[0]),
        flush=True,
    )
    print(table(measure(args.size_mib, args.rounds)))


if __name__ == "__main__":
    main()
