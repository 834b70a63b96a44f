# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

"""Build the execution environment (EE) image for AWX with podman, with no network inside the build.

The base is EE_BASE_IMAGE when given, otherwise a Debian 12 root file system that mmdebstrap makes on
this host (with the system packages bindep.txt names for dpkg) and `podman import` loads. The Python
packages (ansible-core, ansible-runner, meta/requirements.txt) are downloaded as wheels on this host, by
this host's pip (so with this host's trust store and proxy), for the base's Python and C library, and
installed inside from that wheelhouse with `pip --no-index`. The collection is installed from the
tarball tools/build_tarball.sh makes of the checkout.

Podman needs a few settings on hosts without systemd, with cgroup v1 or a hybrid layout, or where the
container's ulimits cannot be raised: this script detects them and writes them into a containers.conf
in the build directory (CONTAINERS_CONF), unless CONTAINERS_CONF is set already.

Usage: tools/build_ee.py --tag TAG --build-dir DIR [--base-image IMAGE] [--ca-bundle FILE] [--pip-index]
       tools/build_ee.py --tag TAG --build-dir DIR --podman-conf-only   (prints the containers.conf, if any)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What the EE itself needs besides bindep.txt: Python with venv (ensurepip) and a trust store.
DPKG_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
RPM_BASE_PACKAGES = ("python3", "ca-certificates")
# Documentation, manual pages and translations never reach the image (dpkg skips them when unpacking).
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
VENV = "/opt/ansible"
COLLECTIONS = "/usr/share/ansible/collections"
# The limits rootful podman gives containers unless containers.conf says otherwise.
PODMAN_NOFILE, PODMAN_NPROC = 1048576, 4194304

# Printed by the base image's python3: what the wheels must fit.
PROBE = (
    "import json, platform, shutil, sys;"
    "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'libc': platform.libc_ver(),"
    " 'machine': platform.machine(),"
    " 'manager': next((m for m in ('apt-get', 'dnf', 'microdnf', 'yum') if shutil.which(m)), '')}))"
)


class BuildError(Exception):
    """One line: what failed and what to do."""


def run(command: list[str], **kwargs: t.Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, text=True, capture_output=True, check=False, **kwargs)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise BuildError("%s failed (exit %d): %s" % (" ".join(command[:3]), proc.returncode, " | ".join(last)))
    return proc


# ---- the host's podman settings ------------------------------------------------------------------


def cgroup_v2_unified(mounts: str) -> bool:
    """True when /sys/fs/cgroup itself is a cgroup2 mount (not cgroup v1, not the hybrid layout)."""
    return any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts.splitlines() if line.strip())


def ulimits_raisable() -> bool:
    """Whether this host lets a process raise NOFILE and NPROC to what rootful podman sets by default."""
    check = (
        "import resource;"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d));"
        "resource.setrlimit(resource.RLIMIT_NPROC, (%d, %d))"
        % (PODMAN_NOFILE, PODMAN_NOFILE, PODMAN_NPROC, PODMAN_NPROC)
    )
    return subprocess.run([sys.executable, "-c", check], capture_output=True, check=False).returncode == 0


def host_settings(
    mounts: str, systemd: bool, crun: bool, runc: bool, raisable: bool
) -> dict[str, dict[str, str | list[str]]]:
    """containers.conf sections this host needs: {} where podman's defaults work."""
    engine: dict[str, str | list[str]] = {}
    containers: dict[str, str | list[str]] = {}
    # crun refuses cgroup v1 and the hybrid layout; runc runs on both.
    if runc and (not crun or not cgroup_v2_unified(mounts)):
        engine["runtime"] = "runc"
    # Without systemd as PID 1 there is no systemd to create cgroups or keep a journal.
    if not systemd:
        engine["cgroup_manager"] = "cgroupfs"
        engine["events_logger"] = "file"
    if not raisable:
        containers["default_ulimits"] = []
    return {name: section for name, section in (("containers", containers), ("engine", engine)) if section}


def detect_host_settings() -> dict[str, dict[str, str | list[str]]]:
    with open("/proc/self/mounts") as stream:
        mounts = stream.read()
    return host_settings(
        mounts,
        systemd=os.path.isdir("/run/systemd/system"),
        crun=shutil.which("crun") is not None,
        runc=shutil.which("runc") is not None or os.path.exists("/usr/sbin/runc"),
        raisable=ulimits_raisable(),
    )


