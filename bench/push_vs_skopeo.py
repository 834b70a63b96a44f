#!/usr/bin/env python3
"""Push of a 1 GiB-rootfs image: ironcore_image_push against `skopeo copy --all --preserve-digests`.

One run, one local TLS registry with htpasswd auth (the tests' harness), the
same OCI layout built by ironcore_image_build (amd64, baremetal and
virtualization). Each push goes into a fresh repository. Prints wall time and
peak RSS of each, their ratio, and a re-push of the unchanged image.

    make bench-push            # or: .venv/bin/python bench/push_vs_skopeo.py [--size-mib N]

Not part of `make test`: it moves gigabytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".build", "collections")
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, COLLECTIONS)

from helpers.registry import start_registry  # noqa: E402

NAME = "bench.example.com/os/bench:1.0"
MODULE = os.path.join(REPO, "plugins", "modules", "ironcore_image_push.py")
# Runs a command and prints the peak RSS (KiB) of its process tree's largest process.
MEASURE = (
    "import resource, subprocess, sys\n"
    "proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
    "sys.stdout.buffer.write(proc.stdout)\n"
    "sys.stderr.buffer.write(proc.stderr)\n"
    "sys.stderr.write('\\nPEAK_RSS_KIB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(proc.returncode)\n"
)


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in MiB, stdout) of a command; fails loudly when it fails."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("command failed: %s\n%s\n%s" % (" ".join(command[:3]), proc.stdout[-3000:], proc.stderr[-3000:]))
    rss_kib = int(proc.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0])
    return seconds, rss_kib // 1024, proc.stdout


def write_random(path: str, size: int) -> None:
    block = os.urandom(4 * 1024 * 1024)
    with open(path, "wb") as stream:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            # Vary each block so no two blocks (and no two images) share content.
            stream.write(os.urandom(16) + piece[16:])
            written += len(piece)


def build(workdir: str, rootfs_size: int) -> str:
    inputs = os.path.join(workdir, "in")
    os.makedirs(inputs)
    write_random(os.path.join(inputs, "rootfs"), rootfs_size)
    write_random(os.path.join(inputs, "kernel"), 12 * 1024 * 1024)
    write_random(os.path.join(inputs, "initramfs"), 48 * 1024 * 1024)
    layout = os.path.join(workdir, "layout")
    args = {
        "layout": layout,
        "name": NAME,
        "artifacts": [{"architecture": "amd64", **{role: os.path.join(inputs, role) for role in ("kernel", "initramfs", "rootfs")}}],
    }
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-m", "ironcore.image.ironcore_image_build", "-a", json.dumps(args)],
        capture_output=True, text=True, env=ansible_env(),
    )
    if proc.returncode != 0:
        raise SystemExit("build failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
    shutil.rmtree(inputs)
    return layout


def ansible_env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                ANSIBLE_NOCOLOR="1")


def our_push(workdir: str, args: dict[str, object]) -> tuple[float, int, dict[str, object]]:
    """The module process itself (what runs on the build host), without the ansible controller."""
    args_file = os.path.join(workdir, "push-args.json")
    with open(args_file, "w") as stream:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, stream)
    seconds, rss, stdout = measured([sys.executable, MODULE, args_file], env={"PYTHONPATH": COLLECTIONS})
    result = json.loads(stdout)
    if result.get("failed"):
        raise SystemExit("push failed: %s" % result.get("msg"))
    return seconds, rss, result


def our_push_via_ansible(args: dict[str, object]) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-m", "ironcore.image.ironcore_image_push", "-a", json.dumps(args)],
        capture_output=True, text=True, env=ansible_env(),
    )
    if proc.returncode != 0:
        raise SystemExit("push via ansible failed:\n" + proc.stdout[-2000:])
    return time.monotonic() - start


def warm_cache(layout: str) -> None:
    """Both contenders read the blobs from the page cache, not the disk."""
    for root, _, files in os.walk(os.path.join(layout, "blobs")):
        for name in files:
            with open(os.path.join(root, name), "rb") as stream:
                while stream.read(8 * 1024 * 1024):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="rootfs size in MiB (default 1024)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed)")
    options = parser.parse_args()
    workdir = options.workdir or tempfile.mkdtemp(prefix="ironcore-bench-push-")
    os.makedirs(workdir, exist_ok=True)
    registry = None
    try:
        print("building a %d MiB-rootfs image (amd64, baremetal + virtualization) ..." % options.size_mib, flush=True)
        layout = build(workdir, options.size_mib * 1024 * 1024)
        registry = start_registry("bench", os.path.join(workdir, "registry"), tls=True, auth="htpasswd")
        warm_cache(layout)

        skopeo_seconds, skopeo_rss, _ = measured(
            ["skopeo", "copy", "--all", "--preserve-digests", "--quiet", *registry.skopeo_flags("dest-"),
             "oci:%s:%s" % (layout, NAME), "docker://%s/bench/skopeo:1.0" % registry.host]
        )
        warm_cache(layout)
        args = {"layout": layout, "name": NAME, "destination": "%s/bench/ours:1.0" % registry.host}
        args.update(registry.registry_args)
        ours_seconds, ours_rss, first = our_push(workdir, args)
        again_seconds, again_rss, again = our_push(workdir, args)
        again_ansible = our_push_via_ansible(args)

        blobs = first["blobs"]
        print("registry: docker-registry %s over TLS + htpasswd, image %s" % (registry.host, NAME))
        print("skopeo copy --all --preserve-digests: %6.2f s  peak RSS %4d MiB" % (skopeo_seconds, skopeo_rss))
        print("ironcore_image_push (module):         %6.2f s  peak RSS %4d MiB  (%d blobs, %d bytes uploaded)"
              % (ours_seconds, ours_rss, blobs["uploaded"], blobs["bytes_uploaded"]))
        print("ratio ours/skopeo: time %.2fx, peak RSS %.2fx" % (ours_seconds / skopeo_seconds, ours_rss / max(skopeo_rss, 1)))
        print("re-push unchanged (module):           %6.2f s  peak RSS %4d MiB  changed=%s bytes uploaded=%d"
              % (again_seconds, again_rss, again["changed"], again["blobs"]["bytes_uploaded"]))
        print("re-push unchanged (ansible CLI incl. controller start-up): %.2f s" % again_ansible)
    finally:
        if registry is not None:
            registry.stop()
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
