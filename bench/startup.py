"""Module start: each module's AnsiballZ payload and the wall time of a call with (almost) nothing to do.

What every call of a module pays before its work, beside `ansible localhost -m ping`, the floor that Ansible
itself sets. Each module gets a tiny image (a few KiB per file) and is called again on its own result, so
that the call finds its work done (changed: false) and measures the fixed cost alone:

- build: the same build again; info: a layout's image; fetch: an image already delivered, from the layout
  and from a registry; push: into a registry that has the image; copy: layout to layout, already copied;
  sign: a layout image signed again with the same key.

Per module: the payload Ansible ships (the AnsiballZ file's size, the files in its zip and how many of them
are this collection's module_utils), whether the module process imported `requests` (read by running the
kept AnsiballZ file under `python -X importtime`), the median wall time of N `ansible` calls, its excess
over ping and the peak RSS of that command; then the kept AnsiballZ file run N times alone, without the
controller: median wall and CPU seconds and peak RSS, from each process's own rusage (os.wait4). CPU
seconds move less than wall time when other work shares the machine.

    make bench-startup                      # BENCH_ARGS="--rounds=9" for more calls per module
    .venv/bin/python bench/startup.py --rounds=5
"""

from __future__ import annotations

import argparse
import base64
import glob
import io
import json
import os
import re
import statistics
import subprocess
import sys
import typing as t
import zipfile

import _common as c

COLLECTION = "ironcore.image."
OUR_UTILS = "ansible_collections/ironcore/image/plugins/module_utils/"
HTTP_STACK = ("requests", "urllib3")


class Call(t.NamedTuple):
    label: str
    module: str
    args: dict[str, t.Any]


def tiny_artifacts(directory: str) -> dict[str, str]:
    """Kernel, initramfs and rootfs of 64 KiB each: the image's size plays no part in a module's start."""
    os.makedirs(directory, exist_ok=True)
    return {role: c.random_file(os.path.join(directory, role), 64 * 1024) for role in c.ROLES}


def key_file(directory: str) -> str:
    """An EC P-256 private key (PKCS#8) made by openssl."""
    sec1, pkcs8 = os.path.join(directory, "key.ec"), os.path.join(directory, "key.pem")
    c.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", sec1])
    c.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", sec1, "-out", pkcs8])
    return pkcs8


def calls(workdir: str, registry: c.Registry) -> list[Call]:
    layout = os.path.join(workdir, "layout")
    remote = "%s/bench/startup:1.0" % registry.host
    target = {"name": c.NAME, "platform": "baremetal", "architecture": "amd64"}
    return [
        Call("build", "ironcore_image_build", c.build_args(layout, tiny_artifacts(os.path.join(workdir, "in")))),
        Call("info (layout)", "ironcore_image_info", {"layout": layout, "name": c.NAME}),
        Call("fetch (layout)", "ironcore_image_fetch", dict(target, layout=layout, dest=os.path.join(workdir, "d1"))),
        Call(
            "push", "ironcore_image_push", dict(registry.registry_args, layout=layout, name=c.NAME, destination=remote)
        ),
        Call(
            "fetch (registry)",
            "ironcore_image_fetch",
            dict(registry.registry_args, **dict(target, name=remote), dest=os.path.join(workdir, "d2")),
        ),
        Call(
            "copy (layout)",
            "ironcore_image_copy",
            {
                "source": {"layout": layout, "name": c.NAME},
                "destination": {"layout": os.path.join(workdir, "copy"), "name": c.NAME},
            },
        ),
        Call("sign (layout)", "ironcore_image_sign", {"layout": layout, "name": c.NAME, "key": key_file(workdir)}),
    ]


def kept_payload(ansible: c.Ansible, call: Call, remote_tmp: str, namespace: str = COLLECTION) -> str:
    """The first call, which does the work, with Ansible's remote files kept: the AnsiballZ file it ran."""
    saved = ansible.env
    ansible.env = dict(saved, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=remote_tmp)
    try:
        ansible.module(namespace + call.module, call.args)
    finally:
        ansible.env = saved
    found = glob.glob(os.path.join(remote_tmp, "ansible-tmp-*", "AnsiballZ_%s.py" % call.module))
    if len(found) != 1:
        raise c.BenchError("expected one kept AnsiballZ file for %s, found %d" % (call.module, len(found)))
    return found[0]


def packed_utils(payload: str, workdir: str) -> list[str]:
    """This collection's module_utils in the payload's zip (explode writes it out beside the file)."""
    subprocess.run([sys.executable, payload, "explode"], capture_output=True, check=True, cwd=workdir)
    zipped = os.path.join(os.path.dirname(payload), "debug_dir")
    names = []
    for root, _dirs, files in os.walk(zipped):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), zipped)
            if relative.startswith(OUR_UTILS) and name.endswith(".py") and name != "__init__.py":
                names.append(name[:-3])
    return sorted(names)


def zip_members(payload: str) -> int:
    """How many files the payload's zip holds (Ansible's own module_utils and this collection's)."""
    with open(payload, encoding="utf-8") as stream:
        text = stream.read()
    match = re.search(r"zip_data=(['\"])([A-Za-z0-9+/=]+)\1", text)
    if match is None:
        return -1
    return len(zipfile.ZipFile(io.BytesIO(base64.b64decode(match.group(2)))).namelist())


