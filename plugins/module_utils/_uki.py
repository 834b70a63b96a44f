# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Unified kernel images: systemd's EFI stub plus the sections it boots from, and their Secure Boot signature.

A UKI is one PE/COFF EFI executable. The stub (systemd-boot-efi's
`linux<arch>.efi.stub`) is copied byte for byte; after its own sections come
`.osrel`, `.cmdline`, `.uname`, `.initrd` and `.linux` (the kernel last, as
ukify places it), each at the next virtual address aligned to the stub's
SectionAlignment (and to at least a 4 KiB page, which the firmware maps
sections by) and at the next file offset aligned to its FileAlignment. Only
the headers change: five more section headers in the room the stub leaves
before its first section, NumberOfSections, SizeOfImage and
SizeOfInitializedData; the stub's COFF symbol table is dropped; CheckSum is set to 0 (not computed, which the PE
format allows and UEFI ignores). No timestamp is written: the same inputs
give the same bytes.

The header work is a few dozen lines of struct packing, so it is done here
rather than with objcopy (which needs a binutils build per target
architecture) or pefile (one more dependency, and it holds the whole file,
kernel and initramfs included, in memory). The payloads are streamed.

Signing is sbsigntool's `sbsign` (Authenticode in the PE certificate table),
after every section is in place, since any later byte change breaks the
signature; `sbverify --cert` checks one.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import struct
import subprocess
import tempfile
import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError, one_line
from ansible_collections.ironcore.image.plugins.module_utils._io import iter_chunks
from ansible_collections.ironcore.image.plugins.module_utils._model import UKI_SIGNER_ANNOTATION

STUB_DIR = "/usr/lib/systemd/boot/efi"
STUB_NAMES = {"amd64": "linuxx64.efi.stub", "arm64": "linuxaa64.efi.stub"}
PE_MACHINES = {"amd64": 0x8664, "arm64": 0xAA64}
# ukify's order: the small sections first, the kernel last.
SECTION_ORDER = (".osrel", ".cmdline", ".uname", ".initrd", ".linux")
PAGE_SIZE = 4096
SECTION_HEADER_SIZE = 40
# IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ: data the stub reads, never runs.
DATA_SECTION_FLAGS = 0x40000040
SECURITY_DIRECTORY = 4
SIGNER_ANNOTATION = UKI_SIGNER_ANNOTATION
# An os-release file is a few hundred bytes; anything far larger is not one.
MAX_OS_RELEASE = 64 * 1024
_KERNEL_VERSION_RE = re.compile(rb"Linux version (\S+)")
_SCAN_OVERLAP = 256


class UkiError(ImageError):
    """A UKI that cannot be assembled, signed or checked; one line."""


@dataclass(frozen=True)
class PeSection:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_pointer: int

    @property
    def end(self) -> int:
        return self.virtual_address + max(self.virtual_size, self.raw_size)


@dataclass(frozen=True)
class StubHeaders:
    """What the assembly needs to know of the stub's PE headers, and where each field is."""

    machine: int
    coff_offset: int
    optional_offset: int
    pe32_plus: bool
    section_alignment: int
    file_alignment: int
    size_of_headers: int
    section_table: int
    sections: tuple[PeSection, ...]

    @property
    def table_end(self) -> int:
        return self.section_table + len(self.sections) * SECTION_HEADER_SIZE

    @property
    def header_room(self) -> int:
        """Section headers that fit between the table's end and the first section's bytes."""
        limit = min([self.size_of_headers] + [s.raw_pointer for s in self.sections if s.raw_size])
        return (limit - self.table_end) // SECTION_HEADER_SIZE

    @property
    def security_directory_offset(self) -> int:
        return self.optional_offset + (144 if self.pe32_plus else 128)


@dataclass(frozen=True)
class NewSection:
    """A section to add: its name, where its bytes come from, and where they go."""

    name: str
    size: int
    virtual_address: int
    raw_pointer: int
    raw_size: int

    def header(self) -> bytes:
        return struct.pack(
            "<8sIIIIIIHHI",
            self.name.encode("ascii"),
            self.size,
            self.virtual_address,
            self.raw_size,
            self.raw_pointer,
            0,
            0,
            0,
            0,
            DATA_SECTION_FLAGS,
        )