def containers_conf(settings: t.Mapping[str, t.Mapping[str, str | list[str]]]) -> str:
    lines = ["# Written by tools/build_ee.py for this host: podman reads it through CONTAINERS_CONF."]
    for section, values in settings.items():
        lines.append("[%s]" % section)
        lines.extend("%s = %s" % (key, json.dumps(value)) for key, value in values.items())
    return "\n".join(lines) + "\n"


# ---- bindep ----------------------------------------------------------------------------------------


def bindep_packages(text: str, platform: str) -> list[str]:
    """Packages of a bindep file for one platform (dpkg or rpm): unqualified lines, and the lines whose
    [platform:...] selectors name it (a !platform:... selector excludes it)."""
    packages = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\S+)\s*(?:\[([^\]]*)\])?", line)
        if match is None:
            raise BuildError("bindep.txt: cannot read %r; write `package [platform:dpkg]`" % raw)
        name, selectors = match.group(1), (match.group(2) or "").split()
        wanted = [s for s in selectors if s.startswith("platform:")]
        unwanted = [s[1:] for s in selectors if s.startswith("!platform:")]
        if "platform:" + platform in unwanted:
            continue
        if not wanted or "platform:" + platform in wanted:
            packages.append(name)
    return packages


def read_bindep(platform: str) -> list[str]:
    with open(os.path.join(REPO, "meta", "bindep.txt")) as stream:
        return bindep_packages(stream.read(), platform)


# ---- Python requirements and the wheelhouse --------------------------------------------------------


def ee_requirements() -> str:
    """meta/requirements.txt and ansible-core, cryptography's bound and ansible-runner as the host's
    virtualenv takes them (requirements-dev.txt): one place for each version."""
    lines = []
    with open(os.path.join(REPO, "meta", "requirements.txt")) as stream:
        lines += [line.strip() for line in stream if line.strip() and not line.startswith("#")]
    for name in ("ansible-core", "cryptography", "ansible-runner"):
        lines += first_requirement("requirements-dev.txt", name)
    return "\n".join(lines) + "\n"


def first_requirement(path: str, name: str) -> list[str]:
    with open(os.path.join(REPO, path)) as stream:
        for line in stream:
            if re.match(r"%s\s*[<>=!~]" % re.escape(name), line):
                return [line.split("#", 1)[0].strip()]
    raise BuildError("%s names no %s requirement" % (path, name))


def wheel_platforms(libc: tuple[str, str], machine: str) -> list[str]:
    """manylinux tags a base with this glibc accepts, newest first (pip wants them listed)."""
    name, version = libc
    if name != "glibc" or not re.fullmatch(r"2\.\d+", version):
        raise BuildError("the base image's C library is %r, not glibc: give a glibc-based EE_BASE_IMAGE" % name)
    minor = int(version.split(".")[1])
    tags = ["manylinux_2_%d_%s" % (m, machine) for m in range(minor, 16, -1)]
    return [*tags, "manylinux2014_%s" % machine, "linux_%s" % machine]


