"""Build: ironcore_image_build against `cp` + `sha256sum` (peer) and `cp` + `sync` (limit).

The limit is what any build must do at least: put the bytes in the layout durably.
Run: make bench-build BENCH_ARGS=--size-mib=64
"""

from __future__ import annotations

import os

import _common as c

MODULE = "ironcore.image.ironcore_image_build"


def bench(ansible: c.Ansible, ping: c.Run, workdir: str, size_mib: int, rounds: int, peer: bool = True) -> c.Result:
    files = c.artifacts(os.path.join(workdir, "in"), size_mib)
    paths = list(files.values())
    c.warm(paths)

    def copy_to(round_number: int, who: str) -> tuple[str, list[str]]:
        target = os.path.join(workdir, "%s-%d" % (who, round_number))
        c.remove(target)
        os.makedirs(target)
        return target, [os.path.join(target, os.path.basename(path)) for path in paths]

    def ours(round_number: int) -> c.Run:
        layout = os.path.join(workdir, "layout-%d" % round_number)
        c.remove(layout)
        measured, result = ansible.module(MODULE, c.build_args(layout, files))
        if not result["changed"]:
            raise c.BenchError("the build into a new layout reported no change")
        return measured

    def peer_cp_sha256sum(round_number: int) -> c.Run:
        target, _copies = copy_to(round_number, "peer")
        return c.timed(lambda: c.run(["cp", *paths, target]) + c.run(["sha256sum", *paths]))

    def limit_cp_sync(round_number: int) -> c.Run:
        target, copies = copy_to(round_number, "limit")
        return c.timed(lambda: c.run(["cp", *paths, target]) + c.sync(copies))

    contenders = {"ours": ours, "peer": peer_cp_sha256sum, "limit": limit_cp_sync}
    if not peer:
        del contenders["peer"]
    medians = c.rounds(contenders, rounds)
    # The no-op: the same build into the layout the last round wrote.
    noop = ansible.noop(MODULE, c.build_args(os.path.join(workdir, "layout-%d" % (rounds - 1)), files), rounds)
    return c.Result(
        "build",
        "amd64 baremetal + virtualization, %.0f MiB" % c.mib(paths),
        medians["ours"],
        medians.get("peer"),
        medians["limit"],
        1.2,
        0.7,
        ping,
        noop,
    )


def main() -> None:
    c.run_benchmark(__doc__ or "", "build-", bench)


if __name__ == "__main__":
    main()
