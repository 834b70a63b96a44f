"""What every benchmark shares: processes timed with their tree's peak RSS, rounds and medians,
modules run through the ansible CLI, a local registry, random artifacts, the image's documents, tables.

Modules are only ever run the way a user runs them (`ansible localhost -m ...` or `ansible-playbook`),
so the benchmarks keep working while the code behind the modules changes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, ".build")
COLLECTIONS = os.path.join(BUILD, "collections")
sys.path.insert(0, os.path.join(REPO, "tests"))

from helpers.ansible import AnsibleRunner  # noqa: E402
from helpers.registry import PASSWORD, Registry, start_registry  # noqa: E402

MiB = 1024 * 1024
CHUNK = 4 * MiB
NAME = "bench.example.com/os/bench:1.0"
ROLES = ("kernel", "initramfs", "rootfs")
# The default artifact sizes; --size-mib scales the rootfs only.
KERNEL_MIB = 16
INITRAMFS_MIB = 60
ROOTFS_MIB = 1024
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class BenchError(SystemExit):
    """A step failed: the benchmark stops with one line saying which."""


# ---- processes ------------------------------------------------------------


@dataclass
class Run:
    """One timed process tree: wall seconds and the peak RSS of its largest process.

    For a module run through ansible, also the peak RSS of the module's own process (the controller's
    is usually the larger one, and would hide the module's).
    """

    seconds: float
    rss_mib: float
    stdout: str = ""
    module_rss_mib: float | None = None

    def __add__(self, other: Run) -> Run:
        # Steps run one after another: times add up, memory peaks do not.
        return Run(
            self.seconds + other.seconds,
            max(self.rss_mib, other.rss_mib),
            self.stdout + other.stdout,
            _largest([self.module_rss_mib, other.module_rss_mib]),
        )


def _largest(values: t.Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


NOTHING = Run(0.0, 0.0)


# GNU time reports the peak RSS of the process it starts, measured after its own small fork; a
# process forked straight from this Python would start with this Python's pages counted as its own.
TIME = "/usr/bin/time"


def _spawn(command: t.Sequence[str], env: t.Mapping[str, str], stderr: t.Any) -> tuple[int, str, float]:
    """(exit status, stdout, peak RSS MiB) of a command and every descendant it waited for."""
    with tempfile.NamedTemporaryFile(prefix="rss-", suffix=".txt") as rss_file:
        wrapped = [TIME, "-f", "%M", "-o", rss_file.name, *command] if os.path.exists(TIME) else list(command)
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=dict(env)
        )
        assert process.stdout is not None
        output = process.stdout.read().decode("utf-8", "replace")
        process.stdout.close()
        _pid, status, usage = os.wait4(process.pid, 0)
        rss_kib = usage.ru_maxrss
        if wrapped[0] == TIME:
            lines = rss_file.read().decode("ascii", "replace").split()
            # time prints "Command exited with non-zero status N" before the number when it fails.
            rss_kib = int(lines[-1]) if lines and lines[-1].isdigit() else rss_kib
    return os.waitstatus_to_exitcode(status), output, rss_kib / 1024.0


def run(command: t.Sequence[str], env: t.Mapping[str, str] | None = None) -> Run:
    """Run a command to its end, failing the benchmark when it fails."""
    start = time.monotonic()
    status, output, rss_mib = _spawn(command, dict(os.environ, **(env or {})), subprocess.STDOUT)
    seconds = time.monotonic() - start
    if status != 0:
        what = " ".join(command)[:200].replace(PASSWORD, "***")
        raise BenchError("%s... exited with %d: %s" % (what, status, output[-2000:].replace(PASSWORD, "***")))
    return Run(seconds, rss_mib, output)


def timed(steps: t.Callable[[], Run]) -> Run:
    """Wall time of a series of steps (including the Python between them), peak RSS of the largest."""
    start = time.monotonic()
    result = steps()
    return Run(time.monotonic() - start, result.rss_mib, result.stdout, result.module_rss_mib)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc/<pid>/stat."""
    with open("/proc/%d/stat" % pid, encoding="ascii") as stream:
        # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- ansible --------------------------------------------------------------


