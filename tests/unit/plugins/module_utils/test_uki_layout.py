"""The UKI's PE layout, on a small synthetic stub: where each section lands, what the headers say, same bytes twice."""

from __future__ import annotations

import gzip
import io
import struct

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _uki

PE_OFFSET = 0x40
OPTIONAL_SIZE = 240


def make_stub(
    machine: int = 0x8664,
    sections: tuple[tuple[str, int, int], ...] = ((".text", 0x1000, 0x300), (".sbat", 0x3000, 0x80)),
    section_alignment: int = 0x200,
    size_of_headers: int = 0x400,
    signature: tuple[int, int] = (0, 0),
    symbols: bytes = b"",
) -> bytes:
    """A PE32+ image: DOS header, COFF header, optional header, section table, section bytes, symbol table."""
    file_alignment = 0x200
    raw = []
    offset = size_of_headers
    for name, address, size in sections:
        raw.append((name, address, size, offset, _uki.align(size, file_alignment)))
        offset += _uki.align(size, file_alignment)
    out = bytearray(offset)
    out[0:2] = b"MZ"
    struct.pack_into("<I", out, 0x3C, PE_OFFSET)
    out[PE_OFFSET : PE_OFFSET + 4] = b"PE\0\0"
    coff = PE_OFFSET + 4
    struct.pack_into(
        "<HHIIIHH", out, coff, machine, len(sections), 0, offset if symbols else 0, 3, OPTIONAL_SIZE, 0x206
    )
    optional = coff + 20
    struct.pack_into("<H", out, optional, 0x20B)
    struct.pack_into("<I", out, optional + 8, 0x1000)  # SizeOfInitializedData
    struct.pack_into("<II", out, optional + 32, section_alignment, file_alignment)
    image_end = max(address + size for _name, address, size, _o, _r in raw)
    struct.pack_into("<II", out, optional + 56, _uki.align(image_end, section_alignment), size_of_headers)
    struct.pack_into("<I", out, optional + 64, 0xABCD)  # CheckSum
    struct.pack_into("<II", out, optional + 144, *signature)
    table = optional + OPTIONAL_SIZE
    for number, (name, address, size, raw_offset, raw_size) in enumerate(raw):
        struct.pack_into(
            "<8sIIIIIIHHI",
            out,
            table + 40 * number,
            name.encode(),
            size,
            address,
            raw_size,
            raw_offset,
            0,
            0,
            0,
            0,
            0x60000020,
        )
        out[raw_offset : raw_offset + size] = bytes([number + 1]) * size
    return bytes(out) + symbols


@pytest.fixture
def stub_file(tmp_path):
    path = tmp_path / "stub.efi"
    path.write_bytes(make_stub(symbols=b"SYMBOLS" * 10))
    return str(path)


def payloads(tmp_path, kernel_size=0x12345, initrd_size=0x5432):
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"K" * kernel_size)
    initrd.write_bytes(b"I" * initrd_size)
    return [
        _uki.Payload(".osrel", data=b"ID=test\n"),
        _uki.Payload(".cmdline", data=b"console=ttyS0"),
        _uki.Payload(".uname", data=b"6.1.0-test"),
        _uki.Payload(".initrd", path=str(initrd)),
        _uki.Payload(".linux", path=str(kernel)),
    ]


def written(stub_file, parts, architecture="amd64"):
    out = io.BytesIO()
    _uki.write_uki(stub_file, architecture, parts, out)
    return out.getvalue()


