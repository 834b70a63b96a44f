"""The safe-write and bounded-read helpers, against real files, links and directories."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _io as io

NOBODY = 65534


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_bytes(b"must stay")
    os.chmod(path, 0o640)
    return path


def untouched(victim) -> bool:
    return victim.read_bytes() == b"must stay" and os.stat(victim).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("plant", ["symlink", "hard link", "fifo", "other owner"])
@pytest.mark.parametrize("append", [False, True])
def test_caller_named_temporary_file_that_is_not_plainly_ours_is_refused(tmp_path, victim, plant, append):
    partial = tmp_path / ".disk.partial"
    if plant == "symlink":
        partial.symlink_to(victim)
    elif plant == "hard link":
        os.link(victim, partial)
    elif plant == "fifo":
        os.mkfifo(partial)
    else:
        partial.write_bytes(b"theirs")
        os.chown(partial, NOBODY, NOBODY)
    with pytest.raises(io.UnsafeFileError, match="refusing"):
        io.AtomicFile(str(tmp_path / "disk.raw"), temp_path=str(partial), append=append)
    assert untouched(victim)
    assert not (tmp_path / "disk.raw").exists()


def test_final_name_that_is_a_symlink_is_replaced_and_its_target_keeps_its_mode(tmp_path, victim):
    target = tmp_path / "kernel"
    target.symlink_to(victim)
    io.write_bytes_atomic(str(target), b"new kernel")
    assert not target.is_symlink() and target.read_bytes() == b"new kernel"
    assert untouched(victim)


def test_a_planted_file_does_not_hand_its_mode_to_the_file_that_replaces_it(tmp_path):
    planted = tmp_path / "kernel"
    planted.write_bytes(b"theirs")
    os.chown(planted, NOBODY, NOBODY)
    os.chmod(planted, 0o4777)
    ours = tmp_path / "initrd"
    ours.write_bytes(b"ours")
    os.chmod(ours, 0o640)
    old_umask = os.umask(0o022)
    try:
        io.write_bytes_atomic(str(planted), b"kernel")
        io.write_bytes_atomic(str(ours), b"initrd")
    finally:
        os.umask(old_umask)
    assert os.stat(planted).st_mode & 0o7777 == 0o644 and os.stat(planted).st_uid == os.geteuid()
    assert os.stat(ours).st_mode & 0o7777 == 0o640


def test_temporary_file_in_another_directory_is_renamed_into_place(tmp_path):
    private = tmp_path / "state"
    private.mkdir(mode=0o700)
    dest = tmp_path / "dest"
    dest.mkdir()
    out = io.AtomicFile(str(dest / "rootfs"), temp_path=str(private / "rootfs.partial"))
    out.write(b"rootfs")
    out.commit()
    assert (dest / "rootfs").read_bytes() == b"rootfs"
    assert os.listdir(private) == [] and os.listdir(dest) == ["rootfs"]


def test_swapping_the_directory_for_a_symlink_after_opening_does_not_redirect_the_write(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = io.AtomicFile(str(dest / "kernel"))
    out.write(b"kernel")
    os.rename(dest, tmp_path / "moved")
    os.symlink(elsewhere, dest)
    out.commit()
    assert os.listdir(elsewhere) == []
    assert (tmp_path / "moved" / "kernel").read_bytes() == b"kernel"


def test_open_private_creates_exclusively_and_reopens_only_our_own_file(tmp_path):
    directory = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = io.open_private("lock", directory)
        os.close(fd)
        assert os.stat(tmp_path / "lock").st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):
            io.open_private("lock", directory, exclusive=True)
        os.close(io.open_private("lock", directory))
        os.chown(tmp_path / "lock", NOBODY, NOBODY)
        with pytest.raises(io.UnsafeFileError, match="owned by uid"):
            io.open_private("lock", directory)
        os.close(io.open_private("lock", directory, require_owner=False))
    finally:
        os.close(directory)


def test_read_bounded_refuses_devices_and_what_is_over_the_cap(tmp_path):
    link = tmp_path / "manifest"
    link.symlink_to("/dev/zero")
    with pytest.raises(io.UnsafeFileError, match="not a regular file"):
        io.read_bounded(str(link), limit=4096)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(io.TooLargeError):
        io.read_bounded(str(big), limit=100)
    assert io.read_bounded(str(big), limit=101) == b"x" * 101


def test_read_bounded_private_wants_a_file_of_ours_that_only_we_can_write(tmp_path):
    record = tmp_path / "state.json"
    record.write_bytes(b"{}")
    os.chmod(record, 0o644)
    assert io.read_bounded(str(record), limit=4096, follow_symlinks=False, private=True) == b"{}"
    link = tmp_path / "link.json"
    link.symlink_to(record)
    with pytest.raises(io.UnsafeFileError, match="symbolic link"):
        io.read_bounded(str(link), limit=4096, follow_symlinks=False, private=True)
    os.chmod(record, 0o646)
    with pytest.raises(io.UnsafeFileError, match="not ours alone"):
        io.read_bounded(str(record), limit=4096, private=True)
    os.chmod(record, 0o644)
    os.chown(record, NOBODY, NOBODY)
    with pytest.raises(io.UnsafeFileError, match="not ours alone"):
        io.read_bounded(str(record), limit=4096, private=True)


def test_parse_json_reports_deep_nesting_as_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        io.parse_json(b"[" * 100000 + b"]" * 100000)
    assert io.parse_json(b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize(
    "mode, owner, shared",
    [(0o755, None, False), (0o1777, None, False), (0o775, None, True), (0o757, None, True), (0o755, NOBODY, True)],
)
def test_shared_directory_reason(tmp_path, mode, owner, shared):
    directory = tmp_path / "d"
    directory.mkdir()
    os.chmod(directory, mode)
    if owner is not None:
        os.chown(directory, owner, owner)
    assert (io.shared_directory_reason(str(directory)) is not None) is shared


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_atomic_file_commit_puts_the_bytes_in_place_with_the_mode_asked_for(tmp_path):
    target = tmp_path / "disk.img"
    with io.AtomicFile(str(target), mode=0o640) as out:
        out.write(b"new ")
        out.write(b"bytes")
        # Until commit the bytes are in a private temporary file beside the target, not in the target.
        assert not target.exists()
        assert os.stat(out.temp_path).st_mode & 0o777 == 0o600
        assert os.path.dirname(out.temp_path) == str(tmp_path)
        out.commit()
    assert target.read_bytes() == b"new bytes"
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


def test_atomic_file_left_without_commit_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "kernel"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), io.AtomicFile(str(target)) as out:
        out.write(b"half of the new")
        raise RuntimeError("digest mismatch")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_atomic_file_keeps_the_mode_of_the_file_of_ours_it_replaces(tmp_path):
    target = tmp_path / "initramfs"
    target.write_bytes(b"old")
    os.chmod(target, 0o604)
    io.write_bytes_atomic(str(target), b"new")
    assert (target.read_bytes(), os.stat(target).st_mode & 0o777) == (b"new", 0o604)


def test_atomic_file_new_file_gets_the_umask_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        io.write_bytes_atomic(str(tmp_path / "fresh"), b"x")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "fresh").st_mode & 0o777 == 0o640


def test_atomic_file_keep_partial_lets_a_later_writer_append(tmp_path):
    target, partial = tmp_path / "rootfs", tmp_path / ".rootfs.partial"
    with io.AtomicFile(str(target), temp_path=str(partial)) as out:
        out.write(b"first half ")
        out.file.flush()
        out.keep_partial = True
    assert partial.read_bytes() == b"first half " and not target.exists()
    with io.AtomicFile(str(target), temp_path=str(partial), append=True) as out:
        out.write(b"second half")
        out.commit()
    assert target.read_bytes() == b"first half second half"
    assert not partial.exists()


def test_atomic_file_commit_to_another_directory_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    with io.AtomicFile(str(tmp_path / "a")) as out, pytest.raises(ValueError, match="is not in the directory of"):
        out.commit(str(tmp_path / "elsewhere" / "a"))
    assert leftovers(tmp_path) == [] and not (tmp_path / "a").exists()


def test_atomic_file_syncs_the_data_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """The order that makes a crash leave either the old file or the whole new one, observed on the real calls."""
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append("fsync directory" if os.path.isdir("/proc/self/fd/%d" % fd) else "fsync file")
        real_fsync(fd)

    def rename(*args, **kwargs):
        events.append("rename")
        real_rename(*args, **kwargs)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "rename", rename)
    io.write_bytes_atomic(str(tmp_path / "blob"), b"data")
    assert events == ["fsync file", "rename", "fsync directory"]


def _source(tmp_path, size: int):
    data = os.urandom(size)
    path = tmp_path / "rootfs"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("size", [1, io.CHUNK_SIZE - 1, io.CHUNK_SIZE, 2 * io.CHUNK_SIZE + 12345])
@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_and_hash_stores_and_hashes_every_byte_and_shows_each_chunk_in_order(
    tmp_path, monkeypatch, size, kernel_copy
):
    path, data = _source(tmp_path, size)
    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range")
    seen = bytearray()
    with open(path, "rb") as stream, io.AtomicFile(str(tmp_path / "blob")) as out:
        counter = io.copy_and_hash(stream, out, on_chunk=seen.extend)
        assert stream.tell() == size
        out.commit()
    assert (tmp_path / "blob").read_bytes() == data
    assert bytes(seen) == data
    assert (counter.digest, counter.size) == (io.sha256_digest(data), size)


def test_copy_and_hash_continues_a_partial_destination_from_the_source_position(tmp_path):
    path, data = _source(tmp_path, io.CHUNK_SIZE + 7)
    (tmp_path / ".partial").write_bytes(data[:100])
    with open(path, "rb") as stream, io.AtomicFile(
        str(tmp_path / "blob"), temp_path=str(tmp_path / ".partial"), append=True
    ) as out:
        stream.seek(100)
        counter = io.copy_and_hash(stream, out)
        out.commit()
    assert (tmp_path / "blob").read_bytes() == data
    assert counter.size == len(data) - 100 and counter.digest == io.sha256_digest(data[100:])


def test_copy_and_hash_writes_to_any_writer_through_user_space(tmp_path):
    path, data = _source(tmp_path, 3 * 1024 * 1024)
    sink = bytearray()

    class Writer:
        def write(self, chunk):
            sink.extend(chunk)
            return len(chunk)

    with open(path, "rb") as stream:
        counter = io.copy_and_hash(stream, Writer())
    assert bytes(sink) == data and counter.digest == io.sha256_digest(data)


def test_copy_and_hash_reports_a_failing_read_back_and_leaves_no_file(tmp_path, monkeypatch):
    path, _data = _source(tmp_path, 2 * io.CHUNK_SIZE)

    def broken(*_args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "preadv", broken)
    with open(path, "rb") as stream, io.AtomicFile(str(tmp_path / "blob")) as out:
        with pytest.raises(OSError, match="Input/output error"):
            io.copy_and_hash(stream, out)
    assert os.listdir(tmp_path) == ["rootfs"]


def test_background_hashing_counter_hashes_what_a_plain_one_does_and_continues_a_kept_hash():
    chunks = [os.urandom(size) for size in (1, 4096, 1024 * 1024, 3, 700 * 1024)]
    plain = io.HashingCounter()
    for chunk in chunks[:2]:
        plain.update(chunk)
    background = io.BackgroundHashingCounter(plain)
    reused = bytearray(chunks[2])
    background.update(memoryview(reused))
    # A reused buffer may change after update(): what was handed over is what counts.
    reused[:] = bytes(len(reused))
    for chunk in chunks[3:]:
        background.update(chunk)
    whole = b"".join(chunks)
    assert (background.digest, background.size) == (io.sha256_digest(whole), len(whole))
    assert io.BackgroundHashingCounter().digest == io.sha256_digest(b"")


def test_copy_and_hash_fails_when_the_chunk_callback_fails(tmp_path):
    path, _data = _source(tmp_path, io.CHUNK_SIZE + 1)

    def refuse(_chunk):
        raise ValueError("index full")

    with open(path, "rb") as stream, io.AtomicFile(str(tmp_path / "blob")) as out:
        with pytest.raises(ValueError, match="index full"):
            io.copy_and_hash(stream, out, on_chunk=refuse)


def test_copy_and_hash_fails_when_the_chunk_callback_fails_after_the_ring_went_round_and_leaves_no_file(tmp_path):
    # More chunks than the hook thread's ring holds: a failure late in the copy must still stop it, not hang it.
    path, data = _source(tmp_path, 3 * io.CHUNK_SIZE + 5)
    seen = bytearray()

    def refuse_late(chunk):
        if len(seen) >= 2 * io.CHUNK_SIZE:
            raise ValueError("index full")
        seen.extend(chunk)

    with open(path, "rb") as stream, io.AtomicFile(str(tmp_path / "blob")) as out:
        with pytest.raises(ValueError, match="index full"):
            io.copy_and_hash(stream, out, on_chunk=refuse_late)
    assert bytes(seen) == data[: len(seen)]
    assert sorted(os.listdir(tmp_path)) == ["rootfs"]


@pytest.mark.parametrize(
    "size, text",
    [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (10 * 1024 * 1024, "10.0 MiB"), (3 << 40, "3.0 TiB")],
)
def test_human_size(size, text):
    assert io.human_size(size) == text


def test_check_room_refuses_in_one_line(tmp_path):
    free = io.free_bytes(str(tmp_path / "not" / "yet"))
    # Other jobs write to this disk while the test runs: half the free space always fits, and a
    # shortfall of 1 TiB + 1 GiB still prints as 1.0 TiB when the free space moves by less than 1 GiB.
    io.check_room(str(tmp_path), free // 2, "the fetch into x", "or choose another dest")
    with pytest.raises(io.NoRoomError) as error:
        io.check_room(
            str(tmp_path / "not" / "yet"), free + (1 << 40) + (1 << 30), "the fetch into x", "or choose another dest"
        )
    message = str(error.value)
    assert "\n" not in message and message.startswith("the fetch into x needs ") and "1.0 TiB short" in message
    assert not (tmp_path / "not").exists()