# The modules' interpreter, wrapped so each module process reports its own peak RSS to the file the
# benchmark names in BENCH_MODULE_RSS (ansible passes its environment on to local modules).
INTERPRETER = """#!/bin/sh
if [ -n "$BENCH_MODULE_RSS" ] && [ -x %(time)s ]; then
    exec %(time)s -a -o "$BENCH_MODULE_RSS" -f %%M %(python)s "$@"
fi
exec %(python)s "$@"
"""


class Ansible:
    """Modules through the real ansible CLI, timed, with their JSON result."""

    def __init__(self) -> None:
        self.env = AnsibleRunner(COLLECTIONS).env
        self.bin = os.path.dirname(sys.executable)
        wrapper = os.path.join(BUILD, "bench", "python-measured")
        os.makedirs(os.path.dirname(wrapper), exist_ok=True)
        with open(wrapper, "w", encoding="utf-8") as stream:
            stream.write(INTERPRETER % {"time": TIME, "python": sys.executable})
        os.chmod(wrapper, 0o755)
        self.env["ANSIBLE_PYTHON_INTERPRETER"] = wrapper

    def module(self, name: str, args: t.Mapping[str, t.Any], check: bool = False) -> tuple[Run, dict[str, t.Any]]:
        command = [os.path.join(self.bin, "ansible"), "localhost", "-c", "local", "-i", "localhost,"]
        command += ["-m", name] + (["-a", json.dumps(dict(args))] if args else [])
        if check:
            command.append("--check")
        measured = self._run(command, name)
        result = json.loads(measured.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
        if result.get("failed"):
            raise BenchError("%s failed: %s" % (name, result.get("msg")))
        return measured, result

    def playbook(self, tasks: t.Sequence[t.Mapping[str, t.Any]], workdir: str) -> tuple[Run, list[dict[str, t.Any]]]:
        """Several module calls behind one controller start-up; returns each task's result."""
        path = os.path.join(workdir, "bench-play.yml")
        play = [{"name": "bench", "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]
        with open(path, "w", encoding="utf-8") as stream:
            json.dump(play, stream)
        measured = self._run([os.path.join(self.bin, "ansible-playbook"), "-i", "localhost,", path], path)
        results = [task["hosts"]["localhost"] for task in json.loads(measured.stdout)["plays"][0]["tasks"]]
        failed = [result.get("msg") for result in results if result.get("failed")]
        if failed:
            raise BenchError("playbook failed: %s" % failed[0])
        return measured, results

    def ping(self, count: int = 3) -> Run:
        """`ansible localhost -m ping`: the controller and module start-up every call pays (median)."""
        self.module("ansible.builtin.ping", {})  # the first run also fills the OS's caches
        runs = [self.module("ansible.builtin.ping", {})[0] for _number in range(count)]
        return median(runs)

    def noop(self, name: str, args: t.Mapping[str, t.Any], count: int) -> Run:
        """The same call again on what it already did: must report no change; median of `count`."""
        runs = []
        for _number in range(max(count, 1)):
            measured, result = self.module(name, args)
            if result.get("changed"):
                raise BenchError("%s reported a change when run again on its own result" % name)
            runs.append(measured)
        return median(runs)

    def has_module(self, name: str) -> bool:
        command = [os.path.join(self.bin, "ansible-doc"), "-j", name]
        proc = subprocess.run(command, env=self.env, capture_output=True, check=False)
        return proc.returncode == 0 and name.rsplit(".", 1)[-1] in proc.stdout.decode("utf-8", "replace")

    def _run(self, command: list[str], what: str) -> Run:
        # The JSON callback writes to stdout; stderr (warnings) is kept apart so it cannot break the JSON.
        start = time.monotonic()
        with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile(prefix="module-rss-") as module_rss:
            status, output, rss_mib = _spawn(command, dict(self.env, BENCH_MODULE_RSS=module_rss.name), errors)
            errors.seek(0)
            error_text = errors.read().decode("utf-8", "replace")
            # One line per module process (a playbook runs several); other lines are time's own remarks.
            lines = module_rss.read().decode("ascii", "replace").split("\n")
        module_kib = [int(line) for line in lines if line.strip().isdigit()]
        seconds = time.monotonic() - start
        try:
            json.loads(output)
        except ValueError:
            raise BenchError(
                "%s printed no JSON (rc=%d): %s %s" % (what, status, output[-1500:], error_text[-1500:])
            ) from None
        return Run(seconds, rss_mib, output, max(module_kib) / 1024.0 if module_kib else None)


# ---- rounds ---------------------------------------------------------------

Contender = t.Callable[[int], Run]


def rounds(contenders: t.Mapping[str, Contender], count: int) -> dict[str, Run]:
    """Every contender once per round, the order reversed each round; the median time of each.

    Alternating the order spreads whatever the machine does meanwhile (page cache, other load) over
    all contenders. Peak RSS is the largest seen in any round. A round in which another tool fails
    (skopeo once got a 500 from the registry in the middle of a 4 GiB upload) is printed and left out
    of its median, so that one failure does not cost the whole run; a failure of ours stops the benchmark.
    """
    names = list(contenders)
    seen: dict[str, list[Run]] = {name: [] for name in names}
    for number in range(count):
        order = names if number % 2 == 0 else names[::-1]
        for name in order:
            try:
                measured = contenders[name](number)
            except BenchError as exc:
                if name == "ours" or (number == count - 1 and not seen[name]):
                    raise
                print("  round %d  %-6s failed, left out of its median: %s" % (number + 1, name, str(exc)[:300]))
                continue
            seen[name].append(measured)
            module = "" if measured.module_rss_mib is None else "  (module %.1f MiB)" % measured.module_rss_mib
            print(
                "  round %d  %-6s %7.2f s  %6.1f MiB%s" % (number + 1, name, measured.seconds, measured.rss_mib, module)
            )
    return {name: median(runs) for name, runs in seen.items()}


def median(runs: t.Sequence[Run]) -> Run:
    """The median time; the largest peak RSS (memory is judged by its worst case)."""
    return Run(
        statistics.median(r.seconds for r in runs),
        max(r.rss_mib for r in runs),
        module_rss_mib=_largest(r.module_rss_mib for r in runs),
    )


# ---- files ----------------------------------------------------------------


def random_file(path: str, size: int) -> str:
    """Incompressible bytes, written in 4 MiB pieces so the benchmark's own memory stays flat."""
    with open(path, "wb") as stream:
        left = size
        while left:
            piece = min(left, CHUNK)
            stream.write(os.urandom(piece))
            left -= piece
    return path


def artifacts(directory: str, rootfs_mib: int) -> dict[str, str]:
    """A kernel, an initramfs and a rootfs of random bytes: role -> path."""
    os.makedirs(directory, exist_ok=True)
    sizes = {"kernel": KERNEL_MIB, "initramfs": INITRAMFS_MIB, "rootfs": rootfs_mib}
    return {role: random_file(os.path.join(directory, role), sizes[role] * MiB) for role in ROLES}


def warm(paths: t.Iterable[str]) -> None:
    """Read files once so every contender finds them in the page cache, not only the first."""
    for path in paths:
        with open(path, "rb") as stream:
            while stream.read(CHUNK):
                pass


def tree_files(directory: str) -> list[str]:
    return [os.path.join(root, name) for root, _dirs, names in os.walk(directory) for name in names]


def mib(paths: t.Iterable[str]) -> float:
    return sum(os.path.getsize(path) for path in paths) / MiB


def scratch(workdir: str | None, prefix: str) -> str:
    """The benchmark's scratch directory: the one given, or a new one under .build/bench."""
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        return workdir
    os.makedirs(os.path.join(BUILD, "bench"), exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=os.path.join(BUILD, "bench"))


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---- images ---------------------------------------------------------------


def build_args(layout: str, files: t.Mapping[str, str], name: str = NAME, **extra: t.Any) -> dict[str, t.Any]:
    """ironcore_image_build's arguments for one amd64 image of both platforms."""
    args: dict[str, t.Any] = {
        "layout": layout,
        "name": name,
        "artifacts": [dict(files, architecture="amd64", cmdline="console=ttyS0")],
        "platforms": ["baremetal", "virtualization"],
    }
    args.update(extra)
    return args


def built_layout(ansible: Ansible, workdir: str, size_mib: int) -> tuple[str, ImageFiles, dict[str, t.Any]]:
    """An amd64 image of both platforms in a layout (its inputs removed again), and the build's result."""
    inputs = os.path.join(workdir, "in")
    layout = os.path.join(workdir, "layout")
    _measured, result = ansible.module(
        "ironcore.image.ironcore_image_build", build_args(layout, artifacts(inputs, size_mib))
    )
    remove(inputs)
    image = image_files(layout)
    warm(image.all_paths())
    return layout, image, result


def layers(built: t.Mapping[str, t.Any], platform: str, architecture: str = "amd64") -> dict[str, str]:
    """title -> digest of the layers a node of this platform gets, from the build's result."""
    for manifest in built["manifests"]:
        if manifest["platform"] == platform and manifest["architecture"] == architecture:
            return {layer["title"]: layer["digest"] for layer in manifest["layers"]}
    raise BenchError("the build made no %s %s manifest" % (platform, architecture))


def published(ansible: Ansible, workdir: str, size_mib: int, target: Registry, repository: str) -> dict[str, t.Any]:
    """The image built and copied into a registry by skopeo (not by the module under test)."""
    layout, _image, built = built_layout(ansible, workdir, size_mib)
    skopeo(
        *target.skopeo_flags("dest-"), "oci:%s:%s" % (layout, NAME), "docker://%s/%s:1.0" % (target.host, repository)
    )
    return built


@dataclass
class Document:
    digest: str
    media_type: str
    path: str


@dataclass
class ImageFiles:
    """What an image in a layout consists of: its documents (children first) and its other blobs."""

    documents: list[Document] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)  # digest -> path

    def all_paths(self) -> list[str]:
        return [document.path for document in self.documents] + list(self.blobs.values())


def image_files(layout: str, name: str = NAME) -> ImageFiles:
    """Walk an OCI layout from the index entry recorded under `name`."""
    with open(os.path.join(layout, "index.json"), encoding="utf-8") as stream:
        index = json.load(stream)
    entries = [
        entry
        for entry in index["manifests"]
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == name
    ]
    if not entries:
        raise BenchError("%s has no image named %s" % (layout, name))
    found = ImageFiles()
    _walk(layout, entries[0]["digest"], entries[0]["mediaType"], found)
    return found


def blob_path(layout: str, digest: str) -> str:
    algorithm, hex_digest = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, hex_digest)


def _walk(layout: str, digest: str, media_type: str, found: ImageFiles) -> None:
    if any(document.digest == digest for document in found.documents):
        return
    path = blob_path(layout, digest)
    with open(path, encoding="utf-8") as stream:
        document = json.load(stream)
    for child in document.get("manifests", []):
        _walk(layout, child["digest"], child["mediaType"], found)
    for blob in [document["config"], *document.get("layers", [])] if "config" in document else []:
        found.blobs[blob["digest"]] = blob_path(layout, blob["digest"])
    found.documents.append(Document(digest, media_type, path))


# ---- registry and curl ----------------------------------------------------


def registry(directory: str) -> Registry:
    """docker-registry on 127.0.0.1 over TLS with htpasswd (bcrypt) Basic auth, as the tests run it."""
    return start_registry("bench", directory, tls=True, auth="htpasswd")


def curl_base(target: Registry) -> list[str]:
    assert target.pki is not None
    return [
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--location",
        "--cacert",
        target.pki.ca_cert,
        "--user",
        "%s:%s" % (target.username, target.password),
    ]


def url(target: Registry, path: str) -> str:
    return "https://%s/v2/%s" % (target.host, path)


def curl(target: Registry, *args: str) -> Run:
    return run([*curl_base(target), *args])


def curl_get(target: Registry, repository: str, digest: str, dest: str) -> Run:
    return curl(target, "--output", dest, url(target, "%s/blobs/%s" % (repository, digest)))


def curl_get_document(target: Registry, repository: str, document: Document, dest: str) -> Run:
    # Registries keep manifests apart from blobs: they are read by digest from /manifests/.
    address = url(target, "%s/manifests/%s" % (repository, document.digest))
    return curl(target, "-H", "Accept: " + document.media_type, "--output", dest, address)


def curl_upload_session(target: Registry, repository: str) -> tuple[Run, str]:
    """POST a new upload session; returns the absolute upload URL."""
    sessions = url(target, "%s/blobs/uploads/" % repository)
    answer = curl(target, "-X", "POST", "--dump-header", "-", "--output", "/dev/null", sessions)
    for line in answer.stdout.splitlines():
        key, _colon, value = line.partition(":")
        if key.strip().lower() == "location":
            location = value.strip()
            if location.startswith("/"):
                location = "https://%s%s" % (target.host, location)
            return answer, location + ("&" if "?" in location else "?")
    raise BenchError("the registry answered the upload POST without a Location: %s" % answer.stdout[-500:])


def curl_push_blob(target: Registry, repository: str, digest: str, path: str) -> Run:
    """The least a client must do: one POST, one monolithic PUT streaming the file."""
    session, location = curl_upload_session(target, repository)
    octets = "Content-Type: application/octet-stream"
    return session + curl(target, "-X", "PUT", "-H", octets, "--upload-file", path, location + "digest=" + digest)


def curl_put_document(target: Registry, repository: str, reference: str, document: Document) -> Run:
    address = url(target, "%s/manifests/%s" % (repository, reference))
    content_type = "Content-Type: " + document.media_type
    return curl(target, "-X", "PUT", "-H", content_type, "--data-binary", "@" + document.path, address)


def curl_push_image(target: Registry, repository: str, tag: str, image: ImageFiles) -> Run:
    """Every blob, then every document by digest (children first), then the tag."""
    total = NOTHING
    for digest, path in image.blobs.items():
        total += curl_push_blob(target, repository, digest, path)
    for document in image.documents[:-1]:
        total += curl_put_document(target, repository, document.digest, document)
    return total + curl_put_document(target, repository, tag, image.documents[-1])


def sync(paths: t.Sequence[str]) -> Run:
    """fsync exactly these files (coreutils `sync FILE...`): durable, without flushing other users' data."""
    return run(["sync", *paths])


def skopeo(*args: str) -> Run:
    return run(["skopeo", "copy", "--all", "--preserve-digests", "--quiet", *args])


# ---- report ---------------------------------------------------------------


@dataclass
class Result:
    """One benchmark's medians: ours (None when the module is missing), the peer and the limit."""

    benchmark: str
    what: str
    ours: Run | None
    peer: Run | None
    limit: Run
    goal_limit: float
    goal_peer: float
    ping: Run
    noop: Run | None = None
    note: str = ""


COLUMNS = [
    "benchmark",
    "what",
    "ours s",
    "peer s",
    "limit s",
    "ours/limit (goal)",
    "ours/peer (goal)",
    "peak RSS MiB ours / peer / limit",
    "module peak RSS MiB",
    "ours - ping peak RSS MiB (all / module)",
    "no-op re-run s",
    "re-run - ping s",
]


def _seconds(measured: Run | None) -> str:
    return "-" if measured is None else "%.2f" % measured.seconds


def _ratio(top: Run | None, bottom: Run | None, goal: float) -> str:
    if top is None or bottom is None or bottom.seconds <= 0:
        return "- (<= %.2f)" % goal
    ratio = top.seconds / bottom.seconds
    return "%.2f (<= %.2f)%s" % (ratio, goal, "" if ratio <= goal else " over")


def mib_or_dash(value: float | None) -> str:
    return "-" if value is None else "%.0f" % value


def result_row(result: Result) -> list[str]:
    ours_module, ping_module = (result.ours.module_rss_mib if result.ours else None), result.ping.module_rss_mib
    module_delta = "-" if ours_module is None or ping_module is None else "%+.1f" % (ours_module - ping_module)
    rss = " / ".join("-" if r is None else "%.0f" % r.rss_mib for r in (result.ours, result.peer, result.limit))
    return [
        result.benchmark,
        result.what + (" (%s)" % result.note if result.note else ""),
        _seconds(result.ours) if result.ours else "module not available",
        _seconds(result.peer),
        _seconds(result.limit),
        _ratio(result.ours, result.limit, result.goal_limit),
        _ratio(result.ours, result.peer, result.goal_peer),
        rss,
        mib_or_dash(result.ours.module_rss_mib if result.ours else None),
        "-" if result.ours is None else "%+.1f / %s" % (result.ours.rss_mib - result.ping.rss_mib, module_delta),
        _seconds(result.noop),
        "-" if result.noop is None else "%+.2f" % (result.noop.seconds - result.ping.seconds),
    ]


def table(columns: t.Sequence[str], rows: t.Iterable[t.Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """The machine in one line: what a reader needs to compare numbers from elsewhere."""
    with open("/proc/meminfo", encoding="ascii") as stream:
        memory_kib = int(stream.readline().split()[1])
    usage = shutil.disk_usage(BUILD if os.path.isdir(BUILD) else REPO)
    filesystem = subprocess.run(
        ["df", "--output=fstype,source", BUILD if os.path.isdir(BUILD) else REPO],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")[1:2]
    return "%d CPUs (nproc), %.1f GiB memory, disk %s %.0f GiB (%.0f GiB free), kernel %s, load average %s" % (
        os.cpu_count() or 0,
        memory_kib / 1024 / 1024,
        " ".join(filesystem[0].split()) if filesystem else "?",
        usage.total / 1024**3,
        usage.free / 1024**3,
        os.uname().release,
        " ".join("%.2f" % load for load in os.getloadavg()),
    )


def summary(results: t.Sequence[Result], heading: str = "") -> str:
    ping = results[0].ping
    text = [
        heading or "# ironcore.image benchmarks",
        "",
        "Machine: " + machine() + ".",
        "`ansible localhost -m ping`: %.2f s, peak RSS %.0f MiB, its module process %s MiB (the floor of every task)."
        % (ping.seconds, ping.rss_mib, mib_or_dash(ping.module_rss_mib)),
        "",
        table(COLUMNS, (result_row(result) for result in results)),
        "",
    ]
    return "\n".join(text)


def write_report(text: str, file_name: str) -> None:
    """Print a benchmark's report and keep it as .build/bench/<file_name>."""
    print(text)
    with open(os.path.join(BUILD, "bench", file_name), "w", encoding="utf-8") as stream:
        stream.write(text)
    print("written to .build/bench/%s" % file_name)


def run_benchmark(doc: str, prefix: str, bench: t.Callable[..., t.Any]) -> None:
    """A benchmark script's main(): parse the common flags, run `bench` in a scratch directory, print the table.

    `bench(ansible, ping, workdir, size_mib, rounds)` returns one Result or a list of them.
    """
    started = time.monotonic()
    options = parser(doc.splitlines()[0]).parse_args()
    workdir = scratch(options.workdir, prefix)
    try:
        ansible = Ansible()
        results = bench(ansible, ansible.ping(), workdir, options.size_mib, options.rounds)
        print(summary(results if isinstance(results, list) else [results]))
    finally:
        if not options.workdir:
            remove(workdir)
    print("(%.0f s in all)" % (time.monotonic() - started))


def met(ok: bool) -> str:
    """A goal's verdict in a table."""
    return "met" if ok else "MISSED"


def parser(description: str) -> t.Any:
    import argparse  # pylint: disable=import-outside-toplevel

    options = argparse.ArgumentParser(description=description)
    options.add_argument("--size-mib", type=int, default=ROOTFS_MIB, help="rootfs size (default %(default)s)")
    options.add_argument("--rounds", type=int, default=3, help="rounds per contender (default %(default)s)")
    options.add_argument("--workdir", help="scratch directory, kept (default: a new one under .build/bench, removed)")
    return options
