"""Where a module's time goes: one call of build, push, fetch or copy under cProfile, strace -c and py-spy.

The module file runs as its own process with an arguments file, the way Ansible runs it on the host,
minus the controller: what is profiled is the module alone. Each tool gets fresh state (a new layout,
repository or directory), so each sees the full work, not a no-op.

    make bench-profile BENCH_ARGS="push --size-mib=64"
    .venv/bin/python bench/profile_module.py fetch --size-mib=64 --top=30
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import sys
import typing as t

import _common as c
import copy_image
import fetch

MODULES = os.path.join(c.REPO, "plugins", "modules")


def scenario(step: str, ansible: c.Ansible, workdir: str, size_mib: int) -> tuple[c.Registry | None, t.Callable]:
    """The registry the step needs (or None) and a function: run number -> fresh module arguments."""
    if step == "build":
        files = c.artifacts(os.path.join(workdir, "in"), size_mib)
        c.warm(files.values())
        return None, lambda number: c.build_args(os.path.join(workdir, "layout-%d" % number), files)
    registry = c.registry(os.path.join(workdir, "registry"))
    if step == "push":
        layout, _image, _built = c.built_layout(ansible, workdir, size_mib)
        destination = registry.host + "/bench/profile%d:1.0"
        return registry, lambda number: dict(
            registry.registry_args, layout=layout, name=c.NAME, destination=destination % number
        )
    if step == "copy":
        # Registry -> layout: a fresh layout per run.
        c.published(ansible, workdir, size_mib, registry, copy_image.REPOSITORY)
        c.warm(c.tree_files(registry.storage))
        return registry, lambda number: copy_image.copy_args(
            registry, {"layout": os.path.join(workdir, "copy-%d" % number)}
        )
    c.published(ansible, workdir, size_mib, registry, fetch.REPOSITORY)
    c.warm(c.tree_files(registry.storage))
    return registry, lambda number: fetch.fetch_args(registry, os.path.join(workdir, "dest-%d" % number))


def module_command(step: str, workdir: str, args: t.Mapping[str, t.Any], number: int) -> list[str]:
    path = os.path.join(workdir, "args-%d.json" % number)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(args)}, stream)
    return [os.path.join(MODULES, "ironcore_image_%s.py" % step), path]


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("step", choices=["build", "push", "fetch", "copy"])
    options.add_argument("--size-mib", type=int, default=256, help="rootfs size (default %(default)s)")
    options.add_argument("--top", type=int, default=25, help="entries to print per table (default %(default)s)")
    options.add_argument("--workdir", help="scratch directory, kept, with the profiles (default: removed)")
    args = options.parse_args()
    workdir = c.scratch(args.workdir, "profile-")
    env = {"PYTHONPATH": c.COLLECTIONS}
    registry = None
    try:
        ansible = c.Ansible()
        registry, make_args = scenario(args.step, ansible, workdir, args.size_mib)

        stats_path = os.path.join(workdir, "module.prof")
        command = module_command(args.step, workdir, make_args(0), 0)
        measured = c.run([sys.executable, "-m", "cProfile", "-o", stats_path, *command], env)
        print("## cProfile: %s, %.2f s, peak RSS %.0f MiB\n" % (args.step, measured.seconds, measured.rss_mib))
        stats = pstats.Stats(stats_path, stream=sys.stdout).strip_dirs()
        # cProfile follows the main thread only: work in worker threads shows up as its lock waits.
        print("(main thread only: time in worker threads appears as lock acquire; strace -f sees them)")
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)

        if shutil.which("strace"):
            summary = os.path.join(workdir, "strace.txt")
            c.run(
                [
                    "strace",
                    "-f",
                    "-c",
                    "-o",
                    summary,
                    sys.executable,
                    *module_command(args.step, workdir, make_args(1), 1),
                ],
                env,
            )
            with open(summary, encoding="utf-8") as stream:
                lines = stream.read().splitlines()
            print("## strace -c -f (system calls by time)\n")
            print("\n".join(lines[: args.top + 2] + lines[-2:]))
        else:
            print("strace is not installed: no system call summary")

        if shutil.which("py-spy"):
            flame = os.path.join(workdir, "py-spy.svg")
            c.run(
                [
                    "py-spy",
                    "record",
                    "--subprocesses",
                    "-o",
                    flame,
                    "--",
                    sys.executable,
                    *module_command(args.step, workdir, make_args(2), 2),
                ],
                env,
            )
            print("## py-spy flame graph: %s%s" % (flame, "" if args.workdir else " (pass --workdir to keep it)"))
        else:
            print("py-spy is not installed: no flame graph (cProfile above covers Python time)")
    finally:
        if registry is not None:
            registry.stop()
        if not args.workdir:
            c.remove(workdir)


if __name__ == "__main__":
    main()
