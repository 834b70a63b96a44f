#!/usr/bin/env python
"""Build benchmark: ironcore_image_build vs `cp` + `sha256sum` on the same files.

Run with `make bench-build` (or .venv/bin/python bench/build_vs_cp.py [--rootfs-mib N]).
Prints wall times, ratios and peak RSS; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".build", "collections")

# Runs the module's one call in a child process so its peak RSS is its own.
CHILD = r"""
import json, sys, resource
sys.path.insert(0, sys.argv[1])
from ansible_collections.ironcore.image.plugins.module_utils._build import build_image
params = json.loads(sys.argv[2])
result = build_image(params, check_mode=False)
print(json.dumps({"changed": result["changed"], "digest": result["digest"],
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_file(path: str, size: int) -> None:
    # Incompressible content in 4 MiB pieces: the benchmark's own memory stays flat too.
    with open(path, "wb") as stream:
        left = size
        while left:
            piece = min(left, 4 << 20)
            stream.write(os.urandom(piece))
            left -= piece


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, proc.stdout


def children_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rootfs-mib", type=int, default=1024)
    parser.add_argument("--workdir", default=None, help="where to put the files (default: a temp dir under .build)")
    args = parser.parse_args()

    os.makedirs(os.path.join(REPO, ".build"), exist_ok=True)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-build-", dir=os.path.join(REPO, ".build"))
    try:
        files = {"kernel": 12 << 20, "initramfs": 64 << 20, "rootfs": args.rootfs_mib << 20}
        paths = {}
        for role, size in files.items():
            paths[role] = os.path.join(work, role)
            make_file(paths[role], size)
        total_mib = sum(files.values()) / (1 << 20)

        # Warm the page cache once so neither side pays for the first read alone.
        subprocess.run(["cat", *paths.values()], stdout=subprocess.DEVNULL, check=True)

        copy_dir = os.path.join(work, "cp")
        os.mkdir(copy_dir)
        peer_command = ["sh", "-c", 'cp "$@" "%s/" && sha256sum "$@" >/dev/null' % copy_dir, "sh", *paths.values()]
        peer_time = timed(peer_command)[0]
        peer_rss = children_peak_rss_mib()

        params = {
            "layout": os.path.join(work, "layout"),
            "name": "bench.example.com/os/bench:1.0",
            "artifacts": [dict(architecture="amd64", cmdline="console=ttyS0", **paths)],
            "platforms": ["virtualization", "baremetal"],
            "layer_format": "raw",
            "annotations": None,
            "platform_tags": True,
        }
        child = [sys.executable, "-c", CHILD, COLLECTIONS, json.dumps(params)]
        build_time, out = timed(child)
        first = json.loads(out)
        rebuild_time, out = timed(child)
        second = json.loads(out)

        print(
            "build benchmark: %.0f MiB of artifacts (rootfs %d MiB + kernel + initramfs), page cache warm"
            % (total_mib, args.rootfs_mib)
        )
        print("cp + sha256sum          : %6.2f s" % peer_time)
        print(
            "ironcore_image_build    : %6.2f s  peak RSS %.0f MiB  (changed=%s)"
            % (build_time, first["rss_kib"] / 1024, first["changed"])
        )
        print(
            "rebuild, unchanged      : %6.2f s  peak RSS %.0f MiB  (changed=%s)"
            % (rebuild_time, second["rss_kib"] / 1024, second["changed"])
        )
        print("ratio build / (cp + sha256sum): %.2f  (goal <= 1.10)" % (build_time / peer_time))
        print("ratio rebuild / build         : %.3f" % (rebuild_time / build_time))
        print("peer peak RSS (largest child)  : %.0f MiB" % peer_rss)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
