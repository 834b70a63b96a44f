"""Every benchmark in one run (`make bench`): one table, printed and written to .build/bench/report.md."""

from __future__ import annotations

import os

import _common as c
import build
import copy_image
import fetch
import push


def main() -> None:
    options = c.parser(__doc__.splitlines()[0]).parse_args()
    workdir = c.scratch(options.workdir, "all-")
    try:
        ansible = c.Ansible()
        ping = ansible.ping()
        results = []
        for name, benchmark in (("build", build), ("push", push), ("fetch", fetch)):
            print("%s (rootfs %d MiB, %d rounds)" % (name, options.size_mib, options.rounds), flush=True)
            part = os.path.join(workdir, name)
            results.append(benchmark.bench(ansible, ping, c.scratch(part, name), options.size_mib, options.rounds))
            c.remove(part)
        print("copy (rootfs %d MiB, %d rounds)" % (options.size_mib, options.rounds), flush=True)
        part = c.scratch(os.path.join(workdir, "copy"), "copy")
        results += copy_image.bench(ansible, ping, part, options.size_mib, options.rounds)
        c.remove(part)
        c.write_report(c.summary(results), "report.md")
    finally:
        if not options.workdir:
            c.remove(workdir)


if __name__ == "__main__":
    main()
