# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""ironcore_image_fetch against curl + sha256sum, in one run against one local registry.

Builds an image with a 1 GiB rootfs (plus kernel and initramfs), pushes it to
a docker-registry on 127.0.0.1, then times:

- curl: one `curl -o` GET per baremetal amd64 layer blob, one after the other,
  then `sha256sum` of the three files (what a careful script does);
- fetch: the ironcore_image_fetch module itself, run as its own process (the
  way Ansible runs it on a node, minus Ansible's start-up), with its peak RSS;
- re-fetch: the same module call again, with every file already in place.

Each transfer is run `--rounds` times, interleaved, and the best time is kept.
Not part of `make test`. Run from the repository root after `make venv collection`:

    .venv/bin/python bench/fetch_vs_curl.py
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
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".build", "collections")
MODULE_FILE = os.path.join(REPO, "plugins", "modules", "ironcore_image_fetch.py")
sys.path[:0] = [COLLECTIONS, os.path.join(REPO, "tests")]

from helpers.images import skopeo_push  # noqa: E402
from helpers.registry import start_registry  # noqa: E402

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image  # noqa: E402

MiB = 1024 * 1024
NAME = "bench.example.com/os/big:1.0"
SIZES = {"kernel": 16 * MiB, "initramfs": 64 * MiB, "rootfs": 1024 * MiB}


def write_random(path: str, size: int) -> None:
    with open(path, "wb") as stream:
        for _chunk in range(size // (4 * MiB)):
            stream.write(os.urandom(4 * MiB))
        stream.write(os.urandom(size % (4 * MiB)))


def run_measured(command: t.Sequence[str], env: t.Mapping[str, str] | None = None) -> tuple[float, float, bytes]:
    """Wall time, peak RSS (MiB) of the process, and its stdout."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=dict(os.environ, **(env or {})))
    stdout = process.stdout.read() if process.stdout else b""
    status, usage = os.wait4(process.pid, 0)[1:]
    elapsed = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            "%s failed (%s): %s" % (command[0], process.returncode, stdout.decode(errors="replace")[-2000:])
        )
    return elapsed, usage.ru_maxrss / 1024.0, stdout


def curl_and_hash(blobs: t.Mapping[str, str], base_url: str, target: str) -> float:
    os.makedirs(target)
    start = time.monotonic()
    for role, digest in blobs.items():
        subprocess.run(
            ["curl", "--silent", "--fail", "--output", os.path.join(target, role), base_url + digest], check=True
        )
    sums = subprocess.run(
        ["sha256sum"] + [os.path.join(target, role) for role in blobs], check=True, capture_output=True, text=True
    )
    elapsed = time.monotonic() - start
    got = {os.path.basename(line.split()[1]): "sha256:" + line.split()[0] for line in sums.stdout.splitlines()}
    if got != dict(blobs):
        raise SystemExit("curl fetched something else: %s" % got)
    return elapsed


def fetch_module(args_path: str) -> tuple[float, float, dict[str, t.Any]]:
    env = {"PYTHONPATH": COLLECTIONS}
    elapsed, rss, stdout = run_measured([sys.executable, MODULE_FILE, args_path], env)
    result = json.loads(stdout)
    if result.get("failed"):
        raise SystemExit("fetch failed: %s" % result.get("msg"))
    return elapsed, rss, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument(
        "--workdir", help="where to put the image, registry and downloads (default: a temporary directory under .build)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    os.makedirs(os.path.join(REPO, ".build"), exist_ok=True)
    workdir = options.workdir or tempfile.mkdtemp(prefix="bench-fetch-", dir=os.path.join(REPO, ".build"))
    registry = None
    try:
        artifacts = {}
        for role, size in SIZES.items():
            artifacts[role] = os.path.join(workdir, role)
            write_random(artifacts[role], size)
        layout = os.path.join(workdir, "layout")
        built = build_image(
            {
                "layout": layout,
                "name": NAME,
                "artifacts": [dict(artifacts, architecture="amd64")],
                "platforms": ["baremetal"],
                "layer_format": "raw",
                "annotations": None,
                "platform_tags": False,
            },
            check_mode=False,
        )
        (manifest,) = built["manifests"]
        blobs = {layer["title"]: layer["digest"] for layer in manifest["layers"]}
        total = sum(SIZES.values())
        registry = start_registry("bench", os.path.join(workdir, "registry"))
        skopeo_push(layout, NAME, registry.host + "/os/big:1.0", registry.skopeo_flags("dest-"))
        base_url = "http://%s/v2/os/big/blobs/" % registry.host

        dest = os.path.join(workdir, "fetched")
        args_path = os.path.join(workdir, "args.json")
        with open(args_path, "w") as stream:
            json.dump(
                {
                    "ANSIBLE_MODULE_ARGS": dict(
                        registry.registry_args,
                        name=registry.host + "/os/big:1.0",
                        platform="baremetal",
                        architecture="amd64",
                        dest=dest,
                    )
                },
                stream,
            )
        curl_times, fetch_times, peak_rss = [], [], 0.0
        for round_number in range(options.rounds):
            curl_dir = os.path.join(workdir, "curl-%d" % round_number)
            curl_times.append(curl_and_hash(blobs, base_url, curl_dir))
            shutil.rmtree(curl_dir)
            shutil.rmtree(dest, ignore_errors=True)
            elapsed, rss, result = fetch_module(args_path)
            if result["bytes_downloaded"] != total or not result["changed"]:
                raise SystemExit("fetch did not download everything: %s" % result)
            fetch_times.append(elapsed)
            peak_rss = max(peak_rss, rss)
        refetch, refetch_rss, again = fetch_module(args_path)
        if again["changed"] or again["bytes_downloaded"]:
            raise SystemExit("re-fetch was not a no-op: %s" % again)

        curl_best, fetch_best = min(curl_times), min(fetch_times)
        print(
            "image: baremetal amd64 layers rootfs %d MiB + initramfs %d MiB + kernel %d MiB = %d MiB,"
            " registry docker-registry on %s"
            % (SIZES["rootfs"] // MiB, SIZES["initramfs"] // MiB, SIZES["kernel"] // MiB, total // MiB, registry.host)
        )
        print(
            "curl GETs + sha256sum:   %6.2f s  (best of %d: %s)"
            % (curl_best, options.rounds, ", ".join("%.2f" % x for x in curl_times))
        )
        print(
            "ironcore_image_fetch:    %6.2f s  (best of %d: %s), peak RSS %.1f MiB"
            % (fetch_best, options.rounds, ", ".join("%.2f" % x for x in fetch_times), peak_rss)
        )
        print("ratio fetch / curl:      %6.2f    (goal <= 1.15)" % (fetch_best / curl_best))
        print(
            "re-fetch, unchanged:     %6.2f s  peak RSS %.1f MiB, changed=%s, bytes_downloaded=%d"
            % (refetch, refetch_rss, again["changed"], again["bytes_downloaded"])
        )
    finally:
        if registry is not None:
            registry.stop()
        if not options.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
