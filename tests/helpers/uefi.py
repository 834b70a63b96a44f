"""Boot qemu in UEFI firmware (Debian's OVMF), with Secure Boot on or off, from a FAT ESP made of a directory.

Secure Boot needs OVMF_CODE_4M.secboot.fd on a q35 machine with SMM; every boot is emulated (TCG). Each boot gets its
own copy of the variable store (the firmware writes to it). Debian's OVMF_VARS_4M.snakeoil.fd has the
public snakeoil test certificate (package ovmf, /usr/share/ovmf/PkKek-1-snakeoil.pem) enrolled as PK, KEK
and db: anything signed with its key is trusted, anything else refused.

The network is qemu's user network: the guest reaches the host's 127.0.0.1 as 10.0.2.2, and `bootfile`
(DHCP's file name) hands iPXE the URL of its script. Debian's ipxe.efi (2019) fetches no autoexec.ipxe, and
loaded from qemu's TFTP it would DHCP the same file name and load itself again; loaded from the ESP as
EFI/BOOT/BOOTX64.EFI it takes the URL and chains the script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from helpers import boot

OVMF_DIR = "/usr/share/OVMF"
AAVMF_DIR = "/usr/share/AAVMF"
# Firmware per architecture and Secure Boot: (directory, code, variable store template, machine arguments).
FIRMWARE = {
    ("amd64", True): (
        OVMF_DIR,
        "OVMF_CODE_4M.secboot.fd",
        "OVMF_VARS_4M.snakeoil.fd",
        ["qemu-system-x86_64", "-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"],
    ),
    ("amd64", False): (OVMF_DIR, "OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", ["qemu-system-x86_64", "-machine", "q35"]),
    ("arm64", True): (
        AAVMF_DIR,
        "AAVMF_CODE.snakeoil.fd",
        "AAVMF_VARS.snakeoil.fd",
        ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a57"],
    ),
    ("arm64", False): (
        AAVMF_DIR,
        "AAVMF_CODE.fd",
        "AAVMF_VARS.fd",
        ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a57"],
    ),
}
REMOVABLE_MEDIA_PATH = {"amd64": "BOOTX64.EFI", "arm64": "BOOTAA64.EFI"}
SNAKEOIL_KEY = "/usr/share/ovmf/PkKek-1-snakeoil.key"
SNAKEOIL_CERT = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
SNAKEOIL_PASSPHRASE = "snakeoil"
# The build role's variables that assemble every UKI (build_uki: auto) and sign it with the snakeoil test key.
SNAKEOIL_BUILD_VARS = {
    "build_uki": "auto",
    "build_uki_sign_key": SNAKEOIL_KEY,
    "build_uki_sign_cert": SNAKEOIL_CERT,
    "build_uki_sign_key_passphrase": SNAKEOIL_PASSPHRASE,
    "build_uki_require_signature": True,
}
IPXE_EFI = "/usr/lib/ipxe/ipxe.efi"
CMDLINE_PREFIX = boot.CMDLINE_PREFIX
# What OVMF's boot manager prints when Secure Boot refuses an image.
REFUSALS = ("Access Denied", "Security Violation")


@dataclass
class UefiBoot:
    console: str
    seconds: float
    accelerator: str

    def markers(self) -> list[str]:
        return boot.BootResult(console=self.console, returncode=None, seconds=self.seconds).markers()

    def command_line(self) -> str | None:
        for line in self.console.splitlines():
            if line.strip().startswith(CMDLINE_PREFIX + " "):
                return line.strip()[len(CMDLINE_PREFIX) + 1 :]
        return None

    def refused(self) -> bool:
        return any(word in self.console for word in REFUSALS)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def sign_snakeoil(source: str, target: str, workdir: str) -> str:
    """Sign an EFI binary with Debian's snakeoil test key (decrypted into a 0600 file of the test's own)."""
    key = os.path.join(workdir, "snakeoil-plain.key")
    if not os.path.exists(key):
        subprocess.run(
            ["openssl", "pkey", "-in", SNAKEOIL_KEY, "-passin", "pass:" + SNAKEOIL_PASSPHRASE, "-out", key],
            check=True,
            capture_output=True,
        )
        os.chmod(key, 0o600)
    subprocess.run(
        ["sbsign", "--key", key, "--cert", SNAKEOIL_CERT, "--output", target, source], check=True, capture_output=True
    )
    return target


def boot_uefi(
    workdir: str,
    efi_binary: str,
    secure_boot: bool,
    bootfile_url: str | None = None,
    timeout: float = 120,
    architecture: str = "amd64",
) -> UefiBoot:
    """Boot `efi_binary` as the ESP's EFI/BOOT/BOOT<arch>.EFI; stop at the init's command line line or a refusal."""
    os.makedirs(workdir, exist_ok=True)
    esp = os.path.join(workdir, "esp")
    os.makedirs(os.path.join(esp, "EFI", "BOOT"), exist_ok=True)
    shutil.copyfile(efi_binary, os.path.join(esp, "EFI", "BOOT", REMOVABLE_MEDIA_PATH[architecture]))
    variables = os.path.join(workdir, "vars.fd")
    directory, code, template, machine = FIRMWARE[(architecture, secure_boot)]
    shutil.copyfile(os.path.join(directory, template), variables)
    # TCG always: Secure Boot needs SMM, which KVM may not offer, and under nested KVM OVMF can stop at an
    # "emulation failure" in its first instructions.
    accelerator = "tcg"
    network = (
        ["-netdev", "user,id=net0,bootfile=%s" % bootfile_url, "-device", "virtio-net-pci,netdev=net0,romfile="]
        if bootfile_url
        else ["-net", "none"]
    )
    console_path = os.path.join(workdir, "console.log")
    # fmt: off
    command = [
        *machine, "-accel", accelerator, "-m", "256", "-smp", "1",
        "-nographic", "-nodefaults", "-no-user-config", "-no-reboot", "-monitor", "none",
        "-serial", "file:%s" % console_path,
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=%s" % os.path.join(directory, code),
        "-drive", "if=pflash,format=raw,unit=1,file=%s" % variables,
        "-drive", "file=fat:%s,format=raw,if=none,id=esp,readonly=on" % esp,
        "-device", "virtio-blk-pci,drive=esp,bootindex=0",
        *network,
    ]
    # fmt: on
    started = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    console = ""
    try:
        while time.monotonic() - started < timeout and proc.poll() is None:
            time.sleep(0.3)
            console = _read(console_path)
            # The init prints its command line after the marker; a refusal ends the firmware's boot attempt.
            if CMDLINE_PREFIX + " " in console or any(word in console for word in REFUSALS):
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        output, _errors = proc.communicate()
    console = _read(console_path)
    if output:
        console += "\n[qemu] " + output.decode(errors="replace")
    return UefiBoot(console=console, seconds=time.monotonic() - started, accelerator=accelerator)


def _read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, "rb") as stream:
        return stream.read().decode(errors="replace")


def with_byte_changed(source: str, target: str, offset: int) -> str:
    data = bytearray(open(source, "rb").read())
    data[offset] ^= 0xFF
    with open(target, "wb") as out:
        out.write(bytes(data))
    return target


def unsigned_copy(source: str, target: str) -> str:
    shutil.copyfile(source, target)
    # sbattach --remove strips the signature table in place.
    subprocess.run(["sbattach", "--remove", target], check=True, capture_output=True)
    return target


def sbverify(path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbverify", "--cert", SNAKEOIL_CERT, path], capture_output=True, text=True, check=False)


def section_range(path: str, name: str) -> tuple[int, int]:
    """File offset and size of a PE section (for changing a byte inside what the signature covers)."""
    from ansible_collections.ironcore.image.plugins.module_utils import _uki

    with open(path, "rb") as stream:
        headers = _uki.parse_stub(stream.read(64 * 1024))
    for section in headers.sections:
        if section.name == name:
            return section.raw_pointer, section.virtual_size
    raise KeyError(name)
