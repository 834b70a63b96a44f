"""How the modules scale (`make bench-scale`): with rootfs size, with manifests, with nodes fetching at once.

(a) build, push and fetch of a 1, 2 and 4 GiB rootfs: time, ours/limit (expected flat) and peak RSS
    (expected flat: streaming);
(b) 1, 2, 4 and 8 platform/architecture manifests of the same files: build and push time should follow
    the unique bytes, which stay the same, not the number of manifests;
(c) 1, 4 and 16 nodes fetching one image at once from one registry: time per node and the registry's
    CPU time.
Try it small: --sizes-mib=32,64 --size-mib=32 --nodes=1,2 --rounds=1
"""

from __future__ import annotations

import concurrent.futures
import os
import typing as t

import _common as c
import build
import fetch
import push

# The manifests an image can hold, baremetal first so that even one manifest carries every file.
COMBINATIONS = [
    ("amd64", "baremetal"),
    ("arm64", "baremetal"),
    ("amd64", "virtualization"),
    ("arm64", "virtualization"),
]


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def by_size(ansible: c.Ansible, ping: c.Run, workdir: str, sizes: t.Sequence[int], rounds: int) -> str:
    rows = []
    for size in sizes:
        for name, benchmark in (("build", build), ("push", push), ("fetch", fetch)):
            print("(a) %s, rootfs %d MiB" % (name, size), flush=True)
            part = c.scratch(os.path.join(workdir, "%s-%d" % (name, size)), name)
            result = benchmark.bench(ansible, ping, part, size, rounds, peer=False)
            c.remove(part)
            assert result.ours is not None
            ratio = result.ours.seconds / result.limit.seconds
            rows.append([name, str(size), "%.2f" % result.ours.seconds, "%.2f" % result.limit.seconds])
            rows[-1] += ["%.2f" % ratio, "%.0f" % result.ours.rss_mib, c.mib_or_dash(result.ours.module_rss_mib)]
            rows[-1].append("%.0f" % result.limit.rss_mib)
    columns = ["step", "rootfs MiB", "ours s", "limit s", "ours/limit", "ours peak RSS MiB", "module peak RSS MiB"]
    columns.append("limit peak RSS MiB")
    return "## (a) rootfs size\n\n" + c.table(columns, rows)


def image_tasks(files: t.Mapping[str, str], layout: str, count: int) -> list[tuple[str, dict[str, t.Any]]]:
    """(name, build arguments) for `count` manifests of the same files: up to four per image."""
    images = []
    for number in range(0, count, len(COMBINATIONS)):
        wanted = COMBINATIONS[: min(count - number, len(COMBINATIONS))]
        architectures = sorted({architecture for architecture, _platform in wanted})
        platforms = sorted({platform for _architecture, platform in wanted})
        name = "bench.example.com/os/scale%d:1.0" % number
        # A distinct command line per image gives each image its own config, so its own manifests.
        cmdline = "console=ttyS0 image=%d" % number
        args = c.build_args(layout, files, name=name, platforms=platforms)
        args["artifacts"] = [dict(files, architecture=arch, cmdline=cmdline) for arch in architectures]
        images.append((name, args))
    return images


def by_manifests(ansible: c.Ansible, ping: c.Run, workdir: str, size_mib: int, counts: t.Sequence[int]) -> str:
    files = c.artifacts(os.path.join(workdir, "in"), size_mib)
    c.warm(files.values())
    unique = c.mib(files.values())
    rows = []
    for count in counts:
        print("(b) %d manifests" % count, flush=True)
        layout = os.path.join(workdir, "layout-%d" % count)
        images = image_tasks(files, layout, count)
        build_tasks = [{"ironcore.image.ironcore_image_build": args} for _name, args in images]
        built, results = ansible.playbook(build_tasks, workdir)
        manifests = sum(len(result["manifests"]) for result in results)
        registry = c.registry(os.path.join(workdir, "registry-%d" % count))
        try:
            destination = "%s/bench/scale:%s" % (registry.host, "%s")
            push_tasks = [
                {
                    "ironcore.image.ironcore_image_push": dict(
                        registry.registry_args, layout=layout, name=name, destination=destination % number
                    )
                }
                for number, (name, _args) in enumerate(images)
            ]
            pushed, _results = ansible.playbook(push_tasks, workdir)
        finally:
            registry.stop()
        c.remove(os.path.dirname(registry.storage))
        c.remove(layout)
        rows.append(
            [str(manifests), str(len(images)), "%.0f" % unique, "%.2f" % built.seconds, "%.2f" % pushed.seconds]
        )
        rows[-1] += [c.mib_or_dash(built.module_rss_mib), c.mib_or_dash(pushed.module_rss_mib)]
    columns = ["manifests", "images", "unique MiB", "build s", "push s", "build module RSS MiB", "push module RSS MiB"]
    note = (
        "Build and push are one ansible-playbook run each per row (one controller start-up, ping %.2f s)."
        % ping.seconds
    )
    return "## (b) manifests of the same files\n\n" + note + "\n\n" + c.table(columns, rows)


