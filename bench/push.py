"""Push: ironcore_image_push against `skopeo copy --all --preserve-digests` (peer) and curl (limit).

The limit is one POST and one monolithic PUT per blob, then one PUT per document: the fewest requests
and bytes the distribution API allows. Every round pushes into a fresh registry, so no blob is there
yet and no client can mount one from an earlier round.
Run: make bench-push BENCH_ARGS=--size-mib=64
"""

from __future__ import annotations

import os

import _common as c

MODULE = "ironcore.image.ironcore_image_push"


def bench(ansible: c.Ansible, ping: c.Run, workdir: str, size_mib: int, rounds: int, peer: bool = True) -> c.Result:
    layout, image, _built = c.built_layout(ansible, workdir, size_mib)
    registries: dict[int, c.Registry] = {}

    def target(round_number: int) -> c.Registry:
        if round_number not in registries:
            for old in registries.values():
                old.stop()
                c.remove(os.path.dirname(old.storage))
            registries.clear()
            registries[round_number] = c.registry(os.path.join(workdir, "registry-%d" % round_number))
        return registries[round_number]

    def push_args(registry: c.Registry, repository: str) -> dict[str, object]:
        return dict(
            registry.registry_args, layout=layout, name=c.NAME, destination="%s/%s:1.0" % (registry.host, repository)
        )

    def ours(round_number: int) -> c.Run:
        measured, result = ansible.module(MODULE, push_args(target(round_number), "bench/ours"))
        if not result["changed"]:
            raise c.BenchError("a push into an empty registry reported no change")
        return measured

    def peer_skopeo(round_number: int) -> c.Run:
        registry = target(round_number)
        return c.skopeo(
            *registry.skopeo_flags("dest-"),
            "oci:%s:%s" % (layout, c.NAME),
            "docker://%s/bench/skopeo:1.0" % registry.host,
        )

    def limit_curl(round_number: int) -> c.Run:
        return c.timed(lambda: c.curl_push_image(target(round_number), "bench/curl", "1.0", image))

    contenders = {"ours": ours, "peer": peer_skopeo, "limit": limit_curl}
    if not peer:
        del contenders["peer"]
    try:
        medians = c.rounds(contenders, rounds)
        noop = ansible.noop(MODULE, push_args(target(rounds - 1), "bench/ours"), rounds)
    finally:
        for registry in registries.values():
            registry.stop()
    return c.Result(
        "push",
        "layout -> TLS + htpasswd registry, %d blobs, %.0f MiB" % (len(image.blobs), c.mib(image.blobs.values())),
        medians["ours"],
        medians.get("peer"),
        medians["limit"],
        1.1,
        0.95,
        ping,
        noop,
    )


def main() -> None:
    c.run_benchmark(__doc__ or "", "push-", bench)


if __name__ == "__main__":
    main()
