"""Real boot artifacts made at test time, and qemu to prove that what a node received boots.

- `debian_kernel()`: the kernel of the Debian release this machine runs, from its `linux-image-*`
  package (`apt-get download`, `dpkg-deb -x`), cached under `.build/boot/<package>_<version>/`; for
  another architecture (`architecture="arm64"`) apt reads that architecture's package lists from a private
  directory, so the machine's apt configuration stays as it is.
- `debian_busybox()`: busybox-static's binary for an architecture, fetched the same way (the machine's own
  `/bin/busybox` for its own architecture).
- `make_initramfs()`: a gzip'd newc cpio holding busybox-static and an `/init` that prints
  `MARKER_PREFIX <value of ironcore.marker= on the kernel command line>` and powers off, so the
  marker proves both that the initramfs ran and that the command line reached the kernel.
- `make_rootfs()` / `read_ext4_file()`: an ext4 image made with `mke2fs -d`, read back with `debugfs`.
- `boot_kernel()`: qemu-system-aarch64 (`-M virt -cpu cortex-a57`) boots a kernel and initramfs directly
  with a given command line, the way firmware hands them over on an arm64 node.
- `boot_ipxe()`: qemu (TCG) network-boots through its own iPXE firmware from a `boot.ipxe` URL, the way a
  bare-metal node PXE-boots: iPXE fetches the kernel and initramfs at the script's URLs and boots the kernel
  with the script's command line.
"""

from __future__ import annotations

import fcntl
import glob
import gzip
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import typing as t
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE_DIR = os.path.join(REPO, ".build", "boot")

# The cloud flavour: same kernel series as the generic one, a third of the download, made for VMs.
KERNEL_META_PACKAGE = os.environ.get("IRONCORE_TEST_KERNEL_PACKAGE", "linux-image-cloud-amd64")
BUSYBOX = "/bin/busybox"  # from busybox-static: no shared libraries needed inside the initramfs
MARKER_PREFIX = "IRONCORE-BOOT-MARKER"
MARKER_PARAMETER = "ironcore.marker"
# The test init prints its /proc/cmdline after this word.
CMDLINE_PREFIX = "IRONCORE-CMDLINE"
# What qemu's slirp network shows the guest for the host's 127.0.0.1.
GUEST_HOST_ADDRESS = "10.0.2.2"

INIT_SCRIPT = f"""#!/bin/sh
# Test init: no /dev/console node in the archive, so mount devtmpfs and take the console from there.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox mount -t proc proc /proc
for word in $(/bin/busybox cat /proc/cmdline); do
  case "$word" in
    {MARKER_PARAMETER}=*) echo "{MARKER_PREFIX} ${{word#{MARKER_PARAMETER}=}}" ;;
  esac
done
echo "{CMDLINE_PREFIX} $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
"""


class BootSetupError(RuntimeError):
    """The machine lacks something the boot proof needs; the message says what to install or run."""


def _run(command: list[str], **kwargs: t.Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise BootSetupError("%s failed (rc=%d): %s" % (shlex.join(command), proc.returncode, proc.stderr.strip()))
    return proc


def native_architecture() -> str:
    """The Debian architecture of this machine (amd64, arm64, ...)."""
    return _run(["dpkg", "--print-architecture"]).stdout.strip()


def apt_options(architecture: str | None, cache_dir: str = CACHE_DIR) -> list[str]:
    """apt-get/apt-cache options that look at `architecture`'s packages; none for this machine's own.

    Package lists and downloads of a foreign architecture live in a private directory under `cache_dir`:
    the machine's apt configuration and its package lists stay untouched.
    """
    if architecture is None or architecture == native_architecture():
        return []
    private = _private_apt_dir(architecture, cache_dir)
    for sub in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(private, sub), exist_ok=True)
    return [
        "-o", "APT::Architecture=%s" % architecture,
        "-o", "APT::Architectures=%s" % architecture,
        "-o", "Dir::State::Lists=%s" % os.path.join(private, "lists"),
        "-o", "Dir::Cache=%s" % os.path.join(private, "cache"),
    ]  # fmt: skip


def _private_apt_dir(architecture: str, cache_dir: str) -> str:
    return os.path.join(cache_dir, "apt-%s" % architecture)


