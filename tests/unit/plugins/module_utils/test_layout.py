from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import tarfile

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _layout as layout_mod
from ansible_collections.ironcore.image.plugins.module_utils._io import AtomicFile, write_bytes_atomic
from ansible_collections.ironcore.image.plugins.module_utils._model import OCI_MANIFEST, REF_NAME_ANNOTATION


def test_ensure_writes_spec_files(tmp_path):
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    assert json.loads((tmp_path / "l" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "l" / "index.json").read_text())["manifests"] == []
    assert (tmp_path / "l" / "blobs" / "sha256").is_dir()


def test_check_usable_refuses_file_and_foreign_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(layout_mod.LayoutError, match="not a directory"):
        layout_mod.OciLayout(str(tmp_path / "f")).check_usable()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "other").write_text("x")
    with pytest.raises(layout_mod.LayoutError, match="without an oci-layout"):
        layout_mod.OciLayout(str(tmp_path / "d")).check_usable()


def test_import_file_hashes_while_copying(tmp_path):
    source = tmp_path / "rootfs"
    data = os.urandom(5 * 1024 * 1024 + 7)
    source.write_bytes(data)
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    digest, size, written = store.import_file(str(source))
    assert written is True
    assert store.import_file(str(source))[2] is False
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest() and size == len(data)
    assert open(store.blob_path(digest), "rb").read() == data
    assert sorted(os.listdir(tmp_path / "l" / "blobs" / "sha256")) == [digest[7:]]
    assert layout_mod.digest_of_file(str(source)) == (digest, size)


def test_import_file_hands_every_chunk_to_its_hook(tmp_path):
    """What the build's block index is fed: the blob's bytes in order, as copied and as only hashed."""
    source = tmp_path / "rootfs"
    data = os.urandom(9 * 1024 * 1024 + 3)
    source.write_bytes(data)
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    copied, hashed = bytearray(), bytearray()
    digest, _size, _written = store.import_file(str(source), on_chunk=copied.extend)
    assert bytes(copied) == data
    assert layout_mod.digest_of_file(str(source), on_chunk=hashed.extend)[0] == digest
    assert bytes(hashed) == data
    packed = bytearray()
    digest, _size, _written = store.import_file(str(source), packed_as="rootfs", on_chunk=packed.extend)
    assert bytes(packed) == open(store.blob_path(digest), "rb").read()


def test_packed_layer_is_reproducible_single_file_tar(tmp_path):
    source = tmp_path / "kernel"
    source.write_bytes(b"kernel bytes")
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    digest, size, _written = store.import_file(str(source), packed_as="kernel")
    os.utime(source, (1, 1))
    assert layout_mod.digest_of_file(str(source), packed_as="kernel") == (digest, size)
    blob = open(store.blob_path(digest), "rb").read()
    assert blob[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as archive:
        (member,) = archive.getmembers()
        assert (member.name, member.mtime, member.uid, member.gid, member.uname) == ("kernel", 0, 0, 0, "")
        assert archive.extractfile(member).read() == b"kernel bytes"


def test_set_refs_replaces_only_named_entries(tmp_path):
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    one = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 1}
    two = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "2" * 64, "size": 2}
    store.set_refs({"a:1": one, "b:1": one})
    store.set_refs({"a:1": two})
    refs = store.refs()
    assert refs["a:1"]["digest"] == two["digest"] and refs["b:1"]["digest"] == one["digest"]
    assert refs["a:1"]["annotations"] == {REF_NAME_ANNOTATION: "a:1"}
    with pytest.raises(layout_mod.LayoutError, match="names there, closest first: a:1, b:1"):
        store.resolve("c:1")


def _record_many(path: str, worker: int) -> None:
    store = layout_mod.OciLayout(path)
    for number in range(20):
        descriptor = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "%064x" % number, "size": number}
        with store.locked():
            store.set_refs({"w%d:%d" % (worker, number): descriptor})


