"""The bounded tar header reader: numbers, pax records, checksums and what it refuses."""

from __future__ import annotations

import io
import tarfile

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _tar as tar


def archive(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as out:
        for info, data in members:
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    raw.seek(0)
    return raw


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"00000001750\0", 1000),
        (b"     1750 \0\0", 1000),
        (b"\0" * 12, 0),
        (b"\x80" + (1 << 40).to_bytes(11, "big"), 1 << 40),
    ],
)
def test_numbers_in_octal_and_base_256(field, value):
    assert tar.parse_number(field) == value


@pytest.mark.parametrize("field", [b"12x4\0", b"\xff" * 12])
def test_bad_numbers_are_refused(field):
    with pytest.raises(tar.TarError):
        tar.parse_number(field)


def test_pax_records_are_parsed_by_their_lengths():
    assert tar.parse_pax(b"21 path=a b=c/rootfs\n13 size=1000\n") == {"path": "a b=c/rootfs", "size": "1000"}


@pytest.mark.parametrize("data", [b"99 path=x\n", b"x path=y\n", b"10 pathx\n", b"6 a=b\nz"])
def test_malformed_pax_records_are_refused(data):
    with pytest.raises(tar.TarError):
        tar.parse_pax(data)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_regular_member_in_every_format(fmt):
    stream = archive((tarfile.TarInfo("rootfs"), b"abc"), fmt=fmt)
    member = tar.read_member(stream)
    assert (member.name, member.size) == ("rootfs", 3)
    assert stream.read(3) == b"abc"


def test_long_names_from_pax_and_gnu_headers():
    name = "d/" * 120 + "rootfs"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        assert tar.read_member(archive((tarfile.TarInfo(name), b"x"), fmt=fmt)).name == name


def test_pax_size_overrides_the_header():
    info = tarfile.TarInfo("rootfs")
    info.pax_headers = {"size": "3"}
    assert tar.read_member(archive((info, b"abc"))).size == 3


def test_checksum_mismatch_is_refused():
    raw = bytearray(archive((tarfile.TarInfo("rootfs"), b"abc"), fmt=tarfile.USTAR_FORMAT).getvalue())
    raw[0] = ord("R")
    with pytest.raises(tar.TarError, match="fails its checksum"):
        tar.read_member(io.BytesIO(bytes(raw)))


def test_second_member_and_trailing_zeros():
    stream = archive((tarfile.TarInfo("rootfs"), b"abc"), (tarfile.TarInfo("other"), b"x"), fmt=tarfile.USTAR_FORMAT)
    tar.read_member(stream)
    stream.read(512)
    with pytest.raises(tar.TarError, match="more than one file"):
        tar.check_end(stream)
    single = archive((tarfile.TarInfo("rootfs"), b"abc"), fmt=tarfile.USTAR_FORMAT)
    tar.read_member(single)
    single.read(512)
    tar.check_end(single)
