"""Hostile tar+gzip layers: decompression bombs, links, devices, second members, forged state records.

Each layer is crafted here byte for byte (raw tar headers where Python's
tarfile would not write the attack), stored in an OCI layout and, for one of
them, pushed to a real registry with skopeo. The fetch must fail in one line
with nothing left in dest but its own bookkeeping, its memory bounded.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import subprocess
import tarfile

import pytest
from helpers.ansible import peak_rss_wrapper
from helpers.images import skopeo_push, write_single_layer_image

from ansible_collections.ironcore.image.plugins.module_utils._io import file_identity

MODULE = "ironcore.image.ironcore_image_fetch"
NAME = "registry.example.com/os/hostile:1.0"
GIB = 1024**3

pytestmark = pytest.mark.integration


def header(name: bytes = b"rootfs", size: int = 0, typeflag: bytes = b"0", **fields: bytes) -> bytes:
    """One 512-byte tar header in GNU layout; `fields` maps "offset_<n>" to raw bytes placed at offset n."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:265] = b"ustar  \0"
    for key, value in fields.items():
        offset = int(key.split("_", 1)[1])
        block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def end_of_archive() -> bytes:
    return bytes(1024)


def regular(data: bytes, name: bytes = b"rootfs") -> bytes:
    return header(name, len(data)) + pad(data)


def gnu_sparse_bomb() -> bytes:
    """Old GNU sparse member: 512 stored bytes that tarfile writes out as a 2 GiB file."""
    sparse_map = b"%011o\0" % (2 * GIB - 512) + b"%011o\0" % 512
    member = header(b"rootfs", 512, b"S", offset_386=sparse_map, offset_483=b"%011o\0" % (2 * GIB))
    return gzip.compress(member + bytes(512) + end_of_archive(), mtime=0)


def pax_sparse_bomb() -> bytes:
    """pax sparse format 1.0, as GNU tar writes it: the GNU.sparse.* records make it sparse."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("GNUSparseFile.0/rootfs")
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": "rootfs",
            "GNU.sparse.realsize": str(2 * GIB),
        }
        body = b"1\n%d\n512\n" % (2 * GIB - 512)
        body = pad(body) + bytes(512)
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue(), mtime=0)


def base256_size_bomb() -> bytes:
    """A size field in GNU base-256 declaring 1 TiB, in a layer of a few dozen bytes."""
    size_field = b"\x80" + (1024**4).to_bytes(11, "big")
    return gzip.compress(header(b"rootfs", offset_124=size_field) + bytes(512), mtime=0)


def huge_pax_header_layer(path: str, header_size: int) -> bytes:
    """A pax header of `header_size` bytes (one comment record) before a tiny file; compresses to a few hundred KiB."""
    length = str(header_size).encode()
    filler = header_size - len(length) - len(b" comment=") - 1
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(header(b"././@PaxHeader", header_size, b"x"))
        out.write(length + b" comment=")
        chunk = b"A" * (1 << 20)
        while filler > 0:
            out.write(chunk[:filler])
            filler -= len(chunk)
        out.write(b"\n" + bytes(-header_size % 512))
        out.write(regular(b"tiny rootfs"))
        out.write(end_of_archive())
    with open(path, "rb") as stream:
        return stream.read()


def link_layer(typeflag: bytes) -> bytes:
    return gzip.compress(header(b"rootfs", 0, typeflag, offset_157=b"/etc/shadow") + end_of_archive(), mtime=0)


def fetch_args(layout: str, dest, **extra) -> dict:
    return dict(
        {"layout": layout, "name": NAME, "platform": "virtualization", "architecture": "amd64", "dest": str(dest)},
        **extra,
    )


def bookkeeping_files(dest) -> list[str]:
    """Every file the fetch keeps for itself in dest (named .ironcore*, wherever it keeps them)."""
    found = []
    for directory, _subdirs, names in os.walk(dest):
        found += [os.path.join(directory, name) for name in names]
    return found


def assert_refused(result: dict, message: str, dest) -> None:
    assert result.get("failed") is True, result
    assert message in result["msg"], (message, result["msg"])
    assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    left = os.listdir(dest) if os.path.isdir(dest) else []
    assert all(name.startswith(".ironcore") for name in left), left
    # No partial blob or unpacked file is kept for a layer that will never unpack.
    assert not [path for path in bookkeeping_files(dest) if path.endswith(".partial")]


def assert_bounded_memory(report: str) -> None:
    """ansible and the module each stay far below what a bomb's declared size would take (both are ~60 MiB)."""
    with open(report) as stream:
        peak_kib = int(stream.read())
    assert peak_kib < 160 * 1024, "the fetch grew to %d KiB" % peak_kib


