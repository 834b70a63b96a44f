from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _fetch as fetch
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._select import SelectedLayer


@pytest.mark.parametrize(
    "filenames, message",
    [
        ({"kernel": "../kernel"}, "filenames.kernel: '../kernel' is a path; give a plain file name"),
        ({"kernel": "/boot/vmlinuz"}, "filenames.kernel: '/boot/vmlinuz' is a path"),
        ({"rootfs": "sub/rootfs"}, "filenames.rootfs: 'sub/rootfs' is a path"),
        ({"rootfs": "sub\\rootfs"}, "filenames.rootfs: 'sub\\\\rootfs' is a path"),
        ({"rootfs": ".."}, "filenames.rootfs: '..' is not a usable file name"),
        ({"rootfs": "."}, "filenames.rootfs: '.' is not a usable file name"),
        ({"rootfs": "a\0b"}, "is not a usable file name"),
        ({"rootfs": ""}, "filenames.rootfs must be a non-empty file name"),
        ({"rootfs": 5}, "filenames.rootfs must be a non-empty file name"),
        ({"rootfs": ".ironcore-fetch.state.json"}, "reserved for the fetch's own bookkeeping"),
        ({"rootfs": "x" * 201}, "longer than 200 bytes"),
        ({"firmware": "fw"}, "filenames: firmware is not a layer role; expected one of kernel, initramfs, rootfs"),
    ],
)
def test_bad_filenames_are_refused(filenames, message):
    with pytest.raises(fetch.FetchError) as error:
        fetch.check_filenames(filenames)
    assert message in str(error.value)


def test_filenames_default_to_roles():
    names = fetch.check_filenames({"kernel": "vmlinuz", "rootfs": ".hidden-but-fine"})
    assert names["kernel"] == "vmlinuz" and names["initramfs"] == "initramfs" and names["rootfs"] == ".hidden-but-fine"


def layer(data: bytes, role: str = "rootfs", packed: bool = False) -> SelectedLayer:
    return SelectedLayer(
        role, "application/vnd.ironcore.image." + role, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), packed
    )