def by_nodes(ansible: c.Ansible, workdir: str, size_mib: int, counts: t.Sequence[int]) -> str:
    registry = c.registry(os.path.join(workdir, "registry"))
    rows = []
    try:
        c.published(ansible, workdir, size_mib, registry, fetch.REPOSITORY)
        c.warm(c.tree_files(registry.storage))
        for count in counts:
            print("(c) %d nodes" % count, flush=True)
            dests = [os.path.join(workdir, "node-%d-%d" % (count, number)) for number in range(count)]
            before = c.cpu_seconds(registry.process.pid)
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                wall = c.timed(lambda dests=dests: _all(pool, ansible, registry, dests))
            registry_cpu = c.cpu_seconds(registry.process.pid) - before
            times = sorted(float(line) for line in wall.stdout.split())
            for dest in dests:
                c.remove(dest)
            rows.append([str(count), "%.2f" % times[len(times) // 2], "%.2f" % times[-1], "%.2f" % wall.seconds])
            rows[-1] += ["%.2f" % registry_cpu, c.mib_or_dash(wall.module_rss_mib)]
    finally:
        registry.stop()
    columns = ["nodes", "per node median s", "per node max s", "all done s", "registry CPU s", "module peak RSS MiB"]
    return "## (c) nodes fetching at once\n\n" + c.table(columns, rows)


def _all(pool: t.Any, ansible: c.Ansible, registry: c.Registry, dests: t.Sequence[str]) -> c.Run:
    """Every node's fetch at once; stdout carries each node's seconds, one a line."""
    futures = [pool.submit(ansible.module, fetch.MODULE, fetch.fetch_args(registry, dest)) for dest in dests]
    runs = [future.result()[0] for future in futures]
    seconds = "\n".join("%.3f" % run.seconds for run in runs)
    return c.Run(0.0, max(run.rss_mib for run in runs), seconds, c.median(runs).module_rss_mib)


def main() -> None:
    options = c.parser(__doc__.splitlines()[0])
    options.add_argument("--sizes-mib", type=numbers, default=[1024, 2048, 4096], help="(a) rootfs sizes")
    options.add_argument("--manifests", type=numbers, default=[1, 2, 4, 8], help="(b) manifest counts")
    options.add_argument("--nodes", type=numbers, default=[1, 4, 16], help="(c) nodes fetching at once")
    options.set_defaults(rounds=1)
    args = options.parse_args()
    workdir = c.scratch(args.workdir, "scale-")
    try:
        ansible = c.Ansible()
        ping = ansible.ping()
        parts = ["# ironcore.image scaling\n\nMachine: " + c.machine() + "."]
        parts.append(by_size(ansible, ping, c.scratch(os.path.join(workdir, "a"), "a"), args.sizes_mib, args.rounds))
        parts.append(
            by_manifests(ansible, ping, c.scratch(os.path.join(workdir, "b"), "b"), args.size_mib, args.manifests)
        )
        parts.append(by_nodes(ansible, c.scratch(os.path.join(workdir, "c"), "c"), args.size_mib, args.nodes))
        report = "\n\n".join(parts) + "\n"
        print(report)
        with open(os.path.join(c.BUILD, "bench", "scale.md"), "w", encoding="utf-8") as stream:
            stream.write(report)
    finally:
        if not args.workdir:
            c.remove(workdir)


if __name__ == "__main__":
    main()
