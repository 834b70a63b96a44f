"""The one transfer policy: backoff, the resumable reader's counting, and the parallel runner."""

from __future__ import annotations

import threading
import typing as t

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError
from ansible_collections.ironcore.image.plugins.module_utils._transfer import (
    BACKOFF_CAP,
    RETRY_AFTER_CAP,
    ResumableRead,
    backoff_delay,
    run_parallel,
)

DATA = bytes(range(256)) * 64


def test_backoff_is_jittered_exponential_and_capped() -> None:
    assert 0.4 <= backoff_delay(0, base=0.5) <= 0.6
    assert 1.6 <= backoff_delay(2, base=0.5) <= 2.4
    assert backoff_delay(30, base=0.5) <= BACKOFF_CAP * 1.2


def test_backoff_honours_a_numeric_retry_after_within_its_cap() -> None:
    assert backoff_delay(0, "3") == 3.0
    assert backoff_delay(0, "100000") == RETRY_AFTER_CAP
    # An HTTP date is not honoured: the exponential backoff applies.
    assert backoff_delay(0, "Wed, 21 Oct 2026 07:28:00 GMT", base=0.5) <= 0.6


class _Stream:
    def __init__(self, data: bytes, offset: int, cut: int | None):
        self.offset = offset
        self._data = data
        self._cut = cut

    def iter_chunks(self, size: int) -> t.Iterator[bytes]:
        end = len(self._data) if self._cut is None else min(len(self._data), self._cut)
        for start in range(0, end, 1000):
            yield self._data[start : min(start + 1000, end)]
        if self._cut is not None:
            raise ImageError("connection reset", retryable=True)

    def close(self) -> None:
        pass


class _Reader(ResumableRead):
    """Reads DATA from a source whose streams break after the given number of bytes, once per entry."""

    def __init__(self, cuts: list[int | None], retries: int, start: int = 0, ignore_range: bool = False):
        super().__init__("reading", start, len(DATA) - start, retries)
        self.cuts = cuts
        self.ignore_range = ignore_range
        self.out = bytearray()
        self.requests: list[tuple[int, int | None]] = []
        self.pauses: list[int] = []

    def open_at(self, offset: int, length: int | None) -> _Stream:
        self.requests.append((offset, length))
        cut = self.cuts.pop(0) if self.cuts else None
        start = 0 if self.ignore_range else offset
        return _Stream(DATA[start:], start, cut)

    def accept(self, chunk: t.Any) -> None:
        self.out += chunk

    def restart(self) -> None:
        self.out.clear()

    def overrun(self) -> ImageError:
        return ImageError("too long")

    def give_up(self, exc: ImageError) -> ImageError:
        return ImageError("gave up: %s" % exc)

    def pause(self, failures: int) -> None:
        self.pauses.append(failures)


def test_progress_resets_the_count_of_attempts_that_gained_nothing() -> None:
    # Five breaks, each after some bytes: more than `retries`, yet every attempt gained something.
    reader = _Reader([1500, 1500, 1500, 1500, 1500], retries=1)
    reader.run()
    assert bytes(reader.out) == DATA
    assert reader.pauses == [1, 1, 1, 1, 1]
    # Every resume asks for the bounded rest.
    assert reader.requests[0] == (0, None)
    assert all(length == len(DATA) - offset for offset, length in reader.requests[1:])


def test_attempts_that_gain_nothing_give_up_after_retries() -> None:
    reader = _Reader([1000, 0, 0, 0], retries=2)
    with pytest.raises(ImageError, match="gave up: connection reset"):
        reader.run()
    assert reader.pauses == [1, 1, 2]
    assert len(reader.out) == 1000


def test_a_source_that_ignores_range_starts_over() -> None:
    reader = _Reader([1000], retries=1, ignore_range=True)
    reader.run()
    assert bytes(reader.out) == DATA


def test_a_range_is_bounded_from_its_first_request() -> None:
    reader = _Reader([], retries=0, start=100)
    reader.run()
    assert bytes(reader.out) == DATA[100:]
    assert reader.requests == [(100, len(DATA) - 100)]


def test_run_parallel_keeps_order_and_raises_the_first_error_after_discarding() -> None:
    assert run_parallel(3, lambda n: n * 2, [1, 2, 3, 4]) == [2, 4, 6, 8]
    discarded: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    def discard(n: int) -> None:
        with lock:
            discarded.append(n)

    for concurrency in (1, 2):
        discarded.clear()
        with pytest.raises(ValueError, match="two"):
            run_parallel(concurrency, work, [1, 2], discard=discard)
        assert discarded == [1]