def align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def parse_stub(data: bytes, where: str = "EFI stub") -> StubHeaders:
    """The stub's headers, from its first SizeOfHeaders bytes (at least); refuses what is not a PE image."""
    try:
        if data[:2] != b"MZ":
            raise UkiError("%s is not a PE/COFF executable (no MZ header)" % where)
        (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
        if data[pe_offset : pe_offset + 4] != b"PE\0\0":
            raise UkiError("%s is not a PE/COFF executable (no PE signature)" % where)
        coff = pe_offset + 4
        machine, count, _stamp, _symbols, _nsymbols, optional_size, _flags = struct.unpack_from("<HHIIIHH", data, coff)
        optional = coff + 20
        (magic,) = struct.unpack_from("<H", data, optional)
        if magic not in (0x10B, 0x20B):
            raise UkiError("%s has an unknown optional header (magic %#x)" % (where, magic))
        section_alignment, file_alignment = struct.unpack_from("<II", data, optional + 32)
        (size_of_headers,) = struct.unpack_from("<I", data, optional + 60)
        table = optional + optional_size
        sections = []
        for number in range(count):
            name, vsize, vaddr, raw_size, raw_pointer = struct.unpack_from("<8sIIII", data, table + number * 40)
            sections.append(
                PeSection(name.rstrip(b"\0").decode("ascii", "replace"), vsize, vaddr, raw_size, raw_pointer)
            )
    except struct.error as exc:
        raise UkiError("%s is truncated: its PE headers end early" % where) from exc
    if not section_alignment or not file_alignment:
        raise UkiError("%s has a zero section or file alignment" % where)
    return StubHeaders(
        machine,
        coff,
        optional,
        magic == 0x20B,
        section_alignment,
        file_alignment,
        size_of_headers,
        table,
        tuple(sections),
    )


def plan_sections(stub: StubHeaders, stub_size: int, sizes: t.Sequence[tuple[str, int]]) -> list[NewSection]:
    """Where each added section goes: after the stub's sections in memory and after its bytes in the file."""
    taken = [name for name, _size in sizes if any(section.name == name for section in stub.sections)]
    if taken:
        raise UkiError("the EFI stub already has a %s section: give the bare stub, not a UKI" % taken[0])
    if stub.header_room < len(sizes):
        raise UkiError(
            "the EFI stub has room for %d more section headers, not %d: give systemd-boot-efi's stub"
            % (stub.header_room, len(sizes))
        )
    memory_alignment = max(stub.section_alignment, PAGE_SIZE)
    address = align(max(section.end for section in stub.sections), memory_alignment)
    offset = align(stub_size, stub.file_alignment)
    planned = []
    for name, size in sizes:
        raw_size = align(size, stub.file_alignment)
        planned.append(NewSection(name, size, address, offset, raw_size))
        address = align(address + size, memory_alignment)
        offset += raw_size
    return planned


def patched_headers(stub: StubHeaders, headers: bytes, added: t.Sequence[NewSection]) -> bytes:
    """The stub's header bytes with the added sections in its table and its sizes updated."""
    out = bytearray(headers)
    struct.pack_into("<H", out, stub.coff_offset + 2, len(stub.sections) + len(added))
    # PointerToSymbolTable, NumberOfSymbols: the symbol table is not copied.
    struct.pack_into("<II", out, stub.coff_offset + 8, 0, 0)
    (initialized,) = struct.unpack_from("<I", out, stub.optional_offset + 8)
    struct.pack_into("<I", out, stub.optional_offset + 8, initialized + sum(s.raw_size for s in added))
    image_end = max([s.end for s in stub.sections] + [s.virtual_address + s.size for s in added])
    struct.pack_into("<I", out, stub.optional_offset + 56, align(image_end, stub.section_alignment))
    struct.pack_into("<I", out, stub.optional_offset + 64, 0)
    position = stub.table_end
    for section in added:
        out[position : position + SECTION_HEADER_SIZE] = section.header()
        position += SECTION_HEADER_SIZE
    return bytes(out)


@dataclass(frozen=True)
class Payload:
    """A section's bytes: a file, streamed, or a small text."""

    name: str
    path: str | None = None
    data: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.path.getsize(str(self.path))

    def write_to(self, out: t.BinaryIO) -> None:
        if self.data is not None:
            out.write(self.data)
            return
        with open(str(self.path), "rb") as stream:
            for chunk in iter_chunks(stream):
                out.write(chunk)


def read_stub(path: str, architecture: str) -> bytes:
    """The stub's bytes (tens of KiB), checked to be a bare PE image for `architecture`."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError as exc:
        raise UkiError(missing_stub_message(architecture, path)) from exc
    except OSError as exc:
        raise UkiError("cannot read EFI stub %s: %s" % (path, exc.strerror)) from exc
    headers = parse_stub(data, "EFI stub %s" % path)
    if headers.machine != PE_MACHINES[architecture]:
        raise UkiError(
            "EFI stub %s is for machine %#x, not %s; give the %s stub"
            % (path, headers.machine, architecture, architecture)
        )
    (_address, signature_size) = struct.unpack_from("<II", data, headers.security_directory_offset)
    if signature_size:
        raise UkiError("EFI stub %s is already signed; give the unsigned stub (the UKI is signed whole)" % path)
    return data


def missing_stub_message(architecture: str, path: str) -> str:
    return (
        "no EFI stub for %s at %s: install Debian's systemd-boot-efi (for %s: apt-get download systemd-boot-efi:%s,"
        " dpkg-deb -x, and give artifacts[].uki_stub)" % (architecture, path, architecture, architecture)
    )


def default_stub(architecture: str) -> str:
    return os.path.join(STUB_DIR, STUB_NAMES[architecture])


def write_uki(stub_path: str, architecture: str, payloads: t.Sequence[Payload], out: t.BinaryIO) -> None:
    """Write the UKI: the stub with patched headers, its own bytes, then each payload at its file offset."""
    stub_data = read_stub(stub_path, architecture)
    stub = parse_stub(stub_data)
    # The stub's COFF symbol table (and anything else after its last section) is left out: the loader
    # reads no symbols, and bytes between sections would sit outside every section Authenticode hashes.
    stub_end = max([stub.size_of_headers] + [s.raw_pointer + s.raw_size for s in stub.sections])
    added = plan_sections(stub, stub_end, [(payload.name, payload.size) for payload in payloads])
    out.write(patched_headers(stub, stub_data[: stub.size_of_headers], added))
    out.write(stub_data[stub.size_of_headers : stub_end])
    written = stub_end
    for section, payload in zip(added, payloads):
        out.write(b"\0" * (section.raw_pointer - written))
        payload.write_to(out)
        written = section.raw_pointer + section.size
    out.write(b"\0" * (added[-1].raw_pointer + added[-1].raw_size - written))


# ---- what goes into the small sections ----------------------------------------------------


def kernel_release(path: str) -> str | None:
    """The kernel's release (uname -r) as its image records it; None when it cannot be found.

    An x86 bzImage points at its version string from the setup header
    (offset 0x20E, relative to 0x200); other images (arm64's Image, plain or
    gzip'd) hold the "Linux version <release>" banner in their bytes.
    """
    with open(path, "rb") as stream:
        head = stream.read(0x210)
        if len(head) >= 0x210 and head[0x202:0x206] == b"HdrS":
            (pointer,) = struct.unpack_from("<H", head, 0x20E)
            if pointer:
                stream.seek(pointer + 0x200)
                text = stream.read(256).split(b"\0", 1)[0].split()
                return text[0].decode("ascii", "replace") if text else None
        stream.seek(0)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(stream) as plain:
                return _banner_release(t.cast(t.BinaryIO, plain))
        return _banner_release(stream)


def _banner_release(stream: t.BinaryIO) -> str | None:
    tail = b""
    for chunk in iter_chunks(stream):
        window = tail + chunk
        found = _KERNEL_VERSION_RE.search(window)
        # A match that reaches the window's end may go on in the next chunk.
        if found and found.end() < len(window):
            return found.group(1).decode("ascii", "replace")
        tail = window[-_SCAN_OVERLAP:]
    found = _KERNEL_VERSION_RE.search(tail)
    return found.group(1).decode("ascii", "replace") if found else None


def os_release(name: str, version: str) -> bytes:
    """A minimal os-release for an image that brings none: what boot menus show."""
    ident = re.sub(r"[^a-z0-9._-]", "-", name.lower()) or "ironcore"
    return ('NAME="%s"\nID=%s\nVERSION_ID=%s\nPRETTY_NAME="%s %s"\n' % (name, ident, version, name, version)).encode(
        "utf-8"
    )


# ---- Secure Boot signature ----------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise UkiError("%s not found: install Debian's sbsigntool on the build host" % name)
    return found


def cert_fingerprint(cert_path: str) -> str:
    """sha256:<hex> of the certificate's DER bytes, as `openssl x509 -fingerprint -sha256` shows it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        with open(cert_path, "rb") as stream:
            cert = x509.load_pem_x509_certificate(stream.read())
    except (OSError, ValueError) as exc:
        raise UkiError("uki_sign_cert %s is not a readable PEM certificate: %s" % (cert_path, one_line(exc))) from exc
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


@contextlib.contextmanager
def plain_key(key_path: str, passphrase: str | None) -> t.Iterator[str]:
    """A path sbsign can read the key from: the key itself, or its decrypted copy in a 0600 file removed after."""
    from cryptography.hazmat.primitives import serialization

    try:
        with open(key_path, "rb") as stream:
            pem = stream.read()
    except OSError as exc:
        raise UkiError("cannot read uki_sign_key %s: %s" % (key_path, exc.strerror)) from exc
    # "ENCRYPTED PRIVATE KEY" (PKCS#8) or "Proc-Type: 4,ENCRYPTED" (traditional): anything else sbsign reads as it is.
    if b"ENCRYPTED" not in pem:
        yield key_path
        return
    if passphrase is None:
        raise UkiError("uki_sign_key %s is passphrase-protected: give uki_sign_key_passphrase" % key_path)
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase.encode("utf-8"))
    except (ValueError, TypeError):
        # Never the exception's text: it is about the key's bytes.
        raise UkiError(
            "uki_sign_key_passphrase does not open uki_sign_key %s (or it is no PEM key)" % key_path
        ) from None
    fd, path = tempfile.mkstemp(prefix=".ironcore-uki-key-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        yield path
    finally:
        os.unlink(path)


def _run(command: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise UkiError("%s failed to start: %s" % (what, exc.strerror)) from exc


def sign(unsigned: str, signed: str, key_path: str, cert_path: str, passphrase: str | None) -> None:
    """Authenticode-sign `unsigned` into `signed` with sbsign."""
    sbsign = _tool("sbsign")
    with plain_key(key_path, passphrase) as key:
        proc = _run([sbsign, "--key", key, "--cert", cert_path, "--output", signed, unsigned], "sbsign")
    if proc.returncode != 0:
        raise UkiError("sbsign could not sign the UKI: %s" % one_line(proc.stderr or proc.stdout))


def verify(path: str, cert_path: str) -> str | None:
    """None when sbverify accepts `path` as signed by the certificate, else what it said."""
    proc = _run([_tool("sbverify"), "--cert", cert_path, path], "sbverify")
    if proc.returncode == 0:
        return None
    return one_line(proc.stderr or proc.stdout) or "sbverify exited with %d" % proc.returncode


@dataclass(frozen=True)
class SigningKey:
    key: str
    cert: str
    passphrase: str | None


def assemble(
    out_path: str,
    architecture: str,
    stub_path: str,
    kernel: str,
    initramfs: str,
    cmdline: str | None,
    osrel: bytes,
    release: str,
) -> None:
    """Write the (unsigned) UKI to `out_path`, a new file."""
    payloads = [
        Payload(".osrel", data=osrel),
        Payload(".cmdline", data=(cmdline or "").encode("utf-8")),
        Payload(".uname", data=release.encode("ascii")),
        Payload(".initrd", path=initramfs),
        Payload(".linux", path=kernel),
    ]
    # No command line, no .cmdline: the stub then takes the one its loader passes.
    payloads = [payload for payload in payloads if payload.size]
    with open(out_path, "xb") as out:
        write_uki(stub_path, architecture, payloads, out)