def update_foreign_lists(architecture: str, options: list[str], cache_dir: str = CACHE_DIR) -> None:
    """Fill the private package lists of a foreign architecture once (apt-get update while they are empty).

    Under a lock: pytest-xdist workers share the cache, and a second apt-get update on the same lists
    would fail on apt's own lock instead of waiting.
    """
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lists.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not glob.glob(os.path.join(_private_apt_dir(architecture, cache_dir), "lists", "*_Packages*")):
            _run(["apt-get", *options, "-q", "update"])


def resolve_kernel_package(
    meta_package: str = KERNEL_META_PACKAGE, options: list[str] | None = None
) -> tuple[str, str]:
    """(package, version) of the versioned linux-image package the meta package depends on."""
    options = options or []
    depends = _run(["apt-cache", *options, "depends", "--no-recommends", "--no-suggests", meta_package]).stdout
    packages = [
        line.split(":", 1)[1].strip()
        for line in depends.splitlines()
        if line.strip().startswith("Depends: linux-image-")
    ]
    if not packages:
        raise BootSetupError("apt knows no kernel package behind %s; run apt-get update" % meta_package)
    return packages[0], _candidate_version(packages[0], options)


def _candidate_version(package: str, options: list[str]) -> str:
    show = _run(["apt-cache", *options, "show", "--no-all-versions", package]).stdout
    versions = [line.split(":", 1)[1].strip() for line in show.splitlines() if line.startswith("Version:")]
    if not versions:
        raise BootSetupError("apt has no candidate version of %s; run apt-get update" % package)
    return versions[0]


def _unpack_one(package: str, version: str, options: list[str], member_glob: str, target: str, cache_dir: str) -> str:
    """Download one .deb, unpack it and move the single file matching `member_glob` to `target`."""
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        _run(["apt-get", *options, "download", "-q", "%s=%s" % (package, version)], cwd=work)
        debs = glob.glob(os.path.join(work, "*.deb"))
        if len(debs) != 1:
            raise BootSetupError("apt-get download %s left %d .deb files" % (package, len(debs)))
        unpacked = os.path.join(work, "root")
        _run(["dpkg-deb", "-x", debs[0], unpacked])
        found = glob.glob(os.path.join(unpacked, member_glob))
        if len(found) != 1:
            raise BootSetupError("%s holds %d files matching /%s, expected one" % (debs[0], len(found), member_glob))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _gunzip_if_compressed(found[0])
        # Same file system as the target: the rename makes the cache entry appear complete or not at all.
        os.replace(found[0], target)
    return target


def _gunzip_if_compressed(path: str) -> None:
    """Decompress a gzip'd kernel in place: qemu's -kernel wants the plain arm64 Image."""
    with open(path, "rb") as stream:
        if stream.read(2) != b"\x1f\x8b":
            return
    with gzip.open(path, "rb") as source, open(path + ".plain", "wb") as plain:
        shutil.copyfileobj(source, plain)
    os.replace(path + ".plain", path)


def debian_kernel(
    cache_dir: str = CACHE_DIR, meta_package: str = KERNEL_META_PACKAGE, architecture: str | None = None
) -> str:
    """Path of a cached kernel from Debian's kernel package, downloading and unpacking it once.

    With `architecture` (say arm64) on a machine of another one, the kernel package of that architecture
    (`meta_package` defaults to linux-image-cloud-<architecture>) is fetched through private package lists.
    """
    os.makedirs(cache_dir, exist_ok=True)
    options = apt_options(architecture, cache_dir)
    if architecture is not None and meta_package == KERNEL_META_PACKAGE:
        meta_package = "linux-image-cloud-%s" % architecture
    pattern = os.path.join(cache_dir, "linux-image-*-%s_*" % (architecture or native_architecture()), "vmlinuz")
    try:
        if architecture is not None and options:
            update_foreign_lists(architecture, options, cache_dir)
        package, version = resolve_kernel_package(meta_package, options)
    except BootSetupError:
        # Offline or without package lists: any kernel cached earlier is just as real.
        cached = sorted(glob.glob(pattern))
        if cached:
            return cached[-1]
        raise
    target = os.path.join(cache_dir, "%s_%s" % (package, version), "vmlinuz")
    if os.path.isfile(target):
        return target
    return _unpack_one(package, version, options, "boot/vmlinuz-*", target, cache_dir)


