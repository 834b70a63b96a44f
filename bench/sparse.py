"""Sparse first install: a mostly empty ext4 rootfs fetched by a node with no seed, against a full fetch.

The image is an ext4 file system of --size-mib (4096 for the issue's figures) made with `mke2fs -d` from
a quarter of its size in copies of /usr/lib and /usr/share (padded when they are too small). It is
built with ironcore_image_build, which writes its block index, and pushed with ironcore_image_push.
A node with nothing on it fetches it: once with `delta: auto` (only the non-zero blocks, into a sparse
file) and once with `delta: never` (the whole blob), directly on loopback and through an nginx with
`limit_rate` (100 Mbit/s, a site link, one connection as in bench-delta).
Run: make bench-sparse BENCH_ARGS=--size-mib=4096
"""

from __future__ import annotations

import os
import typing as t

import _common as c
import delta as d

MODULE = "ironcore.image.ironcore_image_fetch"
REPOSITORY = "bench/sparse"
# The goals: bytes at most the image's non-zero bytes + 5 %, and over the link at most 0.4 x the full fetch.
GOAL_BYTES_OVER_NON_ZERO = 1.05
GOAL_TIME_SHARE = 0.4
BLOCK = 4096


def non_zero_bytes(path: str) -> int:
    """Bytes of the 4 KiB blocks of `path` that are not all zeros (what a sparse fetch must move)."""
    zero = bytes(BLOCK)
    found = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(c.CHUNK), b""):
            view = memoryview(chunk)
            for start in range(0, len(view), BLOCK):
                piece = view[start : start + BLOCK]
                if piece != zero[: len(piece)]:
                    found += len(piece)
    return found


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def bench(ansible: c.Ansible, ping: c.Run, workdir: str, size_mib: int, _rounds: int) -> c.Result:
    tree = os.path.join(workdir, "tree")
    budget = size_mib * c.MiB // 4
    copied = d.copy_tree(tree, budget)
    d.pad(tree, budget - copied)
    image = os.path.join(workdir, "rootfs.ext4")
    d.make_ext4(tree, image, size_mib)
    c.remove(tree)
    non_zero = non_zero_bytes(image)
    from helpers.registry import start_registry

    # Plain HTTP, so nginx can sit in between without TLS of its own.
    registry = start_registry("bench-sparse", os.path.join(workdir, "registry"))
    link = None
    try:
        name = d.build_and_push(ansible, workdir, registry, "1", image, REPOSITORY)
        c.warm(c.tree_files(registry.storage))
        link = d.LimitedLink(workdir, registry)

        def fetch(label: str, via: str | None = None, **extra: t.Any) -> tuple[c.Run, dict[str, t.Any]]:
            dest = os.path.join(workdir, label)
            args = dict(registry.registry_args, name=name, platform="virtualization", architecture="amd64", dest=dest)
            if via:
                args["name"] = name.replace(registry.host, via)
            args.update(extra)
            run, result = ansible.module(MODULE, args)
            if result.get("failed"):
                raise c.BenchError("the fetch into %s failed: %s" % (label, result.get("msg")))
            delivered = os.path.join(dest, "rootfs")
            # Each node's file is gone before the next fetch: the page cache and the disk hold one at a time.
            result["allocated"] = allocated(delivered)
            c.remove(dest)
            return run, result

        direct, direct_result = fetch("sparse-direct")
        sparse = direct_result["files"]["rootfs"]["delta"]
        if not sparse.get("used"):
            raise c.BenchError("the sparse fetch was not used: %s" % sparse.get("reason"))
        full_direct, full_direct_result = fetch("full-direct", delta="never")
        slow, slow_result = fetch("sparse-limited", via=link.host, concurrency=1)
        if not slow_result["files"]["rootfs"]["delta"].get("used"):
            raise c.BenchError("the sparse fetch over the limited link was not used")
        full, _full_result = fetch("full-limited", via=link.host, concurrency=1, delta="never")
    finally:
        if link is not None:
            link.stop()
        registry.stop()
    layer_size = direct_result["files"]["rootfs"]["size"]
    fetched = sparse["fetched_bytes"]
    over = fetched / non_zero if non_zero else float("inf")
    time_share = slow.seconds / full.seconds
    lines = [
        "",
        "## Sparse first install: %.0f MiB ext4, %.0f MiB of files, no seed" % (layer_size / c.MiB, copied / c.MiB),
        "",
        c.table(
            ["measure", "sparse fetch", "full fetch", "goal"],
            [
                ["raw layer", "%.1f MiB" % (layer_size / c.MiB), "", ""],
                ["non-zero blocks", "%.1f MiB" % (non_zero / c.MiB), "", ""],
                [
                    "bytes fetched",
                    "%.1f MiB in %d requests" % (fetched / c.MiB, sparse["requests"]),
                    "%.1f MiB" % (full_direct_result["bytes_downloaded"] / c.MiB),
                    "",
                ],
                [
                    "fetched / non-zero",
                    "%.3f" % over,
                    "",
                    "<= %.2f %s" % (GOAL_BYTES_OVER_NON_ZERO, c.met(over <= GOAL_BYTES_OVER_NON_ZERO)),
                ],
                [
                    "on disk (st_blocks)",
                    "%.1f MiB" % (direct_result["allocated"] / c.MiB),
                    "%.1f MiB" % (full_direct_result["allocated"] / c.MiB),
                    "",
                ],
                ["direct (loopback)", "%.2f s" % direct.seconds, "%.2f s" % full_direct.seconds, ""],
                ["100 Mbit/s", "%.2f s" % slow.seconds, "%.2f s" % full.seconds, ""],
                [
                    "sparse / full over the link",
                    "%.2f" % time_share,
                    "",
                    "<= %.2f %s" % (GOAL_TIME_SHARE, c.met(time_share <= GOAL_TIME_SHARE)),
                ],
            ],
        ),
        "",
    ]
    print("\n".join(lines))
    # In the common table: ours is the sparse fetch over the link, the peer the full fetch over it, the limit
    # the time the non-zero bytes alone take at link speed.
    return c.Result(
        "sparse",
        "first install over a 100 Mbit/s link, %.0f MiB ext4, %.1f MiB non-zero"
        % (layer_size / c.MiB, non_zero / c.MiB),
        slow,
        full,
        c.Run(non_zero / d.LINK_BYTES_PER_SECOND, 0.0),
        10.0,
        GOAL_TIME_SHARE,
        ping,
    )


def main() -> None:
    c.run_benchmark(__doc__ or "", "sparse-", bench)


if __name__ == "__main__":
    main()