def test_lock_serialises_concurrent_writers(tmp_path):
    path = str(tmp_path / "l")
    layout_mod.OciLayout(path).ensure()
    workers = [multiprocessing.Process(target=_record_many, args=(path, n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(layout_mod.OciLayout(path).refs()) == 80


def test_read_document_checks_digest_and_size(tmp_path):
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    digest = store.put_bytes(b"{}")[0]
    assert store.read_document(digest) == b"{}"
    write_bytes_atomic(store.blob_path(digest), b"[]")
    with pytest.raises(layout_mod.LayoutError, match="does not match"):
        store.read_document(digest)


def test_atomic_file_leaves_old_content_on_failure(tmp_path):
    target = tmp_path / "boot" / "kernel"
    target.parent.mkdir()
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(str(target)) as out:
            out.write(b"new partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["kernel"]


@pytest.mark.parametrize("append", [False, True])
def test_caller_named_temporary_file_is_private_until_commit(tmp_path, append):
    partial = tmp_path / ".disk.partial"
    partial.write_bytes(b"kept by an older run")
    partial.chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        out = AtomicFile(str(tmp_path / "disk.raw"), temp_path=str(partial), append=append)
        out.write(b"more")
        out.file.flush()
        assert os.stat(partial).st_mode & 0o777 == 0o600
        out.commit()
    finally:
        os.umask(old_umask)
    # Without a requested mode a new file still gets the umask-derived one at commit.
    assert os.stat(tmp_path / "disk.raw").st_mode & 0o777 == 0o644
    assert (tmp_path / "disk.raw").read_bytes() == (b"kept by an older run" if append else b"") + b"more"


def test_a_directory_holding_only_a_starting_build_is_usable(tmp_path):
    """A second build on a new directory sees only the first one's lock and temporary oci-layout: not foreign."""
    (tmp_path / ".ironcore.lock").write_bytes(b"")
    (tmp_path / ".oci-layout.0123456789abcdef.tmp").write_bytes(b"")
    layout_mod.OciLayout(str(tmp_path)).check_usable()
    (tmp_path / "notes.txt").write_bytes(b"")
    with pytest.raises(layout_mod.LayoutError, match="non-empty directory"):
        layout_mod.OciLayout(str(tmp_path)).check_usable()


@pytest.mark.parametrize("size", [None, -1, "7", True])
def test_blob_walk_refuses_a_blob_without_a_valid_size(tmp_path, size):
    # Counted as 0 before: prune and info's sizes went on with a made-up number.
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    layer = {"mediaType": "application/octet-stream", "digest": "sha256:" + "1" * 64}
    if size is not None:
        layer["size"] = size
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [layer]}).encode()
    digest = store.put_bytes(data)[0]
    with pytest.raises(layout_mod.LayoutError, match="no valid size"):
        layout_mod.BlobWalk(store).reach({"digest": digest, "size": len(data)})


def test_blob_walk_refuses_a_deeply_nested_document_in_one_line(tmp_path):
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    data = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    digest = store.put_bytes(data)[0]
    with pytest.raises(layout_mod.LayoutError, match="nested too deeply"):
        layout_mod.BlobWalk(store).document(digest)


# ---- blobs and blobs/sha256 that someone else chose ----------------------------------------------


@pytest.mark.parametrize("linked", ["blobs", "blobs/sha256"])
def test_links_at_the_blob_directories_are_refused_even_when_sharing_is_allowed(tmp_path, linked):
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    victim = tmp_path / "victim"
    (victim / "sha256").mkdir(parents=True)
    (victim / "sha256" / ("a" * 64)).write_bytes(b"not ours")
    target = tmp_path / "l" / linked
    os.rename(target, tmp_path / "moved")
    os.symlink(victim if linked == "blobs" else victim / "sha256", target)
    for refuse in (
        lambda: store.refuse_shared(allow_shared=True),
        store.ensure,
        lambda: store.blob_directory(allow_shared=True).__enter__(),
    ):
        with pytest.raises(layout_mod.LayoutError, match="%s is a symbolic link.*allow_shared_dest" % target):
            refuse()
    assert os.listdir(victim / "sha256") == ["a" * 64]


@pytest.mark.parametrize("shared", ["", "blobs", "blobs/sha256"])
def test_a_blob_directory_others_may_write_is_refused_unless_allowed(tmp_path, shared):
    store = layout_mod.OciLayout(str(tmp_path / "l"))
    store.ensure()
    directory = tmp_path / "l" / shared if shared else tmp_path / "l"
    os.chmod(directory, 0o777)
    pattern = "layout %s may be written by other users .*allow_shared_dest" % os.path.normpath(directory)
    with pytest.raises(layout_mod.LayoutError, match=pattern):
        store.refuse_shared(allow_shared=False)
    with pytest.raises(layout_mod.LayoutError, match=pattern), store.blob_directory(allow_shared=False):
        pass
    store.refuse_shared(allow_shared=True)
    digest = store.put_bytes(b"a blob")[0]
    with store.blob_directory(allow_shared=True) as opened:
        assert opened is not None
        assert [found for found, _stat in store.stored_blobs(opened)] == [digest]
        assert store.remove_blob(digest, opened) is True
        assert store.remove_blob(digest, opened) is False
    assert not store.has_blob(digest)
