# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""A small progress record that a long transfer keeps up to date while it runs.

An operator (or a task polling an `async` job) reads it to see how far the
transfer is; it is replaced atomically, so a reader never sees half a record.

API (every method is thread-safe; one recorder is shared by a transfer's workers):

    recorder = ProgressRecorder(path)
    recorder.set_phase("download") # what the task does now; written at once (phases are few)
    recorder.start(layer, total)   # layer (any name: a role, a digest) will move `total` bytes;
                                   # called again for the same layer, it starts that layer over at 0
    recorder.advance(layer, n)     # n more bytes of layer are done (called per chunk: cheap)
    recorder.finish()              # done: the final record, with "done": true, is written now
    recorder.finish("failed", done=False)   # or: the transfer stopped; pollers stop waiting on "phase"

    with recording(path) as recorder:   # push and copy: None without a path; the first record is written
        ...                             # at once (ProgressFileError when it cannot be), the last on leaving

`advance` only counts; the record is written when `interval` seconds or
`every_bytes` bytes have passed since the last write, never per chunk, so
the hot path stays a lock and an addition. Bytes counted between two writes
are written by a timer at most `interval` seconds later even when no more
arrive: a transfer that stalls shows how far it got, not where the last
write happened to fall. The record (JSON):

    {"version": 1, "phase": "download", "done": false,
     "started": <unix time>, "updated": <unix time>,
     "bytes_done": <int>, "bytes_total": <int>,
     "layers": {"<layer>": {"bytes_done": <int>, "bytes_total": <int>}}}

A failed write of an intermediate record is ignored: visibility must never
break the transfer it describes. The final one is written by `finish`, whose
errors are the caller's.
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing as t

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._io import write_bytes_atomic
from ansible_collections.ironcore.image.plugins.module_utils._manifest import canonical_json

PROGRESS_FILE = "progress.json"
PROGRESS_VERSION = 1
# How often the record may be rewritten while a transfer runs.
DEFAULT_INTERVAL = 0.5
DEFAULT_EVERY_BYTES = 64 * 1024 * 1024


class _Cancellable(t.Protocol):
    def cancel(self) -> None: ...


def _start_timer(delay: float, action: t.Callable[[], None]) -> _Cancellable:
    timer = threading.Timer(delay, action)
    # A pending write must never keep the module's process alive.
    timer.daemon = True
    timer.start()
    return timer


class ProgressFileError(ImageError):
    """The progress record cannot be written where the task asked for it; one line."""


class ProgressRecorder:
    """Counts the bytes of each layer and writes the record now and then; see the module docstring."""

    def __init__(
        self,
        path: str,
        phase: str = "start",
        interval: float = DEFAULT_INTERVAL,
        every_bytes: int = DEFAULT_EVERY_BYTES,
        clock: t.Callable[[], float] = time.monotonic,
        wall_clock: t.Callable[[], float] = time.time,
        schedule: t.Callable[[float, t.Callable[[], None]], _Cancellable] = _start_timer,
    ):
        self.path = path
        self.phase = phase
        self._interval = interval
        self._every_bytes = every_bytes
        self._clock = clock
        self._wall_clock = wall_clock
        self._schedule = schedule
        self._pending_flush: _Cancellable | None = None
        self._lock = threading.Lock()
        # Writes happen outside _lock, so workers never wait for the disk; this orders them.
        self._write_lock = threading.Lock()
        self._layers: dict[str, list[int]] = {}
        self._done = False
        self._finished = False
        self._started = wall_clock()
        self._last_write = clock()
        self._bytes_since_write = 0
        self._sequence = 0
        self._written_sequence = -1

    def start(self, layer: str, total: int) -> None:
        """`layer` will move `total` bytes; it (re)starts at 0."""
        with self._lock:
            self._layers[layer] = [0, int(total)]
            record = self._due_record(force=True)
        self._write(record, final=False)

    def advance(self, layer: str, n: int) -> None:
        """`n` more bytes of `layer` are done."""
        with self._lock:
            entry = self._layers.setdefault(layer, [0, 0])
            entry[0] += n
            self._bytes_since_write += n
            record = self._due_record(force=False)
            if record is None:
                self._flush_later()
        if record is not None:
            self._write(record, final=False)

    def set_phase(self, phase: str) -> None:
        """What the task does now (plan, download, commit...); written at once, phases change seldom."""
        with self._lock:
            self.phase = phase
            record = self._due_record(force=True)
        self._write(record, final=False)

    def finish(self, phase: str = "finished", done: bool = True) -> None:
        """The transfer is over: write the final record now (done: false when it failed)."""
        with self._lock:
            self.phase = phase
            self._done = done
            self._finished = True
            pending, self._pending_flush = self._pending_flush, None
            record = self._due_record(force=True)
        if pending is not None:
            pending.cancel()
        self._write(record, final=True)

    def begin(self, phase: str) -> None:
        """Like set_phase, but a record that cannot be written is an OSError: the path is the caller's to fix."""
        with self._lock:
            self.phase = phase
            record = self._due_record(force=True)
        self._write(record, final=True)

    def snapshot(self) -> dict[str, t.Any]:
        """The record as it would be written now."""
        with self._lock:
            return self._record()

    def _flush_later(self) -> None:
        """Under _lock: have the bytes counted but not written written once the interval is over."""
        if self._pending_flush is not None or self._finished:
            return
        delay = max(0.0, self._interval - (self._clock() - self._last_write))
        self._pending_flush = self._schedule(delay, self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._pending_flush = None
            # Written meanwhile by a worker, or over: the final record must stay the last.
            if self._finished or self._bytes_since_write == 0:
                return
            record = self._due_record(force=True)
        self._write(record, final=False)

    def _due_record(self, force: bool) -> tuple[int, dict[str, t.Any]] | None:
        """Under _lock: the record to write when one is due (or forced), else None."""
        now = self._clock()
        if not force and now - self._last_write < self._interval and self._bytes_since_write < self._every_bytes:
            return None
        self._last_write = now
        self._bytes_since_write = 0
        self._sequence += 1
        return self._sequence, self._record()

    def _record(self) -> dict[str, t.Any]:
        layers = {name: {"bytes_done": done, "bytes_total": total} for name, (done, total) in self._layers.items()}
        return {
            "version": PROGRESS_VERSION,
            "phase": self.phase,
            "done": self._done,
            "started": round(self._started, 3),
            "updated": round(self._wall_clock(), 3),
            "bytes_done": sum(entry["bytes_done"] for entry in layers.values()),
            "bytes_total": sum(entry["bytes_total"] for entry in layers.values()),
            "layers": layers,
        }

    def _write(self, record: tuple[int, dict[str, t.Any]] | None, final: bool) -> None:
        if record is None:
            return
        sequence, document = record
        with self._write_lock:
            # A worker that was slower to get here must not put an older record over a newer one.
            if sequence <= self._written_sequence:
                return
            try:
                write_bytes_atomic(self.path, canonical_json(document))
            except OSError:
                if final:
                    raise
                return
            self._written_sequence = sequence


@contextlib.contextmanager
def recording(path: str | None, phase: str = "plan") -> t.Iterator[ProgressRecorder | None]:
    """A recorder writing to `path` for the time of the block (None when there is no path).

    The first record replaces an earlier run's at once, so a poller never takes
    its "done" for this run's; when it cannot be written, ProgressFileError
    (the option is `progress_file`, as push and copy call it). Leaving the
    block writes the final record, "finished", or "failed" (done: false) when
    the block raised, whatever it raised.
    """
    if not path:
        yield None
        return
    recorder = ProgressRecorder(path)
    try:
        recorder.begin(phase)
    except OSError as exc:
        raise ProgressFileError(
            "progress_file: cannot write %s: %s; give a path in a directory that exists and that the task's user"
            " may write to" % (path, exc.strerror or exc),
            option="progress_file",
        ) from exc
    try:
        yield recorder
    except BaseException:
        # The transfer's own error is what the user must see.
        with contextlib.suppress(OSError):
            recorder.finish("failed", done=False)
        raise
    recorder.finish()