def debian_busybox(architecture: str, cache_dir: str = CACHE_DIR) -> str:
    """busybox-static's binary for `architecture`: this machine's own, or fetched once and cached."""
    options = apt_options(architecture, cache_dir)
    if not options:
        return BUSYBOX
    pattern = os.path.join(cache_dir, "busybox-static_*_%s" % architecture, "busybox")
    try:
        update_foreign_lists(architecture, options, cache_dir)
        version = _candidate_version("busybox-static", options)
    except BootSetupError:
        cached = sorted(glob.glob(pattern))
        if cached:
            return cached[-1]
        raise
    target = os.path.join(cache_dir, "busybox-static_%s_%s" % (version.replace(":", "_"), architecture), "busybox")
    if os.path.isfile(target):
        return target
    return _unpack_one("busybox-static", version, options, "bin/busybox", target, cache_dir)


EFI_STUB_DIR = "/usr/lib/systemd/boot/efi"
EFI_STUB_NAMES = {"amd64": "linuxx64.efi.stub", "arm64": "linuxaa64.efi.stub"}


def debian_efi_stub(architecture: str, cache_dir: str = CACHE_DIR) -> str:
    """systemd-boot-efi's EFI stub for `architecture`: this machine's own, or that architecture's .deb fetched once."""
    options = apt_options(architecture, cache_dir)
    name = EFI_STUB_NAMES[architecture]
    if not options:
        path = os.path.join(EFI_STUB_DIR, name)
        if not os.path.isfile(path):
            raise BootSetupError("%s is missing; install systemd-boot-efi (make system-deps)" % path)
        return path
    pattern = os.path.join(cache_dir, "systemd-boot-efi_*_%s" % architecture, name)
    try:
        update_foreign_lists(architecture, options, cache_dir)
        version = _candidate_version("systemd-boot-efi", options)
    except BootSetupError:
        cached = sorted(glob.glob(pattern))
        if cached:
            return cached[-1]
        raise
    target = os.path.join(cache_dir, "systemd-boot-efi_%s_%s" % (version.replace(":", "_"), architecture), name)
    if os.path.isfile(target):
        return target
    return _unpack_one("systemd-boot-efi", version, options, "usr/lib/systemd/boot/efi/" + name, target, cache_dir)


def make_initramfs(path: str, busybox: str = BUSYBOX) -> str:
    """Write a gzip'd newc cpio with busybox and the marker-printing /init to `path`."""
    if not os.path.isfile(busybox):
        raise BootSetupError("%s is missing; install the busybox-static package" % busybox)
    with tempfile.TemporaryDirectory() as staging:
        for directory in ("bin", "dev", "proc"):
            os.mkdir(os.path.join(staging, directory))
        shutil.copy2(busybox, os.path.join(staging, "bin", "busybox"))
        os.symlink("busybox", os.path.join(staging, "bin", "sh"))
        init = os.path.join(staging, "init")
        with open(init, "w") as stream:
            stream.write(INIT_SCRIPT)
        os.chmod(init, 0o755)
        members = sorted(
            os.path.relpath(os.path.join(root, name), staging)
            for root, dirs, files in os.walk(staging)
            for name in dirs + files
        )
        archive = _cpio(staging, members)
    with gzip.GzipFile(path, "wb", compresslevel=6, mtime=0) as stream:
        stream.write(archive)
    return path


