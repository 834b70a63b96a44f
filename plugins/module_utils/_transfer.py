# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""The transfer policy every path shares: one backoff, one resumable reader, one parallel runner.

- `backoff_delay` is the one pause between retries: exponential from a base, jittered, capped,
  and a server's `Retry-After` (capped too) when it gave one. The registry client, the resumable
  reader and the referrers tag-schema rounds all use it.
- `ResumableRead` is the one receive loop: it reads a blob (or a range of it) into a sink,
  continues with a bounded range after an interruption, and counts only the attempts that gained
  nothing, since progress proves the link works. A copy into a layout, fetch's download and the
  delta's ranges are its subclasses; they differ only in where the bytes go and in their errors.
- `run_parallel` runs work on a few threads; the first error cancels what has not started and
  is raised once what runs has finished (nothing is left writing behind the caller's back).
"""

from __future__ import annotations

import random
import typing as t
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from ansible_collections.ironcore.image.plugins.module_utils import _stop
from ansible_collections.ironcore.image.plugins.module_utils._errors import ImageError

BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
RETRY_AFTER_CAP = 30.0
# Network read size while receiving a blob: a read broken by a reset loses what it gathered, at most
# this much; 64 KiB reads would cost a sixth of the CPU time in per-read overhead.
RECEIVE_CHUNK = 1024 * 1024

Item = t.TypeVar("Item")
Result = t.TypeVar("Result")


def backoff_delay(attempt: int, retry_after: str | None = None, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait before retry `attempt` (0-based): Retry-After when given, else jittered exponential."""
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), RETRY_AFTER_CAP)
    return min(BACKOFF_CAP, base * (2.0**attempt)) * random.uniform(0.8, 1.2)


class BlobStream(t.Protocol):
    """An open blob body; `offset` is the byte it starts at (0 when a server ignored Range)."""

    offset: int

    def iter_chunks(self, size: int) -> t.Iterator[t.Any]: ...

    def close(self) -> None: ...


class BlobLocation(t.NamedTuple):
    """A blob's address for a client that is not this collection: a URL, and the headers that authorize it."""

    url: str
    headers: dict[str, str]


class Interrupted(ImageError):
    """The stream ended before the bytes asked for; retryable."""


class ResumableRead:
    """Reads `size` bytes of a blob from byte `start` into a sink, resuming after interruptions.

    Subclasses say where the bytes go (`accept`, `restart`) and which errors callers see
    (`overrun`, `give_up`); `open_at` and `pause` may be replaced by the source's own.
    """

    def __init__(self, what: str, start: int, size: int, retries: int, backoff: float = BACKOFF_BASE):
        # What is read, for messages: "copying blob sha256:... from registry/repo".
        self.what = what
        self.start = start
        self.size = size
        self.retries = retries
        self.backoff = backoff
        self.received = 0

    # ---- what subclasses provide -------------------------------------------

    def open_at(self, offset: int, length: int | None) -> BlobStream:
        raise NotImplementedError

    def accept(self, chunk: t.Any) -> None:
        """Keep the next chunk; `self.received` already counts it."""
        raise NotImplementedError

    def restart(self) -> None:
        """The source answered a resume with the whole blob from byte 0: drop what was kept, or refuse."""
        raise NotImplementedError

    def overrun(self) -> ImageError:
        """The error for a source that sends more than was asked."""
        raise NotImplementedError

    def give_up(self, exc: ImageError) -> ImageError:
        """The error after `retries` attempts in a row gained nothing."""
        raise NotImplementedError

    def mismatch(self, answered: int, asked: int) -> ImageError:
        return ImageError(
            "%s failed: the source answered from byte %d when asked for byte %d" % (self.what, answered, asked)
        )

    def pause(self, failures: int) -> None:
        """Before the next attempt; `failures` counts from 1. A stop signal ends the wait, and the transfer."""
        _stop.STOPPED.wait(backoff_delay(failures - 1, base=self.backoff))
        _stop.check()

    def resumed(self, exc: ImageError) -> None:
        """A broken read is about to be resumed (or retried from where it stood)."""

    def length_of_request(self, offset: int) -> int | None:
        """A resumed read, or a range, asks for the bounded rest (bytes=X-Y); a whole blob asks openly."""
        return self.size - self.received if offset > 0 else None

    # ---- the loop ---------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        while self.received < self.size:
            before = self.received
            try:
                self._append()
                if self.received < self.size:
                    raise Interrupted(
                        "%s failed: the stream ended after %d of %d bytes" % (self.what, self.received, self.size),
                        retryable=True,
                    )
            except ImageError as exc:
                if not exc.retryable:
                    raise
                # Progress proves the link works: only attempts that gained nothing count.
                failures = 0 if self.received > before else failures + 1
                if failures > self.retries:
                    raise self.give_up(exc) from exc
                self.resumed(exc)
                # After an attempt that gained something, the shortest pause.
                self.pause(max(failures, 1))

    def _append(self) -> None:
        offset = self.start + self.received
        stream = self.open_at(offset, self.length_of_request(offset))
        try:
            if stream.offset != offset:
                if stream.offset != 0:
                    raise self.mismatch(stream.offset, offset)
                self.restart()
                self.received = 0
            for chunk in stream.iter_chunks(RECEIVE_CHUNK):
                # A stop signal ends the transfer between chunks; what arrived stays where the sink put it.
                _stop.check()
                if self.received + len(chunk) > self.size:
                    raise self.overrun()
                self.received += len(chunk)
                self.accept(chunk)
        finally:
            stream.close()


def run_parallel(
    concurrency: int,
    function: t.Callable[[Item], Result],
    items: t.Sequence[Item],
    discard: t.Callable[[Result], None] | None = None,
) -> list[Result]:
    """`function` over `items` on up to `concurrency` threads, results in order.

    The first error cancels what has not started; it is raised once what runs has finished, after
    `discard` was given every result that did finish (so a caller can undo work that is now useless).
    """
    if concurrency <= 1 or len(items) <= 1:
        results: list[Result] = []
        try:
            for item in items:
                results.append(function(item))
        except BaseException:
            if discard is not None:
                for result in results:
                    discard(result)
            raise
        return results
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
        not_done = wait(futures, return_when=FIRST_EXCEPTION).not_done
        for future in not_done:
            future.cancel()
        wait(not_done)
    failure = next(
        (future.exception() for future in futures if not future.cancelled() and future.exception() is not None), None
    )
    if failure is None:
        return [future.result() for future in futures]
    if discard is not None:
        for future in futures:
            if not future.cancelled() and future.exception() is None:
                discard(future.result())
    raise failure
