"""A full disk is found before the first byte: fetch and copy into a layout add up what they will write.

A small tmpfs stands in for the full filesystem; mounting it needs root, so
the test is skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers.images import skopeo_push, write_upstream_image
from helpers.tasks import run_tasks

FETCH = "ironcore.image.ironcore_image_fetch"
COPY = "ironcore.image.ironcore_image_copy"
NAME = "registry.example.com/room/big:1.0"
# Larger than the 8 MiB filesystem on its own, so no earlier layer can be what does not fit.
ROOTFS_SIZE = 10 * 1024 * 1024


@pytest.fixture
def small_filesystem(tmp_path):
    """An empty 8 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs that stands in for a full disk needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_fetch_and_copy_refuse_a_filesystem_too_small_before_writing(
    ansible, registry_plain, small_filesystem, tmp_path
):
    layout = str(tmp_path / "layout")
    write_upstream_image(layout, NAME, architectures=("amd64",), roles=("rootfs",), size=ROOTFS_SIZE)
    skopeo_push(layout, NAME, registry_plain.host + "/room/big:1.0", registry_plain.skopeo_flags("dest-"))
    source = dict(registry_plain.registry_args, name=registry_plain.host + "/room/big:1.0")
    fetch_dest = small_filesystem / "boot"
    copy_dest = small_filesystem / "layout"
    fetched, copied = run_tasks(
        ansible,
        str(tmp_path),
        [
            (FETCH, dict(source, platform="virtualization", architecture="amd64", dest=str(fetch_dest))),
            (COPY, {"source": source, "destination": {"layout": str(copy_dest), "name": NAME}}),
        ],
    )
    for result, what, option in (
        (fetched, "fetch into", "dest"),
        (copied, "copy into destination.layout", "destination.layout"),
    ):
        assert result["failed"] is True, result
        message = result["msg"]
        assert "\n" not in message and what in message, message
        assert "needs 10.0 MiB" in message and "has 8.0 MiB free, 2.0 MiB short" in message, message
        assert "choose another %s" % option in message and "nothing was written" in message, message
    # Nothing was created: no dest, no state directory, no lock file, no partial, no layout.
    assert os.listdir(small_filesystem) == []