def _cpio(staging: str, members: list[str]) -> bytes:
    proc = subprocess.run(
        ["cpio", "--create", "--format=newc", "--owner=0:0", "--reproducible", "--quiet"],
        input=("\n".join(members) + "\n").encode(),
        cwd=staging,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BootSetupError("cpio failed: %s" % proc.stderr.decode(errors="replace").strip())
    return proc.stdout


def make_rootfs(path: str, files: t.Mapping[str, bytes], size: str = "8M", label: str = "ROOT") -> str:
    """Write an ext4 image holding `files` (path inside the file system -> content) with mke2fs -d."""
    with tempfile.TemporaryDirectory() as staging:
        for name, content in files.items():
            full = os.path.join(staging, name.lstrip("/"))
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as stream:
                stream.write(content)
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0", "-d", staging, path, size])
    return path


def read_ext4_file(image: str, path: str) -> bytes:
    """Content of `path` inside the ext4 file system in `image` (raw), read with debugfs."""
    proc = subprocess.run(["debugfs", "-R", "cat %s" % path, image], capture_output=True, check=False)
    if proc.returncode != 0 or b"File not found" in proc.stderr:
        raise AssertionError(
            "debugfs could not read %s from %s: %s" % (path, image, proc.stderr.decode(errors="replace"))
        )
    return proc.stdout


@dataclass
class BootResult:
    console: str
    returncode: int | None  # None when qemu was killed at the timeout
    seconds: float

    def markers(self) -> list[str]:
        """Values the test /init printed after MARKER_PREFIX."""
        found = []
        for line in self.console.splitlines():
            line = line.strip()
            if line.startswith(MARKER_PREFIX + " "):
                found.append(line[len(MARKER_PREFIX) + 1 :].strip())
        return found

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


# fmt: off
QEMU_COMMON = [
    "-accel", "tcg",  # software emulation: works on CI machines without /dev/kvm
    "-m", "256",
    "-smp", "1",
    "-nographic",
    "-nodefaults",
    "-no-user-config",
    "-no-reboot",  # the init powers off; a kernel panic (panic=-1) reboots, which ends qemu too
    "-monitor", "none",
]
# fmt: on
QEMU_SYSTEMS = {
    "amd64": ["qemu-system-x86_64"],
    # The machine and CPU an arm64 node's firmware would hand the kernel to; ttyAMA0 is its serial port.
    "arm64": ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57"],
}


def _run_qemu(arguments: list[str], timeout: float, workdir: str, architecture: str = "amd64") -> BootResult:
    console_path = os.path.join(workdir, "console.log")
    command = [*QEMU_SYSTEMS[architecture], *QEMU_COMMON, "-serial", "file:%s" % console_path, *arguments]
    if shutil.which(command[0]) is None:
        raise BootSetupError("%s is missing; install the qemu-system package for %s" % (command[0], architecture))
    started = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _errors = proc.communicate(timeout=timeout)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _errors = proc.communicate()
        returncode = None
    seconds = time.monotonic() - started
    console = ""
    if os.path.exists(console_path):
        with open(console_path, "rb") as stream:
            console = stream.read().decode(errors="replace")
    if output:
        console += "\n[qemu] " + output.decode(errors="replace")
    return BootResult(console=console, returncode=returncode, seconds=seconds)


def boot_kernel(
    kernel: str,
    initramfs: str,
    command_line: str,
    architecture: str = "arm64",
    timeout: float = 600,
    workdir: str | None = None,
) -> BootResult:
    """Boot `kernel` with `initramfs` and `command_line` directly (qemu -kernel/-initrd/-append)."""
    arguments = ["-kernel", kernel, "-initrd", initramfs, "-append", command_line]
    with tempfile.TemporaryDirectory() as scratch:
        return _run_qemu(arguments, timeout, workdir or scratch, architecture)


def boot_ipxe(script_url: str, timeout: float = 600, workdir: str | None = None) -> BootResult:
    """Network-boot with qemu's iPXE firmware, which DHCPs on the user network and chains `script_url`.

    The guest reaches the host's loopback as GUEST_HOST_ADDRESS, so `script_url` and the URLs in the
    script must use that address and a port the host serves on 127.0.0.1.
    """
    # fmt: off
    network = [
        "-netdev", "user,id=net0,restrict=off,bootfile=%s" % script_url,
        "-device", "virtio-net-pci,netdev=net0",
        "-boot", "n",
    ]
    # fmt: on
    with tempfile.TemporaryDirectory() as scratch:
        return _run_qemu(network, timeout, workdir or scratch)


@dataclass
class IpxeScript:
    kernel_url: str
    command_line: str
    initrd_urls: list[str]


def parse_ipxe(text: str) -> IpxeScript:
    """The kernel URL, its command line and the initrd URLs of an iPXE script (as iPXE reads them)."""
    if not text.startswith("#!ipxe"):
        raise AssertionError("not an iPXE script (first line must be #!ipxe): %r" % text[:40])
    kernel_url, command_line, initrds = None, "", []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] in ("kernel", "chain", "imgexec"):
            arguments = [word for word in words[1:] if not word.startswith("--")]
            kernel_url = arguments[0]
            command_line = " ".join(arguments[1:])
        elif words[0] in ("initrd", "module", "imgfetch"):
            initrds.append([word for word in words[1:] if not word.startswith("--")][-1])
    if kernel_url is None:
        raise AssertionError("iPXE script has no kernel line:\n%s" % text)
    return IpxeScript(kernel_url=kernel_url, command_line=command_line, initrd_urls=initrds)
