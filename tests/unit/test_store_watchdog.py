"""The store's watchdog thread: it calls back, in the Trio thread, for an attempt still running
at its wall-clock deadline, and for nothing else. (The store's use of it on the real engines is
tests/storage/test_db_timeout.py.) Waits are on events; ``fail_after`` is a safety net."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from imc_actors.store.watchdog import Watchdog

SAFETY = 10  # seconds; never reached unless the watchdog misses a deadline


class Attempt:
    def __init__(self, in_seconds: float) -> None:
        self.deadline = time.monotonic() + in_seconds
        self.finished = threading.Event()


@contextmanager
def running() -> Iterator[Watchdog]:
    watchdog = Watchdog(trio.lowlevel.current_trio_token())
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()


def recorder(calls: list[tuple[str, bool]], name: str, fired: trio.Event | None = None):
    def on_late() -> None:
        calls.append((name, threading.current_thread() is threading.main_thread()))
        if fired is not None:
            fired.set()

    return on_late


async def test_an_attempt_past_its_deadline_is_called_back_in_the_trio_thread():
    calls: list[tuple[str, bool]] = []
    fired = trio.Event()
    with running() as watchdog:
        watchdog.watch(Attempt(0.01), recorder(calls, "late", fired))
        with trio.fail_after(SAFETY):
            await fired.wait()
    assert calls == [("late", True)]


async def test_a_finished_or_cleared_attempt_is_not_called_back():
    calls: list[tuple[str, bool]] = []
    fired = trio.Event()
    with running() as watchdog:
        finished = Attempt(0.0)
        finished.finished.set()
        watchdog.watch(finished, recorder(calls, "finished"))
        cleared = Attempt(0.0)
        watchdog.watch(cleared, recorder(calls, "cleared"))
        watchdog.done(cleared)
        # The thread takes them in order; the last one, unfinished, shows it has looked.
        watchdog.watch(Attempt(0.02), recorder(calls, "stuck", fired))
        with trio.fail_after(SAFETY):
            await fired.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert calls == [("stuck", True)]


async def test_a_later_deadline_is_kept_while_the_thread_sleeps_towards_an_earlier_one():
    # The thread is not woken for a deadline later than the one it sleeps towards: it must
    # still find the new attempt when it wakes, and call back at that attempt's deadline.
    calls: list[tuple[str, bool]] = []
    fired = trio.Event()
    with running() as watchdog:
        first = Attempt(0.05)
        watchdog.watch(first, recorder(calls, "first"))
        first.finished.set()
        watchdog.done(first)
        second = Attempt(0.1)
        watchdog.watch(second, recorder(calls, "second", fired))
        with trio.fail_after(SAFETY):
            await fired.wait()
        assert time.monotonic() >= second.deadline
    assert calls == [("second", True)]


async def test_stop_ends_the_thread():
    watchdog = Watchdog(trio.lowlevel.current_trio_token())
    watchdog.start()
    watchdog.watch(Attempt(3600), lambda: None)
    watchdog.stop()
    await trio.to_thread.run_sync(watchdog._thread.join, SAFETY)
    assert not watchdog._thread.is_alive()
