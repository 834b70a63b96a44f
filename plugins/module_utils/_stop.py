# Copyright (c) IronCore image collection contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
#
# Private to the ironcore.image collection: no compatibility promise for
# anything outside it.

"""Stop means stop: SIGINT, SIGTERM and SIGHUP end the module process within seconds.

ansible-playbook forwards Ctrl-C (SIGINT) to its workers, which pass it on to
the module's process group; AWX cancels with SIGTERM; a closed terminal sends
SIGHUP. Python turns SIGINT into KeyboardInterrupt in the main thread only,
and the main thread then waits for transfer threads blocked in socket reads:
the module lived on and finished the download (or the upload) alone.

Here a signal sets STOPPED (transfer loops check it between chunks and stop),
raises Interrupted in the main thread so it unwinds (records what arrived,
marks the progress record failed), and arms a watchdog that ends the process
after GRACE seconds whatever a blocked thread is doing. The process then ends
with os._exit: the kernel closes sockets and releases every flock, and partial
files stay on disk as written, so the next run resumes them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import typing as t

# Set once a stop signal arrived; transfer loops check it between chunks.
STOPPED = threading.Event()
# Seconds the main thread gets to unwind before the process ends regardless.
GRACE = 3.0
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_finishing = threading.Lock()


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, so that no `except Exception` retry or failover swallows it."""


def message(signum: int) -> str:
    """The one line a stopped module fails with."""
    return "interrupted by %s; partial downloads are kept and the next run resumes" % signal.Signals(signum).name


def check() -> None:
    """Raise Interrupted when a stop signal arrived (called between chunks of a transfer)."""
    if STOPPED.is_set():
        raise Interrupted("interrupted; partial downloads are kept and the next run resumes")


def install(fail: t.Callable[[str], None]) -> dict[int, t.Any]:
    """Handle the stop signals for this process; `fail` reports the one-line failure (it may not return).

    Returns the handlers it replaced, for restore().
    """

    def handler(signum: int, _frame: t.Any) -> None:
        if STOPPED.is_set():
            # A second Ctrl-C while unwinding: the watchdog already ends the process.
            return
        STOPPED.set()
        line = message(signum)
        threading.Thread(target=_watchdog, args=(fail, line), name="stop-watchdog", daemon=True).start()
        raise Interrupted(line)

    return {signum: signal.signal(signum, handler) for signum in SIGNALS}


def restore(previous: t.Mapping[int, t.Any]) -> None:
    """Put back the handlers install() replaced (the transfer is over; a test process keeps its own)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _watchdog(fail: t.Callable[[str], None], line: str) -> None:
    # A thread blocked in a read of a throttled link may hold the main thread's unwinding up.
    threading.Event().wait(GRACE)
    finish(fail, line)


def finish(fail: t.Callable[[str], None], line: str) -> t.NoReturn:
    """Report `line` once and end the process now, without waiting for any thread.

    sys.exit would wait for the transfer threads (the interpreter joins them
    at exit), which is exactly what must not happen; whoever comes second
    (the main thread or the watchdog) waits here until the first ends the process.
    """
    with _finishing:
        try:
            fail(line)
        except BaseException:  # pylint: disable=broad-exception-caught  # fail_json ends with SystemExit
            pass
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    # Nobody reads any more (the worker that started us is gone).
                    pass
            os._exit(1)
