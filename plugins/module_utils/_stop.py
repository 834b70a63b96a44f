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

When the process that started the module's session ends instead (the
controller got SIGHUP or SIGKILL; its workers live on, orphaned), the module
treats that as SIGHUP.

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

    previous: dict[int, t.Any] = {int(signum): signal.signal(signum, handler) for signum in SIGNALS}
    _watch_starter()
    return previous


def restore(previous: t.Mapping[int, t.Any]) -> None:
    """Put back the handlers install() replaced (the transfer is over; a test process keeps its own)."""
    _watching.clear()
    for signum, handler in previous.items():
        signal.signal(signum, handler)


# ---- a starter that is gone -------------------------------------------------------------------------

# Set while the watcher runs; restore() clears it.
_watching = threading.Event()
WATCH_INTERVAL = 0.5


def _process_start(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc; None when it is gone (or there is no /proc)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stream:
            text = stream.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")".
    fields = text[text.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        # Ended, not yet reaped.
        return None
    return int(fields[1]), int(fields[19])


def starters() -> dict[int, int]:
    """The processes that started our session, by pid with their start time: its leader and the leader's parent.

    ansible-playbook's worker starts each module in a session of its own and
    forwards SIGINT and SIGTERM to it; nothing tells the module when the
    controller itself dies (SIGHUP from a closed terminal, SIGKILL). The
    leader's parent is that controller (or, over SSH, the connection's sshd);
    an async task's leader is async_wrapper's daemon, whose parent is init,
    never watched.
    """
    found: dict[int, int] = {}
    try:
        leader = os.getsid(0)
    except OSError:
        return found
    pid = leader
    for _generation in range(2):
        if pid <= 1:
            break
        known = _process_start(pid)
        if known is None:
            break
        found[pid] = known[1]
        pid = known[0]
    return found


def _watch_starter() -> None:
    watched = starters()
    if not watched:
        return
    _watching.set()
    threading.Thread(target=_watch, args=(watched,), name="stop-starter-watch", daemon=True).start()


def _watch(watched: t.Mapping[int, int]) -> None:
    # A process that ended, or a pid reused by another (its start time differs), counts as a hang-up.
    while _watching.is_set() and not STOPPED.is_set():
        for pid, started in watched.items():
            known = _process_start(pid)
            if known is None or known[1] != started:
                if _watching.is_set():
                    os.kill(os.getpid(), signal.SIGHUP)
                return
        threading.Event().wait(WATCH_INTERVAL)


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
