"""Fetch (baremetal layers): ironcore_image_fetch against curl + sha256sum (peer) and curl + sync (limit).

The limit is one GET per layer and making the files durable: what a node must do at least.
Run: make bench-fetch BENCH_ARGS=--size-mib=64
"""

from __future__ import annotations

import os

import _common as c

MODULE = "ironcore.image.ironcore_image_fetch"
REPOSITORY = "bench/image"


def fetch_args(registry: c.Registry, dest: str) -> dict[str, object]:
    name = "%s/%s:1.0" % (registry.host, REPOSITORY)
    return dict(registry.registry_args, name=name, platform="baremetal", architecture="amd64", dest=dest)


def bench(ansible: c.Ansible, ping: c.Run, workdir: str, size_mib: int, rounds: int, peer: bool = True) -> c.Result:
    registry = c.registry(os.path.join(workdir, "registry"))
    try:
        built = c.published(ansible, workdir, size_mib, registry, REPOSITORY)
        wanted = c.layers(built, "baremetal")
        c.warm(c.tree_files(registry.storage))

        def fresh(round_number: int, who: str) -> str:
            dest = os.path.join(workdir, "%s-%d" % (who, round_number))
            c.remove(dest)
            os.makedirs(dest)
            return dest

        def curl_all(dest: str) -> tuple[c.Run, list[str]]:
            files = [os.path.join(dest, title) for title in wanted]
            total = c.NOTHING
            for path, digest in zip(files, wanted.values()):
                total += c.curl_get(registry, REPOSITORY, digest, path)
            return total, files

        def ours(round_number: int) -> c.Run:
            measured, result = ansible.module(MODULE, fetch_args(registry, fresh(round_number, "ours")))
            if not result["changed"]:
                raise c.BenchError("a fetch into an empty directory reported no change")
            return measured

        def peer_curl_sha256sum(round_number: int) -> c.Run:
            def steps() -> c.Run:
                got, files = curl_all(fresh(round_number, "peer"))
                sums = c.run(["sha256sum", *files])
                digests = ["sha256:" + line.split()[0] for line in sums.stdout.splitlines()]
                if digests != list(wanted.values()):
                    raise c.BenchError("curl fetched other bytes than the manifest names")
                return got + sums

            return c.timed(steps)

        def limit_curl_sync(round_number: int) -> c.Run:
            def steps() -> c.Run:
                got, files = curl_all(fresh(round_number, "limit"))
                return got + c.sync(files)

            return c.timed(steps)

        contenders = {"ours": ours, "peer": peer_curl_sha256sum, "limit": limit_curl_sync}
        if not peer:
            del contenders["peer"]
        medians = c.rounds(contenders, rounds)
        noop = ansible.noop(MODULE, fetch_args(registry, os.path.join(workdir, "ours-%d" % (rounds - 1))), rounds)
    finally:
        registry.stop()
    size = sum(layer["size"] for m in built["manifests"] if m["platform"] == "baremetal" for layer in m["layers"])
    return c.Result(
        "fetch",
        "baremetal amd64 layers from a TLS + htpasswd registry, %d files, %.0f MiB" % (len(wanted), size / c.MiB),
        medians["ours"],
        medians.get("peer"),
        medians["limit"],
        1.15,
        0.7,
        ping,
        noop,
    )


def main() -> None:
    c.run_benchmark(__doc__ or "", "fetch-", bench)


if __name__ == "__main__":
    main()
