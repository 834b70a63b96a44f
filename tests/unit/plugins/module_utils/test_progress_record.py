from __future__ import annotations

import json
import threading

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._copy import _ProgressCounter
from ansible_collections.ironcore.image.plugins.module_utils._fetch import transfer_rate
from ansible_collections.ironcore.image.plugins.module_utils._progress import (
    ProgressFileError,
    ProgressRecorder,
    recording,
)
from ansible_collections.ironcore.image.plugins.module_utils._upload import ByteCounter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def read(path) -> dict:
    with open(path, "rb") as stream:
        return json.load(stream)


def test_record_is_written_on_start_then_only_when_due(tmp_path):
    path = tmp_path / "progress.json"
    clock = Clock()
    recorder = ProgressRecorder(str(path), interval=0.5, every_bytes=1000, clock=clock, wall_clock=lambda: 1.0e9)
    recorder.start("rootfs", 5000)
    first = read(path)
    assert first["bytes_done"] == 0 and first["bytes_total"] == 5000 and first["done"] is False

    recorder.advance("rootfs", 400)
    assert read(path) == first  # neither interval nor byte budget reached: no write
    clock.now += 0.6
    recorder.advance("rootfs", 100)
    assert read(path)["bytes_done"] == 500  # the interval passed
    recorder.advance("rootfs", 1000)
    assert read(path)["layers"]["rootfs"] == {"bytes_done": 1500, "bytes_total": 5000}  # the byte budget passed

    recorder.finish()
    final = read(path)
    assert final["done"] is True and final["phase"] == "finished"
    assert final["started"] == 1.0e9 and final["updated"] == 1.0e9


def test_start_again_starts_the_layer_over_and_totals_add_up(tmp_path):
    path = tmp_path / "progress.json"
    recorder = ProgressRecorder(str(path), interval=0.0)
    recorder.start("kernel", 10)
    recorder.start("initramfs", 20)
    recorder.advance("kernel", 7)
    recorder.start("kernel", 10)
    recorder.advance("initramfs", 20)
    record = read(path)
    assert record["layers"]["kernel"]["bytes_done"] == 0
    assert (record["bytes_done"], record["bytes_total"]) == (20, 30)


def test_failure_is_not_done(tmp_path):
    path = tmp_path / "progress.json"
    recorder = ProgressRecorder(str(path))
    recorder.set_phase("download")
    assert read(path)["phase"] == "download"
    recorder.finish("failed", done=False)
    assert read(path)["phase"] == "failed" and read(path)["done"] is False


def test_threads_lose_no_bytes(tmp_path):
    path = tmp_path / "progress.json"
    recorder = ProgressRecorder(str(path), interval=0.0)
    recorder.start("rootfs", 8 * 1000)

    def work() -> None:
        for _step in range(1000):
            recorder.advance("rootfs", 1)

    threads = [threading.Thread(target=work) for _number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.finish()
    assert read(path)["bytes_done"] == 8000


def test_an_unwritable_record_does_not_stop_the_transfer_until_the_end(tmp_path):
    recorder = ProgressRecorder(str(tmp_path / "missing" / "progress.json"), interval=0.0)
    recorder.start("rootfs", 10)
    recorder.advance("rootfs", 10)
    assert recorder.snapshot()["bytes_done"] == 10


def test_transfer_rate():
    assert transfer_rate(0, 2.0) == {"elapsed": 2.0, "bytes_per_second": 0}
    assert transfer_rate(1000, 0.0) == {"elapsed": 0.0, "bytes_per_second": 0}
    assert transfer_rate(1000, 0.5) == {"elapsed": 0.5, "bytes_per_second": 2000}


def test_recording_replaces_at_once_and_ends_finished_or_failed(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text(json.dumps({"done": True, "phase": "finished"}))
    with recording(str(path)) as recorder:
        assert recorder is not None
        # An earlier run's "done" is gone before the first byte.
        assert read(path)["phase"] == "plan" and read(path)["done"] is False
        recorder.start("sha256:aa", 10)
        recorder.advance("sha256:aa", 10)
    assert read(path)["phase"] == "finished" and read(path)["done"] is True and read(path)["bytes_done"] == 10

    with pytest.raises(KeyboardInterrupt), recording(str(path)) as recorder:
        raise KeyboardInterrupt
    assert read(path)["phase"] == "failed" and read(path)["done"] is False

    with recording(None) as recorder:
        assert recorder is None


def test_recording_to_a_path_that_cannot_be_written_is_one_line(tmp_path):
    missing = tmp_path / "missing" / "progress.json"
    with pytest.raises(ProgressFileError, match=r"^progress_file: cannot write .*missing/progress\.json: "), recording(
        str(missing)
    ):
        pass


def test_a_resent_upload_counts_no_more_than_the_blob(tmp_path):
    path = tmp_path / "progress.json"
    recorder = ProgressRecorder(str(path), interval=0.0)
    shared = ByteCounter()
    counter = _ProgressCounter(shared, recorder, "sha256:bb", 100)
    counter.add(80)
    counter.add(80)  # a retry sends the first bytes again
    assert shared.value == 160  # what went over the network
    assert read(path)["layers"]["sha256:bb"]["bytes_done"] == 100