def test_state_record_skips_hashing_until_the_file_changes(tmp_path):
    data = b"rootfs bytes"
    (tmp_path / "rootfs").write_bytes(data)
    state = fetch.DeliveryState(str(tmp_path))
    wanted = layer(data)
    (plan,) = fetch.plan_files([wanted], str(tmp_path), {"rootfs": "rootfs"}, state, verify=False)
    assert plan.current is True  # hashed once: no record yet
    state.record("rootfs", wanted, wanted.digest, plan.path)
    state.save()

    reloaded = fetch.DeliveryState(str(tmp_path))
    assert reloaded.get("rootfs")["digest"] == wanted.digest
    # Unchanged: the record is trusted, the file not read (the recorded content digest comes back as it is).
    reloaded.files["rootfs"]["content_digest"] = "sha256:" + "a" * 64
    (trusted,) = fetch.plan_files([wanted], str(tmp_path), {"rootfs": "rootfs"}, reloaded, verify=False)
    (verified,) = fetch.plan_files([wanted], str(tmp_path), {"rootfs": "rootfs"}, reloaded, verify=True)
    assert trusted.content_digest == "sha256:" + "a" * 64 and verified.content_digest == wanted.digest
    # Same size and mtime but other bytes, written in place: the ctime moved, so it is hashed and caught.
    stat = os.stat(tmp_path / "rootfs")
    with open(tmp_path / "rootfs", "r+b") as stream:
        stream.write(b"ROOTFS bytes")
    os.utime(tmp_path / "rootfs", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(tmp_path / "rootfs").st_ino == stat.st_ino
    (rewritten,) = fetch.plan_files([wanted], str(tmp_path), {"rootfs": "rootfs"}, reloaded, verify=False)
    assert rewritten.current is False


def test_state_record_of_an_older_version_is_not_trusted(tmp_path):
    data = b"rootfs bytes"
    (tmp_path / "rootfs").write_bytes(data)
    status = os.stat(tmp_path / "rootfs")
    old_identity = [status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns]
    entry = {"digest": layer(data).digest, "content_digest": "sha256:" + "a" * 64, "identity": old_identity}
    (tmp_path / fetch.STATE_FILE).write_text(json.dumps({"version": 1, "files": {"rootfs": entry}}))
    assert fetch.DeliveryState(str(tmp_path)).files == {}


@pytest.mark.parametrize("kind", ["symlink", "group-writable", "other owner", "too large", "deeply nested"])
def test_state_record_that_is_not_plainly_ours_is_ignored(tmp_path, kind):
    good = json.dumps({"version": fetch.STATE_VERSION, "files": {"rootfs": {"digest": "x"}}})
    record = tmp_path / fetch.STATE_FILE
    if kind == "symlink":
        (tmp_path / "elsewhere.json").write_text(good)
        record.symlink_to(tmp_path / "elsewhere.json")
    else:
        record.write_text(good)
        assert fetch.DeliveryState(str(tmp_path)).files != {}
    if kind == "group-writable":
        record.chmod(0o664)
    elif kind == "other owner":
        os.chown(record, 65534, 65534)
    elif kind == "too large":
        record.write_text(good[:-1] + " " * (4 * 1024 * 1024) + "}")
    elif kind == "deeply nested":
        record.write_text("[" * 100000 + "]" * 100000)
    assert fetch.DeliveryState(str(tmp_path)).files == {}


def test_packed_file_without_record_is_fetched_again(tmp_path):
    (tmp_path / "kernel").write_bytes(b"kernel")
    state = fetch.DeliveryState(str(tmp_path))
    (plan,) = fetch.plan_files(
        [layer(b"tar.gz bytes", "kernel", packed=True)], str(tmp_path), {"kernel": "kernel"}, state, verify=False
    )
    assert plan.current is False


def test_unreadable_state_record_is_ignored(tmp_path):
    (tmp_path / fetch.STATE_FILE).write_text("{not json")
    assert fetch.DeliveryState(str(tmp_path)).files == {}
    (tmp_path / fetch.STATE_FILE).write_text('{"version": 99, "files": {"rootfs": {}}}')
    assert fetch.DeliveryState(str(tmp_path)).files == {}


@pytest.mark.parametrize(
    "error", [ValueError("invalid literal for int() with base 10: 'x'"), KeyError("size"), RuntimeError()]
)
def test_a_bug_while_staging_is_not_dressed_up_as_a_fetch_error(tmp_path, error):
    # Left as it is, so _module.run reports it as "internal error in ...; please report it".
    plan = fetch.FilePlan(layer(b"data"), "disk.raw", str(tmp_path / "disk.raw"), current=False)
    assert fetch._as_fetch_error(plan, error) is error


def test_a_refusal_while_staging_is_a_one_line_fetch_error_with_the_file(tmp_path):
    plan = fetch.FilePlan(layer(b"data"), "disk.raw", str(tmp_path / "disk.raw"), current=False)
    wrapped = fetch._as_fetch_error(plan, ImageError("the registry dropped\nthe connection", retryable=True))
    assert isinstance(wrapped, fetch.FetchError) and wrapped.retryable
    assert str(wrapped) == "rootfs (disk.raw): the registry dropped the connection"


def test_bytes_to_write_counts_what_is_not_in_place(tmp_path):
    kernel, rootfs, packed = layer(b"k" * 100, "kernel"), layer(b"r" * 1000), layer(b"i" * 50, "initramfs", True)
    names = fetch.check_filenames(None)
    state = fetch.DeliveryState(str(tmp_path / "state"))
    partials = str(tmp_path / "state")
    layers = [kernel, rootfs, packed]
    # Nothing there: every blob whole.
    assert fetch.bytes_to_write(layers, str(tmp_path), names, state, [partials]) == 1150
    # A raw file of the blob's size looks in place; a kept partial counts only what it lacks.
    (tmp_path / "kernel").write_bytes(b"k" * 100)
    os.mkdir(partials)
    partial = os.path.join(partials, ".ironcore-fetch.rootfs.%s.partial" % rootfs.digest.split(":")[1][:16])
    with open(partial, "wb") as stream:
        stream.write(b"r" * 400)
    assert fetch.bytes_to_write(layers, str(tmp_path), names, state, [partials]) == 650
    # A packed layer the record knows counts its blob and what it unpacks to.
    state.files["initramfs"] = {"digest": packed.digest, "content_size": 70, "identity": []}
    assert fetch.bytes_to_write(layers, str(tmp_path), names, state, [partials]) == 720
