from __future__ import annotations

import json
import threading
import time

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


class Timer:
    def __init__(self, delay, action) -> None:
        self.delay = delay
        self.action = action
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """Holds the writes a recorder schedules; the test fires them."""

    def __init__(self) -> None:
        self.pending: list[Timer] = []

    def __call__(self, delay, action) -> Timer:
        timer = Timer(delay, action)
        self.pending.append(timer)
        return timer

    def fire_all(self) -> None:
        timers, self.pending = self.pending, []
        for timer in timers:
            if not timer.cancelled:
                timer.action()


def read(path) -> dict:
    with open(path, "rb") as stream:
        return json.load(stream)


def test_record_is_written_on_start_then_only_when_due(tmp_path):
    path = tmp_path / "progress.json"
    clock = Clock()
    recorder = ProgressRecorder(
        str(path), interval=0.5, every_bytes=1000, clock=clock, wall_clock=lambda: 1.0e9, schedule=Timers()
    )
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


def test_bytes_of_a_transfer_that_stalls_are_written_when_the_interval_is_over(tmp_path):
    path = tmp_path / "progress.json"
    clock = Clock()
    timers = Timers()
    recorder = ProgressRecorder(str(path), interval=0.5, every_bytes=1000, clock=clock, schedule=timers)
    recorder.start("rootfs", 5000)
    clock.now += 0.2
    recorder.advance("rootfs", 300)
    recorder.advance("rootfs", 100)
    assert [timer.delay for timer in timers.pending] == [pytest.approx(0.3)]  # one write, when the interval is over
    assert read(path)["bytes_done"] == 0

    timers.fire_all()  # no more bytes came: the timer writes what did
    assert read(path)["bytes_done"] == 400

    timers.fire_all()
    clock.now += 0.6
    recorder.advance("rootfs", 100)  # due: written at once, nothing scheduled
    assert read(path)["bytes_done"] == 500 and timers.pending == []


def test_a_write_pending_at_the_end_never_replaces_the_final_record(tmp_path):
    path = tmp_path / "progress.json"
    timers = Timers()
    recorder = ProgressRecorder(str(path), interval=0.5, every_bytes=1000, schedule=timers)
    recorder.start("rootfs", 5000)
    recorder.advance("rootfs", 400)
    pending = list(timers.pending)
    recorder.finish("failed", done=False)
    assert [timer.cancelled for timer in pending] == [True]
    for timer in pending:  # a timer already running when finish came
        timer.action()
    assert read(path)["phase"] == "failed" and read(path)["bytes_done"] == 400


def test_the_real_timer_writes_the_bytes_of_a_stalled_transfer(tmp_path):
    path = tmp_path / "progress.json"
    recorder = ProgressRecorder(str(path), interval=0.05)
    recorder.start("rootfs", 5000)
    recorder.advance("rootfs", 400)
    seen = [read(path)]
    while seen[-1]["bytes_done"] != 400 and len(seen) < 200:  # no more bytes come: the timer must write these
        time.sleep(0.05)
        seen.append(read(path))
    recorder.finish()
    assert seen[-1]["bytes_done"] == 400 and seen[-1]["done"] is False, seen[-1]


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