@pytest.mark.parametrize(
    ("make_layer", "message"),
    [
        (gnu_sparse_bomb, "holds rootfs as a sparse file; sparse members are refused"),
        (pax_sparse_bomb, "as a sparse file; sparse members are refused"),
        (base256_size_bomb, "unpacks to 1099511627776 bytes, more than max_unpacked_size"),
        (lambda: link_layer(b"2"), "holds rootfs, a symbolic link, not a regular file"),
        (lambda: link_layer(b"1"), "holds rootfs, a hard link, not a regular file"),
        (lambda: gzip.compress(header(b"rootfs", 0, b"4") + end_of_archive()), "a block device, not a regular file"),
        (lambda: gzip.compress(header(b"rootfs", 0, b"3") + end_of_archive()), "a character device"),
        (lambda: gzip.compress(header(b"rootfs", 0, b"5") + end_of_archive()), "a directory, not a regular file"),
        (lambda: gzip.compress(regular(b"x", b"../rootfs") + end_of_archive()), "points outside its directory"),
        (lambda: gzip.compress(regular(b"x", b"/etc/rootfs") + end_of_archive()), "points outside its directory"),
        (
            lambda: gzip.compress(regular(b"first") + regular(b"second", b"other") + end_of_archive()),
            "holds more than one file; expected exactly one",
        ),
        (lambda: gzip.compress(end_of_archive()), "the tar+gzip layer holds no file"),
        (lambda: gzip.compress(header(b"rootfs", 4096) + b"short"), "ends after 5 of the 4096 bytes"),
        (lambda: b"\x1f\x8b" + b"not gzip at all", "the tar+gzip layer cannot be unpacked"),
    ],
    ids=[
        "gnu-sparse",
        "pax-sparse",
        "base256-size",
        "symlink",
        "hardlink",
        "block-device",
        "char-device",
        "directory",
        "dotdot-name",
        "absolute-name",
        "second-member",
        "empty",
        "truncated",
        "not-gzip",
    ],
)
def test_hostile_layer_is_refused_and_leaves_nothing(ansible, tmp_path, make_layer, message):
    layout = str(tmp_path / "layout")
    write_single_layer_image(layout, NAME, make_layer())
    dest = tmp_path / "dest"
    report = str(tmp_path / "rss")
    result = ansible.module(MODULE, fetch_args(layout, dest), wrapper=peak_rss_wrapper(report))
    assert_refused(result, message, dest)
    assert result["msg"].startswith("rootfs: the tar+gzip layer "), result["msg"]
    assert_bounded_memory(report)


def test_huge_pax_header_is_refused_with_bounded_memory(ansible, tmp_path):
    """tarfile would read this 256 MiB pax header whole (and copy it while parsing)."""
    layout = str(tmp_path / "layout")
    blob = huge_pax_header_layer(str(tmp_path / "layer.tar.gz"), 256 * 1024 * 1024)
    assert len(blob) < 1024 * 1024
    write_single_layer_image(layout, NAME, blob)
    dest = tmp_path / "dest"
    report = str(tmp_path / "rss")
    result = ansible.module(MODULE, fetch_args(layout, dest), wrapper=peak_rss_wrapper(report))
    assert_refused(result, "has more than 1048576 bytes of headers before its file; refusing it", dest)
    assert_bounded_memory(report)


