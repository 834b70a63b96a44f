"""The progress record of fetch, push and copy: read while they run (a blob held back, a slow link) and at the end."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
from helpers.images import skopeo_push

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image
from ansible_collections.ironcore.image.plugins.module_utils._copy import plan_copy
from ansible_collections.ironcore.image.plugins.module_utils._store import LayoutStore

pytestmark = pytest.mark.integration

ROOTFS_SIZE = 24 * 1024 * 1024
# How long the proxy holds the rootfs back, part-way: the record is read meanwhile.
HOLD_SECONDS = 4.0
# Push and copy: about three seconds each through the throttled proxy (more than the socket buffers hold).
PUSHED_ROOTFS_SIZE = 12 * 1024 * 1024
THROTTLE_RATE = 4 * 1024 * 1024


def test_fetch_progress_record_moves_and_ends(ansible, registry_plain, fault_proxy, tmp_path):
    rootfs = tmp_path / "rootfs.raw"
    data = os.urandom(ROOTFS_SIZE)
    rootfs.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layout = str(tmp_path / "layout")
    build_image(
        {
            "layout": layout,
            "name": "%s/os/gardenlinux:1.0" % registry_plain.host,
            "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs)}],
            "platforms": ["virtualization"],
            "layer_format": "raw",
            "annotations": None,
            "platform_tags": False,
        },
        check_mode=False,
    )
    name = "%s/os/gardenlinux:1.0" % registry_plain.host
    skopeo_push(layout, name, name, registry_plain.skopeo_flags("dest-"))
    proxy = fault_proxy(registry_plain)
    hold = proxy.add(
        "pause_response", method="GET", path="/blobs/" + digest, after_bytes=4 * 1024 * 1024, seconds=HOLD_SECONDS
    )

    boot = tmp_path / "boot"
    with RecordWatcher(str(boot / ".ironcore" / "progress.json")) as watcher:
        status = ansible.module(
            "ironcore.image.ironcore_image_fetch",
            {
                "name": "%s/os/gardenlinux:1.0" % proxy.host,
                "platform": "virtualization",
                "architecture": "amd64",
                "dest": str(boot),
                "plain_http": True,
            },
        )
    assert status.get("failed") is not True, status
    assert hold.hits == 1, proxy.log
    assert any(
        r["phase"] == "download" and not r["done"] and 0 < r["bytes_done"] < r["bytes_total"] for r in watcher.seen
    ), watcher.seen

    with open(boot / ".ironcore" / "progress.json", "rb") as stream:
        final = json.load(stream)
    assert final["done"] is True and final["phase"] == "finished", final
    assert final["bytes_done"] == final["bytes_total"] == ROOTFS_SIZE
    assert final["layers"] == {"rootfs": {"bytes_done": ROOTFS_SIZE, "bytes_total": ROOTFS_SIZE}}

    assert status["bytes_downloaded"] == ROOTFS_SIZE and status["retries"] == 0, status
    # elapsed is rounded to milliseconds in the result, the rate is not.
    assert status["elapsed"] > 0 and status["bytes_per_second"] > 0, status
    assert abs(status["bytes_per_second"] * status["elapsed"] - ROOTFS_SIZE) <= ROOTFS_SIZE * 0.01, status
    assert hashlib.sha256((boot / "rootfs").read_bytes()).hexdigest() == digest.split(":", 1)[1]


class RecordWatcher:
    """Reads a progress record every 50 ms in a thread while a task runs: what a poller would have seen."""

    def __init__(self, path):
        self.path = path
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._stop.wait(0.05):
            try:
                with open(self.path, "rb") as stream:
                    record = json.load(stream)
            except (OSError, ValueError):
                continue
            if not self.seen or self.seen[-1] != record:
                self.seen.append(record)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def final_record(path, blob_sizes):
    """The last record, checked: finished, and the bytes of exactly `blob_sizes` (digest -> size) done."""
    with open(path, "rb") as stream:
        final = json.load(stream)
    assert final["done"] is True and final["phase"] == "finished", final
    assert final["layers"] == {digest: {"bytes_done": size, "bytes_total": size} for digest, size in blob_sizes.items()}
    assert final["bytes_done"] == final["bytes_total"] == sum(blob_sizes.values()), final
    assert final["version"] == 1 and final["updated"] >= final["started"] > 0, final
    return final


def test_push_and_copy_keep_the_progress_record_of_fetch(ansible, registry_plain, fault_proxy, tmp_path):
    rootfs = tmp_path / "rootfs.raw"
    rootfs.write_bytes(os.urandom(PUSHED_ROOTFS_SIZE))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(64 * 1024))
    layout = str(tmp_path / "layout")
    name = "registry.example.com/os/progress:1.0"
    built = ansible.module(
        "ironcore.image.ironcore_image_build",
        {
            "layout": layout,
            "name": name,
            "artifacts": [{"architecture": "amd64", "rootfs": str(rootfs), "kernel": str(kernel)}],
            "platforms": ["virtualization"],
        },
    )
    assert built.get("failed") is not True, built
    proxy = fault_proxy(registry_plain)
    # A slow link: the record is rewritten every half second while the blobs move.
    proxy.add("throttle", path="/blobs/", times=-1, rate=THROTTLE_RATE)
    record = tmp_path / "push-progress.json"
    # A record of an earlier run is replaced at once.
    record.write_text(json.dumps({"done": True, "phase": "finished"}))
    destination = "%s/progress/push:1.0" % proxy.host
    with RecordWatcher(str(record)) as watcher:
        pushed = ansible.module(
            "ironcore.image.ironcore_image_push",
            {
                "layout": layout,
                "name": name,
                "destination": destination,
                "plain_http": True,
                "progress_file": str(record),
            },
        )
    assert pushed.get("failed") is not True, pushed
    # Every blob the image reaches (layers and config): the registry had none of them.
    sent = plan_copy(LayoutStore(layout), [(name, name)]).graph.blobs
    final = final_record(str(record), sent)
    assert final["bytes_done"] == pushed["blobs"]["bytes_uploaded"], (final, pushed)
    assert any(r["phase"] == "copy" and 0 < r["bytes_done"] < r["bytes_total"] for r in watcher.seen), watcher.seen

    # Copy into a layout, through the same slow link.
    record = tmp_path / "copy-progress.json"
    with RecordWatcher(str(record)) as watcher:
        copied = ansible.module(
            "ironcore.image.ironcore_image_copy",
            {
                "source": {"name": destination, "plain_http": True},
                "destination": {"layout": str(tmp_path / "pulled")},
                "progress_file": str(record),
            },
        )
    assert copied.get("failed") is not True, copied
    final = final_record(str(record), sent)
    assert final["bytes_done"] == copied["blobs"]["bytes"], (final, copied)
    assert any(r["phase"] == "copy" and 0 < r["bytes_done"] < r["bytes_total"] for r in watcher.seen), watcher.seen

    # Nothing to send: a record with nothing to do, finished at once; check mode writes none.
    again = ansible.module(
        "ironcore.image.ironcore_image_copy",
        {
            "source": {"name": destination, "plain_http": True},
            "destination": {"layout": str(tmp_path / "pulled")},
            "progress_file": str(record),
        },
    )
    assert again["changed"] is False, again
    final_record(str(record), {})
    record.unlink()
    checked = ansible.module(
        "ironcore.image.ironcore_image_push",
        {"layout": layout, "name": name, "destination": destination, "plain_http": True, "progress_file": str(record)},
        check=True,
    )
    assert checked.get("failed") is not True and not record.exists(), checked

    # A record that cannot be written fails the task at once, in one line, before anything is sent.
    missing = tmp_path / "no-such-directory" / "progress.json"
    refused = ansible.module(
        "ironcore.image.ironcore_image_push",
        {
            "layout": layout,
            "name": name,
            "destination": destination + "-x",
            "plain_http": True,
            "progress_file": str(missing),
        },
    )
    assert refused.get("failed") is True and refused["msg"].startswith("progress_file: cannot write "), refused
    assert "\n" not in refused["msg"]
