"""Delivery of one layer from a real local OCI layout, with interruptions injected at the stream."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers.images import packed

from ansible_collections.ironcore.image.plugins.module_utils import _download as download
from ansible_collections.ironcore.image.plugins.module_utils import _fetch as fetch
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._layout import OciLayout
from ansible_collections.ironcore.image.plugins.module_utils._select import SelectedLayer
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore
from ansible_collections.ironcore.image.plugins.module_utils._transfer import BlobStream

DATA = os.urandom(3 * 1024 * 1024 + 123)


class Interrupting(LayoutStore):
    """A real layout store whose streams break after `cut` bytes, the first `times` times."""

    def __init__(
        self, source: LayoutStore, cut: int, times: int = 1, retryable: bool = True, ignore_range: bool = False
    ):
        super().__init__(source.layout.path)
        self.cut = cut
        self.times = times
        self.retryable = retryable
        self.ignore_range = ignore_range
        self.offsets: list[int] = []
        self.lengths: list[int | None] = []

    def open_blob(self, digest: str, offset: int = 0, length: int | None = None) -> BlobStream:
        self.offsets.append(offset)
        self.lengths.append(length)
        stream = super().open_blob(digest, 0 if self.ignore_range else offset)
        if self.times <= 0:
            return stream
        self.times -= 1
        return _Breaking(stream, self.cut, self.retryable)


class _Breaking:
    def __init__(self, stream: BlobStream, cut: int, retryable: bool):
        self._stream = stream
        self.offset = stream.offset
        self._cut = cut
        self._retryable = retryable

    def iter_chunks(self, size: int):
        sent = 0
        for chunk in self._stream.iter_chunks(min(size, 65536)):
            if sent + len(chunk) > self._cut:
                yield bytes(chunk[: self._cut - sent])
                raise ImageError("connection reset by peer", retryable=self._retryable)
            sent += len(chunk)
            yield chunk

    def close(self):
        self._stream.close()


@pytest.fixture
def store(tmp_path):
    layout = OciLayout(str(tmp_path / "layout"))
    layout.ensure()
    return layout


def layer_for(store: OciLayout, data: bytes, role: str = "rootfs", is_packed: bool = False) -> SelectedLayer:
    digest, size, _written = store.put_bytes(data)
    media_type = (
        "application/vnd.oci.image.layer.v1.tar+gzip" if is_packed else "application/vnd.ironcore.image." + role
    )
    return SelectedLayer(role, media_type, digest, size, is_packed)


def source_of(store: OciLayout) -> LayoutStore:
    return LayoutStore(store.path)


def deliver(source, layer, path: str, retries: int, backoff: float = 0.5) -> download.Delivered:
    """Stage, then commit: what fetch does with each layer once all are staged."""
    staged = download.stage(source, layer, path, retries, backoff)
    staged.commit()
    staged.sweep()
    return staged.delivered


def dest_names(dest) -> list[str]:
    return sorted(os.listdir(dest))


def test_raw_layer_delivered_and_verified(store, tmp_path):
    layer = layer_for(store, DATA)
    dest = tmp_path / "dest"
    dest.mkdir()
    result = deliver(source_of(store), layer, str(dest / "rootfs"), retries=0)
    assert (dest / "rootfs").read_bytes() == DATA
    assert (result.content_digest, result.size, result.bytes_downloaded) == (layer.digest, len(DATA), len(DATA))
    assert dest_names(dest) == ["rootfs"]


def test_interrupted_stream_resumes_with_offset(store, tmp_path):
    layer = layer_for(store, DATA)
    source = Interrupting(source_of(store), cut=1_000_000, times=2)
    result = deliver(source, layer, str(tmp_path / "rootfs"), retries=1, backoff=0)
    assert (tmp_path / "rootfs").read_bytes() == DATA
    assert source.offsets == [0, 1_000_000, 2_000_000]
    # A resumed transfer asks for a bounded range: exactly what is missing.
    assert source.lengths == [None, len(DATA) - 1_000_000, len(DATA) - 2_000_000]
    assert result.bytes_downloaded == len(DATA)


def test_source_that_ignores_range_restarts_cleanly(store, tmp_path):
    layer = layer_for(store, DATA)
    source = Interrupting(source_of(store), cut=500_000, ignore_range=True)
    result = deliver(source, layer, str(tmp_path / "rootfs"), retries=1, backoff=0)
    assert (tmp_path / "rootfs").read_bytes() == DATA
    assert result.bytes_downloaded == len(DATA) + 500_000


def test_gives_up_after_retries_and_keeps_partial_for_next_run(store, tmp_path):
    layer = layer_for(store, DATA)
    (tmp_path / "rootfs").write_bytes(b"old")
    source = Interrupting(source_of(store), cut=0, times=10)
    with pytest.raises(
        download.DeliveryError, match="gave up after 2 retries, 0 of %d bytes are kept: run again to resume" % len(DATA)
    ):
        deliver(source, layer, str(tmp_path / "rootfs"), retries=2, backoff=0)
    assert source.offsets == [0, 0, 0]
    assert (tmp_path / "rootfs").read_bytes() == b"old"

    # Next run: a partial of 1 MB is kept and continued from there.
    source = Interrupting(source_of(store), cut=1_000_000, times=1, retryable=False)
    with pytest.raises(download.DeliveryError, match="connection reset"):
        deliver(source, layer, str(tmp_path / "rootfs"), retries=2, backoff=0)
    partial = download.partial_path(str(tmp_path), "rootfs", layer.digest)
    assert os.path.getsize(partial) == 1_000_000
    source = Interrupting(source_of(store), cut=0, times=0)
    result = deliver(source, layer, str(tmp_path / "rootfs"), retries=0)
    assert source.offsets == [1_000_000]
    assert result.bytes_downloaded == len(DATA) - 1_000_000
    assert (tmp_path / "rootfs").read_bytes() == DATA
    assert dest_names(tmp_path) == ["layout", "rootfs"]


def test_wrong_kept_partial_is_replaced_by_a_clean_download(store, tmp_path):
    layer = layer_for(store, DATA)
    partial = download.partial_path(str(tmp_path), "rootfs", layer.digest)
    with open(partial, "wb") as stream:
        stream.write(b"x" * 1000)
    result = deliver(source_of(store), layer, str(tmp_path / "rootfs"), retries=0)
    assert (tmp_path / "rootfs").read_bytes() == DATA and result.bytes_downloaded == len(DATA) + len(DATA) - 1000
    assert not os.path.exists(partial)


def test_corrupt_blob_fails_and_leaves_the_old_file(store, tmp_path):
    layer = layer_for(store, DATA)
    with open(store.blob_path(layer.digest), "r+b") as blob:
        blob.seek(1000)
        blob.write(b"CORRUPT")
    (tmp_path / "rootfs").write_bytes(b"old")
    with pytest.raises(download.DeliveryError, match="failed verification: its content hashes to sha256:"):
        deliver(source_of(store), layer, str(tmp_path / "rootfs"), retries=0)
    assert (tmp_path / "rootfs").read_bytes() == b"old"
    assert dest_names(tmp_path) == ["layout", "rootfs"]


def test_longer_blob_than_descriptor_is_refused(store, tmp_path):
    layer = layer_for(store, DATA)
    with open(store.blob_path(layer.digest), "ab") as blob:
        blob.write(b"tail")
    with pytest.raises(download.DeliveryError, match="larger than the %d bytes its descriptor says" % len(DATA)):
        deliver(source_of(store), layer, str(tmp_path / "rootfs"), retries=0)
    assert dest_names(tmp_path) == ["layout"]


def test_packed_layer_is_unpacked_to_its_file(store, tmp_path):
    layer = layer_for(store, packed("kernel", b"kernel bytes" * 1000), role="kernel", is_packed=True)
    result = deliver(source_of(store), layer, str(tmp_path / "vmlinuz"), retries=0)
    assert (tmp_path / "vmlinuz").read_bytes() == b"kernel bytes" * 1000
    assert result.content_digest == "sha256:" + hashlib.sha256(b"kernel bytes" * 1000).hexdigest()
    assert dest_names(tmp_path) == ["layout", "vmlinuz"]


def test_packed_layer_with_two_files_is_refused(store, tmp_path):
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name in ("a", "b"):
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    layer = layer_for(store, gzip.compress(raw.getvalue()), role="kernel", is_packed=True)
    with pytest.raises(download.DeliveryError, match="more than one file"):
        deliver(source_of(store), layer, str(tmp_path / "kernel"), retries=0)
    assert dest_names(tmp_path) == ["layout"]


def test_stale_partials_of_other_blobs_are_removed(store, tmp_path):
    layer = layer_for(store, DATA)
    stale = download.partial_path(str(tmp_path), "rootfs", "sha256:" + "0" * 64)
    other = download.partial_path(str(tmp_path), "kernel", "sha256:" + "0" * 64)
    for path in (stale, other):
        with open(path, "wb") as stream:
            stream.write(b"old")
    deliver(source_of(store), layer, str(tmp_path / "rootfs"), retries=0)
    assert not os.path.exists(stale) and os.path.exists(other)


@pytest.mark.parametrize("filename, other", [("rootfs", "rootfs.raw"), ("gardenlinux-1.0", "gardenlinux-1.0.1.raw")])
def test_stale_partials_of_longer_file_names_are_left_alone(store, tmp_path, filename, other):
    layer = layer_for(store, b"short layer")
    stale = download.partial_path(str(tmp_path), filename, "sha256:" + "1" * 64)
    others = [download.partial_path(str(tmp_path), other, "sha256:" + digit * 64) for digit in "0a"]
    for path in (stale, *others):
        with open(path, "wb") as stream:
            stream.write(b"old")
    deliver(source_of(store), layer, str(tmp_path / filename), retries=0)
    assert not os.path.exists(stale)
    assert all(os.path.exists(path) for path in others)


def test_committing_one_file_keeps_the_staged_partial_of_a_longer_name(store, tmp_path):
    """kernel -> vmlinuz and initramfs -> vmlinuz.initrd, staged together and committed in turn."""
    kernel, initramfs = layer_for(store, b"kernel " * 1000, "kernel"), layer_for(store, b"initrd " * 1000, "initramfs")
    dest = tmp_path / "dest"
    dest.mkdir()
    stale = download.partial_path(str(dest), "vmlinuz", "sha256:" + "1" * 64)
    with open(stale, "wb") as stream:
        stream.write(b"old")
    plans = [
        fetch.FilePlan(kernel, "vmlinuz", str(dest / "vmlinuz"), current=False),
        fetch.FilePlan(initramfs, "vmlinuz.initrd", str(dest / "vmlinuz.initrd"), current=False),
    ]
    fetch._deliver_all(source_of(store), plans, concurrency=2, retries=0)
    assert (dest / "vmlinuz").read_bytes() == b"kernel " * 1000
    assert (dest / "vmlinuz.initrd").read_bytes() == b"initrd " * 1000
    assert dest_names(dest) == ["vmlinuz", "vmlinuz.initrd"]


def test_requested_mode_is_set_before_the_rename(store, tmp_path, monkeypatch):
    """A file fetched with mode 0600 (a VM disk) is never visible under its name with a wider mode."""
    raw = layer_for(store, b"disk " * 1000, "rootfs")
    kernel = b"kernel " * 1000
    tar_gzip = layer_for(store, packed("kernel", kernel), "kernel", is_packed=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    modes_at_rename = {}
    rename = os.rename

    def recording_rename(source, target, *, src_dir_fd=None, dst_dir_fd=None):
        status = os.stat(source, dir_fd=src_dir_fd, follow_symlinks=False)
        modes_at_rename[os.path.basename(target)] = status.st_mode & 0o777
        rename(source, target, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "rename", recording_rename)
    old_umask = os.umask(0o022)
    try:
        plans = [
            fetch.FilePlan(raw, "disk.raw", str(dest / "disk.raw"), current=False),
            fetch.FilePlan(tar_gzip, "vmlinuz", str(dest / "vmlinuz"), current=False),
        ]
        fetch._deliver_all(source_of(store), plans, concurrency=1, retries=0, mode=fetch.numeric_mode("0600"))
    finally:
        os.umask(old_umask)
    assert modes_at_rename == {"disk.raw": 0o600, "vmlinuz": 0o600}
    assert (dest / "vmlinuz").read_bytes() == kernel


@pytest.mark.parametrize(
    "mode, expected",
    [("0600", 0o600), ("644", 0o644), (0o640, 0o640), ("u=rw,g=r", None), (None, None), ("0o600", None)],
)
def test_numeric_mode(mode, expected):
    assert fetch.numeric_mode(mode) == expected