def test_sparse_bomb_from_a_real_registry(ansible, registry_plain, tmp_path):
    layout = str(tmp_path / "layout")
    write_single_layer_image(layout, NAME, gnu_sparse_bomb())
    target = "%s/os/hostile:1.0" % registry_plain.host
    skopeo_push(layout, NAME, target, registry_plain.skopeo_flags("dest-"))
    dest = tmp_path / "dest"
    args = dict(registry_plain.registry_args, name=target, platform="virtualization", architecture="amd64")
    result = ansible.module(MODULE, dict(args, dest=str(dest)))
    assert_refused(result, "sparse members are refused", dest)


def test_max_unpacked_size_bounds_a_genuine_layer(ansible, tmp_path):
    data = os.urandom(64 * 1024)
    layout = str(tmp_path / "layout")
    write_single_layer_image(layout, NAME, gzip.compress(regular(data) + end_of_archive(), mtime=0))
    dest = tmp_path / "dest"
    refused = ansible.module(MODULE, fetch_args(layout, dest, max_unpacked_size=len(data) - 1))
    assert_refused(refused, "unpacks to 65536 bytes, more than max_unpacked_size (65535 bytes)", dest)
    allowed = ansible.module(MODULE, fetch_args(layout, dest, max_unpacked_size=len(data)))
    assert allowed.get("failed") is not True, allowed
    assert (dest / "rootfs").read_bytes() == data
    assert allowed["files"]["rootfs"]["content_size"] == len(data)


@pytest.fixture
def small_dest(tmp_path):
    """A 1 MiB tmpfs to fetch into, unmounted afterwards."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("cannot mount a small tmpfs for the free-space check: %s" % proc.stderr.strip())
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stderr.strip())
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_free_space_in_dest_is_checked_before_writing(ansible, tmp_path, small_dest):
    """2 MiB of zeros compress to a few KiB; the 1 MiB dest cannot hold them, and says how much is missing."""
    data = bytes(2 * 1024 * 1024)
    layout = str(tmp_path / "layout")
    write_single_layer_image(layout, NAME, gzip.compress(regular(data) + end_of_archive(), mtime=0))
    dest = small_dest / "images"
    result = ansible.module(MODULE, fetch_args(layout, dest))
    assert_refused(result, "unpacks to 2097152 bytes but %s has " % dest, dest)
    assert "bytes free; free " in result["msg"]


def test_verify_rederives_a_packed_file_instead_of_trusting_the_record(ansible, tmp_path):
    """A forged record that vouches for a tampered file (its hash, its identity) is not believed with verify."""
    data = b"genuine rootfs\n" * 4096
    layout = str(tmp_path / "layout")
    write_single_layer_image(layout, NAME, gzip.compress(regular(data) + end_of_archive(), mtime=0))
    dest = tmp_path / "dest"
    first = ansible.module(MODULE, fetch_args(layout, dest))
    assert first["changed"] is True and first["files"]["rootfs"]["content_size"] == len(data)

    forged = b"tampered rootfs\n" * 1000
    (dest / "rootfs").write_bytes(forged)
    (state_path,) = [path for path in bookkeeping_files(dest) if path.endswith(".ironcore-fetch.state.json")]
    state_path = pathlib.Path(state_path)
    state = json.loads(state_path.read_text())
    entry = state["files"]["rootfs"]
    entry["content_digest"] = "sha256:" + hashlib.sha256(forged).hexdigest()
    entry["content_size"] = len(forged)
    entry["identity"] = file_identity(str(dest / "rootfs"))
    state_path.write_text(json.dumps(state))

    trusting = ansible.module(MODULE, fetch_args(layout, dest))
    assert trusting["changed"] is False, "without verify the record is trusted: this is what verify is for"

    checked = ansible.module(MODULE, fetch_args(layout, dest, verify=True), check=True)
    assert checked["changed"] is True and (dest / "rootfs").read_bytes() == forged
    verified = ansible.module(MODULE, fetch_args(layout, dest, verify=True))
    assert verified["changed"] is True
    assert (dest / "rootfs").read_bytes() == data
    again = ansible.module(MODULE, fetch_args(layout, dest, verify=True))
    assert again["changed"] is False and again["files"]["rootfs"]["content_size"] == len(data)