def imports_http(payload: str) -> str:
    """Whether the module process imports requests or urllib3: the kept payload run under -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", payload], capture_output=True, text=True, check=False)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    if not any(name.startswith("ansible_collections.ironcore") for name in names):
        return "?"
    return "yes" if names & set(HTTP_STACK) else "no"


class Alone(t.NamedTuple):
    wall: float
    cpu: float
    rss_mib: float


# Runs the payload and reports its own children's rusage. A process forked from the benchmark would count the
# benchmark's pages in its peak RSS (Linux keeps the high-water mark across exec); this wrapper is small.
_ALONE = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.monotonic()\n"
    "status = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
    "wall = time.monotonic() - start\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps([status, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss]))\n"
)


def module_alone(payload: str, count: int) -> Alone:
    """The kept AnsiballZ file run `count` times without the controller: median wall and CPU seconds (user +
    system, from the process's rusage: less sensitive than wall time to what else the machine runs) and the
    largest peak RSS (resource.getrusage of the wrapper's children)."""
    walls, cpus, rss = [], [], []
    for _number in range(count):
        proc = subprocess.run(
            [sys.executable, "-c", _ALONE, sys.executable, payload], capture_output=True, text=True, check=True
        )
        status, wall, cpu, rss_kib = json.loads(proc.stdout)
        if status != 0:
            raise c.BenchError("%s exited with %d" % (payload, status))
        walls.append(wall)
        cpus.append(cpu)
        rss.append(rss_kib / 1024.0)
    return Alone(statistics.median(walls), statistics.median(cpus), max(rss))


def measure(ansible: c.Ansible, call: Call, count: int) -> tuple[c.Run, bool]:
    """The median of `count` calls on work already done, and whether any of them reported a change."""
    runs, changed = [], False
    for _number in range(count):
        measured, result = ansible.module(COLLECTION + call.module, call.args)
        changed = changed or bool(result.get("changed"))
        runs.append(measured)
    return c.median(runs), changed


def spread(runs: t.Sequence[float]) -> str:
    return "%.2f-%.2f" % (min(runs), max(runs))


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--rounds", type=int, default=5, help="calls per module, median (default %(default)s)")
    options.add_argument("--workdir", help="scratch directory, kept (default: a new one under .build/bench, removed)")
    args = options.parse_args()
    workdir = c.scratch(args.workdir, "startup-")
    registry = c.registry(os.path.join(workdir, "registry"))
    try:
        ansible = c.Ansible()
        ping_call = Call("ping", "ping", {})
        ping_payload = kept_payload(ansible, ping_call, os.path.join(workdir, "remote-ping"), "ansible.builtin.")
        ping_runs = [ansible.module("ansible.builtin.ping", {})[0] for _number in range(args.rounds)]
        ping = c.median(ping_runs)
        ping_alone = module_alone(ping_payload, args.rounds)
        rows = [
            [
                "ping",
                "%.0f" % (os.path.getsize(ping_payload) / 1024.0),
                str(zip_members(ping_payload)),
                "-",
                "-",
                "%.2f" % ping.seconds,
                "-",
                "%.0f" % ping.rss_mib,
                "%.2f" % ping_alone.wall,
                "%.2f" % ping_alone.cpu,
                "%.0f" % ping_alone.rss_mib,
                "-",
            ]
        ]
        for number, call in enumerate(calls(workdir, registry)):
            payload = kept_payload(ansible, call, os.path.join(workdir, "remote-%d" % number))
            utils = packed_utils(payload, workdir)
            http = imports_http(payload)
            measured, changed = measure(ansible, call, args.rounds)
            alone = module_alone(payload, args.rounds)
            rows.append(
                [
                    call.label,
                    "%.0f" % (os.path.getsize(payload) / 1024.0),
                    str(zip_members(payload)),
                    str(len(utils)),
                    http,
                    "%.2f" % measured.seconds,
                    "%+.2f" % (measured.seconds - ping.seconds),
                    "%.0f" % measured.rss_mib,
                    "%.2f" % alone.wall,
                    "%.2f" % alone.cpu,
                    "%.0f" % alone.rss_mib,
                    "yes" if changed else "no",
                ]
            )
            print("  %-17s %s" % (call.label, " ".join(rows[-1][1:])), flush=True)
        columns = [
            "call",
            "payload KiB",
            "zip files",
            "our module_utils",
            "imports requests",
            "ansible s",
            "over ping s",
            "ansible RSS MiB",
            "module alone s",
            "module CPU s",
            "module RSS MiB",
            "changed",
        ]
        text = "%s\n\n%d calls per module, median; %s\n\n%s\n" % (
            "Module start (bench/startup.py)",
            args.rounds,
            c.machine(),
            c.table(columns, rows),
        )
        text += "\nping's spread: %s s\n" % spread([run.seconds for run in ping_runs])
        c.write_report(text, "startup.md")
    finally:
        registry.stop()
        if not args.workdir:
            c.remove(workdir)


if __name__ == "__main__":
    main()
