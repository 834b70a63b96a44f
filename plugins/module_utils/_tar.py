# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The one regular file of a single-file tar stream, read without trusting the archive.

A layer's descriptor bounds only the compressed blob. Python's `tarfile`
reads pax headers whole into memory and expands GNU sparse members into
fully allocated files, so a tiny hostile layer can exhaust memory or disk.
This reader parses the 512-byte headers itself: it bounds the header bytes
before the file's data, refuses sparse members, links, devices, directories
and unsafe names, and hands back the member's declared size before any data
is read, so a caller can refuse it before writing anything.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError

BLOCK = 512
# pax and GNU long-name headers of a real single-file layer are a few hundred bytes.
MAX_HEADER_BYTES = 1024 * 1024
# Zero blocks after the file: tar pads to its record size (10 KiB by default); past this we stop reading.
MAX_TRAILER_BYTES = 1024 * 1024
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_META = (b"x", b"g", b"L", b"K")
_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"S": "a GNU sparse file",
}


class TarError(ImageError):
    """The archive is malformed or holds something this collection refuses; the message is one line."""


@dataclass
class Member:
    name: str
    size: int


class Reader(t.Protocol):
    def read(self, size: int) -> bytes: ...


def read_exact(stream: Reader, size: int, what: str) -> bytes:
    """Exactly `size` bytes, or TarError when the stream ends first."""
    parts = []
    missing = size
    while missing > 0:
        data = stream.read(min(missing, 1024 * 1024))
        if not data:
            raise TarError("the tar stream ends inside %s" % what)
        parts.append(data)
        missing -= len(data)
    return b"".join(parts)


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def parse_number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (high bit of the first byte set)."""
    if field and field[0] & 0x80:
        if field[0] & 0x40:
            raise TarError("a tar header holds a negative number")
        return int.from_bytes(bytes([field[0] & 0x3F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exc:
        raise TarError("a tar header holds %r where a number belongs" % text.decode("ascii", "replace")) from exc


def _check_checksum(block: bytes) -> None:
    stored = parse_number(block[148:156])
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    signed = sum(byte - 256 if byte > 127 else byte for byte in blanked)
    if stored not in (unsigned, signed):
        raise TarError("a tar header fails its checksum; the layer is not a tar archive")


def parse_pax(data: bytes) -> dict[str, str]:
    """pax extended header records, `<length> <key>=<value>\\n`, each length counting the whole record."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data):
        if data[position:].strip(b"\0") == b"":
            break
        space = data.find(b" ", position)
        digits = data[position:space] if space > position else b""
        if not digits.isdigit():
            raise TarError("a pax header record has no length")
        end = position + int(digits)
        if end > len(data) or end <= space or data[end - 1 : end] != b"\n" or b"=" not in data[space + 1 : end]:
            raise TarError("a pax header record is malformed")
        key, value = data[space + 1 : end - 1].split(b"=", 1)
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position = end
    return records


def _ustar_name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _check_name(name: str) -> None:
    if not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
        raise TarError("the tar+gzip layer holds %r, a name that points outside its directory; refusing it" % name)


def _pax_size(records: t.Mapping[str, str], size: int) -> int:
    if "size" not in records:
        return size
    if not records["size"].isdigit():
        raise TarError("a pax header gives the size %r, which is not a number" % records["size"])
    return int(records["size"])


def read_member(stream: Reader) -> Member:
    """Parse the headers up to the first member's data; the stream is left at that data.

    Refuses anything but a regular file, sparse members in either the GNU or
    the pax form, and more than MAX_HEADER_BYTES of headers.
    """
    header_bytes = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = stream.read(BLOCK)
        if len(block) < BLOCK and block:
            block += read_exact(stream, BLOCK - len(block), "a header")
        if not block or block == _ZERO_BLOCK:
            raise TarError("the tar+gzip layer holds no file")
        _check_checksum(block)
        typeflag = block[156:157]
        size = parse_number(block[124:136])
        header_bytes += BLOCK
        if typeflag in _META:
            header_bytes += padded(size)
            if header_bytes > MAX_HEADER_BYTES:
                raise TarError(
                    "the tar+gzip layer has more than %d bytes of headers before its file; refusing it"
                    % MAX_HEADER_BYTES
                )
            data = read_exact(stream, padded(size), "a header")[:size]
            if typeflag == b"x":
                pax.update(parse_pax(data))
            elif typeflag == b"g":
                pax.update({key: value for key, value in parse_pax(data).items() if key.startswith("GNU.sparse.")})
            elif typeflag == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        name = pax.get("path") or long_name or _ustar_name(block)
        if typeflag == b"S" or any(key.startswith("GNU.sparse.") for key in pax):
            raise TarError("the tar+gzip layer holds %s as a sparse file; sparse members are refused" % name)
        if typeflag not in _REGULAR:
            kind = _KINDS.get(typeflag, "a member of tar type %r" % typeflag.decode("ascii", "replace"))
            raise TarError("the tar+gzip layer holds %s, %s, not a regular file" % (name, kind))
        _check_name(name)
        return Member(name, _pax_size(pax, size))


def check_end(stream: Reader) -> None:
    """After the member's padded data only zero blocks may follow (a second member is refused)."""
    seen = 0
    while seen < MAX_TRAILER_BYTES:
        block = stream.read(BLOCK)
        if not block:
            return
        if block.strip(b"\0"):
            raise TarError("the tar+gzip layer holds more than one file; expected exactly one")
        seen += len(block)