def test_sections_follow_the_stub_aligned_and_never_overlap(stub_file, tmp_path):
    parts = payloads(tmp_path)
    data = written(stub_file, parts)
    headers = _uki.parse_stub(data)
    names = [section.name for section in headers.sections]
    assert names == [".text", ".sbat", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    added = headers.sections[2:]
    # The stub's .sbat ends at 0x3080: the first section starts at the next page, each next one after the one before.
    assert added[0].virtual_address == 0x4000
    for before, after in zip(headers.sections, headers.sections[1:]):
        assert after.virtual_address >= before.virtual_address + before.virtual_size
    for section, part in zip(added, parts):
        assert section.virtual_address % headers.section_alignment == 0
        assert section.virtual_address % _uki.PAGE_SIZE == 0
        assert section.raw_pointer % headers.file_alignment == 0
        assert section.virtual_size == part.size
        expected = part.data if part.data is not None else open(str(part.path), "rb").read()
        assert data[section.raw_pointer : section.raw_pointer + section.virtual_size] == expected
    linux = added[-1]
    (size_of_image,) = struct.unpack_from("<I", data, headers.optional_offset + 56)
    assert size_of_image == _uki.align(linux.virtual_address + linux.virtual_size, headers.section_alignment)
    assert len(data) == linux.raw_pointer + linux.raw_size


def test_a_large_kernel_moves_nothing_into_the_initrd(stub_file, tmp_path):
    """Addresses come from sizes: a 27 MB kernel after a 40 MB initramfs, as with Debian's arm64 kernel."""
    planned = _uki.plan_sections(
        _uki.parse_stub(make_stub()), 0x800, [(".initrd", 40_000_001), (".linux", 27_000_003), (".x", 1)]
    )
    initrd, linux, last = planned
    assert linux.virtual_address == _uki.align(initrd.virtual_address + 40_000_001, _uki.PAGE_SIZE)
    assert last.virtual_address == _uki.align(linux.virtual_address + 27_000_003, _uki.PAGE_SIZE)
    assert linux.raw_pointer == initrd.raw_pointer + initrd.raw_size


def test_headers_updated_stub_bytes_kept_symbols_dropped(stub_file, tmp_path):
    stub = open(stub_file, "rb").read()
    data = written(stub_file, payloads(tmp_path))
    headers = _uki.parse_stub(data)
    original = _uki.parse_stub(stub)
    _machine, count, _stamp, symbols, nsymbols = struct.unpack_from("<HHIII", data, headers.coff_offset)
    assert (count, symbols, nsymbols) == (7, 0, 0)
    assert b"SYMBOLS" not in data
    (checksum,) = struct.unpack_from("<I", data, headers.optional_offset + 64)
    assert checksum == 0
    (initialized,) = struct.unpack_from("<I", data, headers.optional_offset + 8)
    assert initialized == 0x1000 + sum(section.raw_size for section in headers.sections[2:])
    # Every byte of the stub's sections is where it was.
    for section in original.sections:
        start, end = section.raw_pointer, section.raw_pointer + section.raw_size
        assert data[start:end] == stub[start:end]
    # Outside the patched header fields, the headers are the stub's own.
    assert data[: headers.coff_offset] == stub[: headers.coff_offset]


def test_same_inputs_same_bytes(stub_file, tmp_path):
    assert written(stub_file, payloads(tmp_path)) == written(stub_file, payloads(tmp_path))


def test_no_room_for_the_section_headers(tmp_path):
    # Seven sections already: the table ends 0x40 + 24 + 240 + 280 = 0x258, and 0x2a0 leaves room for one more.
    crowded = tuple((".s%d" % n, 0x1000 * (n + 1), 0x10) for n in range(7))
    path = tmp_path / "stub.efi"
    path.write_bytes(make_stub(sections=crowded, size_of_headers=0x2A0))
    with pytest.raises(_uki.UkiError, match="room for 1 more section headers, not 5"):
        written(str(path), payloads(tmp_path))


@pytest.mark.parametrize(
    ("stub", "architecture", "message"),
    [
        (make_stub(machine=0xAA64), "amd64", "is for machine 0xaa64, not amd64"),
        (make_stub(signature=(0x2000, 0x300)), "amd64", "already signed"),
        (make_stub(sections=((".text", 0x1000, 0x10), (".linux", 0x2000, 0x10))), "amd64", "already has a .linux"),
        (b"MZ" + b"\0" * 100, "amd64", "truncated|no PE signature"),
        (b"\x7fELF" + b"\0" * 100, "amd64", "not a PE/COFF executable"),
    ],
)
def test_refused_stubs(tmp_path, stub, architecture, message):
    path = tmp_path / "stub.efi"
    path.write_bytes(stub)
    with pytest.raises(_uki.UkiError, match=message):
        written(str(path), payloads(tmp_path), architecture)


def test_a_missing_stub_names_the_debian_package(tmp_path):
    with pytest.raises(_uki.UkiError) as caught:
        written(str(tmp_path / "linuxaa64.efi.stub"), payloads(tmp_path), "arm64")
    assert "systemd-boot-efi" in str(caught.value)
    assert "\n" not in str(caught.value)


def bzimage(release: bytes) -> bytes:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x600 - 0x200)
    image[0x600 : 0x600 + len(release) + 1] = release + b"\0"
    return bytes(image)


def test_kernel_release_of_a_bzimage(tmp_path):
    path = tmp_path / "vmlinuz"
    path.write_bytes(bzimage(b"6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP"))
    assert _uki.kernel_release(str(path)) == "6.1.0-57-cloud-amd64"


def test_kernel_release_from_the_banner_plain_gzip_and_across_chunks(tmp_path):
    banner = b"Linux version 6.1.0-57-cloud-arm64 (debian-kernel@lists.debian.org) gcc"
    plain, packed, straddling = tmp_path / "Image", tmp_path / "Image.gz", tmp_path / "Image.big"
    plain.write_bytes(b"\0" * 5000 + banner)
    packed.write_bytes(gzip.compress(b"\0" * 5000 + banner, mtime=0))
    # The banner starts just before the first 4 MiB chunk ends.
    straddling.write_bytes(b"\0" * (4 * 1024 * 1024 - 20) + banner)
    for path in (plain, packed, straddling):
        assert _uki.kernel_release(str(path)) == "6.1.0-57-cloud-arm64", path
    nothing = tmp_path / "nothing"
    nothing.write_bytes(b"\0" * 100)
    assert _uki.kernel_release(str(nothing)) is None


def test_generated_os_release():
    text = _uki.os_release("Boot Proof", "1.0").decode()
    assert text.splitlines() == ['NAME="Boot Proof"', "ID=boot-proof", "VERSION_ID=1.0", 'PRETTY_NAME="Boot Proof 1.0"']