def download_wheels(requirements: str, base: t.Mapping[str, t.Any], wheelhouse: str) -> None:
    """Every wheel the base needs, for its Python and platform, fetched by this host's pip: binaries only,
    so nothing is compiled here or inside the image."""
    if os.path.exists(os.path.join(wheelhouse, ".complete")):
        return
    shutil.rmtree(wheelhouse, ignore_errors=True)
    os.makedirs(wheelhouse)
    requirements_file = os.path.join(wheelhouse, "requirements.txt")
    with open(requirements_file, "w") as stream:
        stream.write(requirements)
    abi = "cp" + base["python"].replace(".", "")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    command += ["--only-binary=:all:", "--dest", wheelhouse, "--python-version", base["python"]]
    command += ["--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in wheel_platforms(tuple(base["libc"]), base["machine"]):
        command += ["--platform", platform]
    try:
        run([*command, "-r", requirements_file])
    except BuildError as exc:
        raise BuildError("downloading the wheels failed; check this host's pip index and proxy (%s)" % exc) from exc
    open(os.path.join(wheelhouse, ".complete"), "w").close()


# ---- the base image --------------------------------------------------------------------------------


def digest_of(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def debian_base(podman: list[str], build_dir: str, packages: list[str]) -> str:
    """A Debian 12 minbase with `packages`, made by mmdebstrap (once: the tarball stays in the build
    directory, keyed by its package list) and imported into podman's storage."""
    key = digest_of(DEBIAN_SUITE, *DEBIAN_MIRRORS, *sorted(packages), *DPKG_EXCLUDES)
    image = "localhost/ironcore-image-ee-base:%s" % key
    if subprocess.run([*podman, "image", "exists", image], check=False).returncode == 0:
        return image
    tarball = os.path.join(build_dir, "debian-base-%s.tar" % key)
    if not os.path.exists(tarball):
        if shutil.which("mmdebstrap") is None:
            raise BuildError("mmdebstrap is missing: apt-get install mmdebstrap, or give EE_BASE_IMAGE")
        command = ["mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "--include=" + ",".join(packages)]
        command += ["--dpkgopt=path-exclude=%s" % pattern for pattern in DPKG_EXCLUDES]
        run([*command, DEBIAN_SUITE, tarball + ".partial", *DEBIAN_MIRRORS])
        os.replace(tarball + ".partial", tarball)
        # Bases of earlier package lists are not used again: about 200 MB each.
        for stale in glob.glob(os.path.join(build_dir, "debian-base-*.tar")):
            if stale != tarball:
                os.remove(stale)
    run([*podman, "import", "--change", 'CMD ["/bin/bash"]', tarball, image])
    return image


def probe(podman: list[str], image: str) -> dict[str, t.Any]:
    proc = subprocess.run(
        [*podman, "run", "--rm", "--network", "none", image, "python3", "-c", PROBE],
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(
            "cannot run python3 in the base image %s (%s); give a base with Python 3 (3.11 or later)"
            % (image, (proc.stderr.strip().splitlines() or ["no output"])[-1])
        )
    found: dict[str, t.Any] = json.loads(proc.stdout)
    return found


# ---- the Containerfile -----------------------------------------------------------------------------


def system_install(manager: str, packages: list[str], ca_bundle: bool) -> str:
    """A shell command that installs `packages` with the base's package manager and leaves no cache."""
    if not packages:
        return "true"
    names = " ".join(packages)
    if manager == "apt-get":
        ca = " -o Acquire::https::CAInfo=/ee/ca-bundle.pem" if ca_bundle else ""
        return (
            "apt-get%s update -qq && DEBIAN_FRONTEND=noninteractive apt-get%s install -y -qq --no-install-recommends"
            " %s && apt-get clean && rm -rf /var/lib/apt/lists/*" % (ca, ca, names)
        )
    if manager in ("dnf", "microdnf", "yum"):
        ca = " --setopt=sslcacert=/ee/ca-bundle.pem" if ca_bundle else ""
        return "%s%s install -y %s && %s clean all && rm -rf /var/cache/dnf /var/cache/yum" % (
            manager,
            ca,
            names,
            manager,
        )
    raise BuildError("the base image has no apt-get, dnf, microdnf or yum to install %s" % names)


def containerfile(base: str, install_system: str, pip_index: bool, ca_bundle: bool) -> str:
    """The EE's Containerfile: one RUN with the build context bind-mounted at /ee, so neither the
    wheels nor the tarball nor a CA bundle stay in any layer."""
    if pip_index:
        cert = " --cert /ee/ca-bundle.pem" if ca_bundle else ""
        pip = "%s/bin/pip install --no-cache-dir --disable-pip-version-check%s -r /ee/requirements.txt" % (VENV, cert)
    else:
        pip = (
            "%s/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /ee/wheels"
            " -r /ee/requirements.txt" % VENV
        )
    steps = [
        install_system,
        "python3 -m venv %s" % VENV,
        pip,
        "%s/bin/ansible-galaxy collection install --offline -p %s /ee/ironcore-image.tar.gz" % (VENV, COLLECTIONS),
        "rm -rf /root/.ansible /root/.cache",
        "find %s -name __pycache__ -prune -exec rm -rf {} +" % VENV,
    ]
    return "\n".join(
        [
            "FROM %s" % base,
            # A user that runs jobs in it (AWX, ansible-runner) finds ansible-playbook on PATH, and
            # interpreter discovery on the EE's own host finds the venv's python3 first.
            "ENV PATH=%s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" % VENV,
            "RUN --mount=type=bind,source=.,target=/ee set -eux; " + " && ".join(steps),
            'LABEL org.opencontainers.image.title="ironcore.image execution environment"',
            'CMD ["ansible-playbook", "--version"]',
            "",
        ]
    )


def collection_tarball(build_dir: str) -> str:
    proc = run([os.path.join(REPO, "tools", "build_tarball.sh"), os.path.join(build_dir, "collection")])
    return proc.stdout.strip().splitlines()[-1]


# ---- main ------------------------------------------------------------------------------------------


def podman_command(build_dir: str, executable: str) -> list[str]:
    """podman, pointed at this host's settings unless the caller chose a containers.conf already."""
    if "CONTAINERS_CONF" not in os.environ:
        settings = detect_host_settings()
        if settings:
            path = os.path.join(build_dir, "containers.conf")
            with open(path, "w") as stream:
                stream.write(containers_conf(settings))
            os.environ["CONTAINERS_CONF"] = path
            print("podman settings for this host (%s): %s" % (path, json.dumps(settings)), file=sys.stderr)
    return [executable]


def build(args: argparse.Namespace) -> None:
    started = time.monotonic()
    build_dir = os.path.abspath(args.build_dir)
    os.makedirs(build_dir, exist_ok=True)
    podman = podman_command(build_dir, args.podman)
    ca_bundle = bool(args.ca_bundle)
    if args.base_image:
        base = args.base_image
        facts = probe(podman, base)
        platform = "dpkg" if facts["manager"] == "apt-get" else "rpm"
        extra = DPKG_BASE_PACKAGES if platform == "dpkg" else RPM_BASE_PACKAGES
        install_system = system_install(facts["manager"], [*extra, *read_bindep(platform)], ca_bundle)
    else:
        base = debian_base(podman, build_dir, [*DPKG_BASE_PACKAGES, *read_bindep("dpkg")])
        facts = probe(podman, base)
        install_system = "true"  # mmdebstrap installed them on this host

    context = os.path.join(build_dir, "context")
    shutil.rmtree(context, ignore_errors=True)
    os.makedirs(context)
    requirements = ee_requirements()
    with open(os.path.join(context, "requirements.txt"), "w") as stream:
        stream.write(requirements)
    if not args.pip_index:
        wheelhouse = os.path.join(build_dir, "wheels-%s" % digest_of(requirements, json.dumps(facts, sort_keys=True)))
        download_wheels(requirements, facts, wheelhouse)
        shutil.copytree(wheelhouse, os.path.join(context, "wheels"))
    shutil.copy(collection_tarball(build_dir), os.path.join(context, "ironcore-image.tar.gz"))
    if ca_bundle:
        shutil.copy(args.ca_bundle, os.path.join(context, "ca-bundle.pem"))
    with open(os.path.join(context, "Containerfile"), "w") as stream:
        stream.write(containerfile(base, install_system, args.pip_index, ca_bundle))

    # No network at all unless the package manager or pip must reach an index. No layer cache: the RUN
    # step's cache key is its text, which stays the same when the mounted wheels or collection change.
    network = "host" if (args.base_image or args.pip_index) else "none"
    command = [*podman, "build", "--no-cache", "--pull=never", "--network", network, "--file", "Containerfile"]
    if args.base_image:
        command[command.index("--pull=never")] = "--pull=missing"
    previous = subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.Id}}", args.tag], capture_output=True, text=True, check=False
    ).stdout.strip()
    run([*command, "--tag", args.tag, "."], cwd=context)
    if previous:
        # The image the tag named before is left without a name: remove it unless a container still uses it.
        subprocess.run([*podman, "rmi", previous], capture_output=True, check=False)
    size = run([*podman, "image", "inspect", "--format", "{{.Size}}", args.tag]).stdout.strip()
    print(
        "built %s from %s in %.0f s: %.0f MB (podman image inspect)"
        % (args.tag, base, time.monotonic() - started, int(size) / 1e6)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True, help="name of the image to build")
    parser.add_argument("--build-dir", required=True, help="working directory (base tarball, wheels, context)")
    parser.add_argument("--base-image", default="", help="base image instead of a local Debian 12 (mmdebstrap)")
    parser.add_argument("--ca-bundle", default="", help="CA bundle (PEM) for the package manager and pip inside")
    parser.add_argument("--pip-index", action="store_true", help="pip inside installs from the index, not wheels")
    parser.add_argument("--podman", default="podman", help="the podman executable")
    parser.add_argument(
        "--podman-conf-only", action="store_true", help="only write this host's containers.conf and print its path"
    )
    args = parser.parse_args()
    try:
        if args.podman_conf_only:
            os.makedirs(args.build_dir, exist_ok=True)
            podman_command(os.path.abspath(args.build_dir), args.podman)
            print(os.environ.get("CONTAINERS_CONF", ""))
            return
        build(args)
    except BuildError as exc:
        sys.exit("make ee: %s" % exc)


if __name__ == "__main__":
    main()
