"""One thread that enforces the store's wall-clock deadline on the transaction in flight.

The store gives every batch ``db_timeout`` seconds of wall-clock time (see
:mod:`.writer`). A Trio timer cannot watch it: on a virtual clock (tests) it would fire at once
while the loop only waits for the worker thread. Before, each batch started a second worker
thread that waited for the first one's end with a timeout, and a task that cancelled the first
one's wait when it ran out: two thread hand-offs, a nursery and a cancellation per commit,
about four times the cost of the commit's own hand-off to its thread when the transaction is
small.

:class:`Watchdog` is one daemon thread per running store instead. :meth:`Watchdog.watch` names
the attempt in flight and what to call (in the Trio thread) if it is still unfinished at its
deadline; :meth:`Watchdog.done` clears it. Neither wakes the thread while it sleeps towards an
earlier or equal deadline: deadlines only move forward (each is ``now + db_timeout``), so the
thread wakes at most once per deadline, and once per batch only when batches are far apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import trio


class Deadline(Protocol):
    """What the watchdog needs of an attempt: its wall-clock deadline and whether it ended."""

    deadline: float  # time.monotonic()
    finished: threading.Event


class Watchdog:
    """Calls ``on_late`` in the Trio thread when the watched attempt misses its deadline."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._cond = threading.Condition(threading.Lock())
        self._current: tuple[Deadline, Callable[[], None]] | None = None
        self._sleeping_until: float | None = None  # None: idle (no attempt), or not sleeping
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="imc-store-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (it is not waited for: it only sleeps)."""
        with self._cond:
            self._stopped = True
            self._current = None
            self._cond.notify()

    def watch(self, attempt: Deadline, on_late: Callable[[], None]) -> None:
        """From now until :meth:`done`, ``attempt`` is the one in flight."""
        with self._cond:
            self._current = (attempt, on_late)
            until = self._sleeping_until
            if until is None or attempt.deadline < until:
                self._cond.notify()

    def done(self, attempt: Deadline) -> None:
        """``attempt`` is no longer in flight (it ended or was given up on)."""
        with self._cond:
            if self._current is not None and self._current[0] is attempt:
                self._current = None

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                current = self._current
                if current is None:
                    self._sleeping_until = None
                    self._cond.wait()
                    continue
                attempt, on_late = current
                remaining = attempt.deadline - time.monotonic()
                if remaining > 0:
                    self._sleeping_until = attempt.deadline
                    self._cond.wait(remaining)
                    self._sleeping_until = None
                    continue
                self._current = None  # fire once
                if attempt.finished.is_set():
                    continue
                try:
                    self._token.run_sync_soon(on_late)
                except trio.RunFinishedError:
                    return
