"""The user guide's background fetch with progress, run as written against a registry that holds a blob back."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from helpers.ansible import task_results
from helpers.images import skopeo_push
from test_user_guide import guide_plays  # type: ignore[import-not-found]  # pytest puts this directory on sys.path

from ansible_collections.ironcore.image.plugins.module_utils._build import build_image

pytestmark = pytest.mark.integration

ROOTFS_SIZE = 24 * 1024 * 1024
# How long the proxy holds the rootfs back, part-way: the play polls every second meanwhile.
HOLD_SECONDS = 4.0


def test_guide_progress_play_sees_the_fetch_move_and_end(ansible, registry_plain, fault_proxy, tmp_path):
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

    plays = guide_plays()
    (tmp_path / "fetch-progress.yml").write_text(plays["progress"])
    (tmp_path / "fetch-progress-round.yml").write_text(plays["progress-round"])
    boot = tmp_path / "boot"
    rc, document, stderr = ansible.playbook(
        str(tmp_path / "fetch-progress.yml"), extra_vars={"registry": proxy.host, "boot_dir": str(boot)}
    )
    results = task_results(document)
    assert rc == 0, (stderr, [result.get("msg") for _task, _host, result in results])
    assert hold.hits == 1, proxy.log

    read = [
        json.loads(base64.b64decode(result["content"]))
        for task, _host, result in results
        if task == "Read the progress record" and result.get("content")
    ]
    assert any(not record["done"] and record["bytes_done"] < record["bytes_total"] for record in read), read
    printed = [result["msg"] for task, _host, result in results if task == "Print the progress" and "msg" in result]
    assert any(" of 24.0 MiB" in line for line in printed), printed

    with open(boot / ".ironcore" / "progress.json", "rb") as stream:
        final = json.load(stream)
    assert final["done"] is True and final["phase"] == "finished", final
    assert final["bytes_done"] == final["bytes_total"] == ROOTFS_SIZE
    assert final["layers"] == {"rootfs": {"bytes_done": ROOTFS_SIZE, "bytes_total": ROOTFS_SIZE}}

    (status,) = [r for task, _host, r in results if task == "Ask whether the fetch has ended" and r.get("finished")]
    assert status["bytes_downloaded"] == ROOTFS_SIZE and status["retries"] == 0, status
    # elapsed is rounded to milliseconds in the result, the rate is not.
    assert status["elapsed"] > 0 and status["bytes_per_second"] > 0, status
    assert abs(status["bytes_per_second"] * status["elapsed"] - ROOTFS_SIZE) <= ROOTFS_SIZE * 0.01, status
    assert hashlib.sha256((boot / "rootfs").read_bytes()).hexdigest() == digest.split(":", 1)[1]
