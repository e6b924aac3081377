"""Commits on the event loop's thread for an SQLite file, with the flush in another process.

Why (bench/RESULTS.md, "The writer thread and the GIL"): the store's writer thread shares the
GIL with the event loop. Every statement it runs hands the GIL back and forth with a loop that
is rarely idle, so under load a commit of a few microseconds of SQLite work waits tens to
hundreds of milliseconds for the GIL, and a room's commands wait with it (a busy room's
mailbox fills and its senders get 503s while the CPU is not busy). With SQLite the work of a
commit is small; what must not run on the loop is the flush (an fsync can take milliseconds,
or forever on a failed disk).

So for an SQLite database file the store (:class:`~.writer.Store`) first tries each batch on
the loop's own thread inside :meth:`~.repository.Repository.unflushed_writes`: the COMMIT
appends to the write-ahead log without an fsync and without waiting for a lock. Then
:class:`WalSync` has a small helper process (its own interpreter, no GIL shared) fsync the
WAL file, and only then are the commits reported durable: on disk before the answer, as with
``synchronous=FULL``. The batch goes to the writer thread as before when the limiter is busy
(a read is running), when another connection holds the write lock
(:class:`~.repository.LockBusy`: nothing was written), and every :data:`CHECKPOINT_EVERY`
commits (a checkpoint flushes: the writer thread's commit does it). Only the store's own
:class:`~.repository.Repository` (optionally behind the metrics wrapper) is used this way,
never a wrapper that could block (fault injection); PostgreSQL and MariaDB always use the
thread.

The helper is started on the first inline commit and answers one byte per request: ``k``
after a successful fsync, ``e`` and the error number when it failed (the batch then fails as
a failed COMMIT does, with that reason). It reopens the WAL when SQLite replaced the file. It ignores SIGINT and SIGTERM (a
Ctrl-C or a signal to the process group reaches it too): it ends when its input does, that
is when the store stops or this process dies, however it dies. If it cannot be started or dies, the
fsync is done in a worker thread of this process (logged): slower, as durable; a new helper
is started for the first flush :data:`RESTART_AFTER` seconds later.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from typing import Any

import trio

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_EVERY", "RESTART_AFTER", "WalSync", "inline_repository"]

#: Inline commits between two commits in the writer thread (whose COMMIT checkpoints the WAL).
CHECKPOINT_EVERY = 256

#: Seconds after a helper was given up before a flush starts a new one.
RESTART_AFTER = 60.0

#: The helper: one byte in, fsync the WAL (reopened when its inode changed), one byte out.
_HELPER = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal: the server ends it
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a signalled process group: likewise
path, fd = sys.argv[1], -1
while os.read(0, 1):
    try:
        if fd >= 0 and os.fstat(fd).st_ino != os.stat(path).st_ino:
            os.close(fd)
            fd = -1
        if fd < 0:
            fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        answer = b"k"
    except OSError as exc:
        answer = b"e" + bytes([min(exc.errno or 5, 255)])
    os.write(1, answer)
"""


def inline_repository(backend: Any) -> Any | None:
    """The :class:`~.repository.Repository` behind ``backend`` when its commits may run inline
    (an SQLite file, the repository itself or the metrics wrapper around it), else None."""
    from ..control.metrics import TimedRepository
    from .repository import Repository

    inner = backend._repository if type(backend) is TimedRepository else backend
    if type(inner) is not Repository or inner.wal_path is None:
        return None
    return inner


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalSync:
    """Makes the WAL file at ``path`` durable, through a helper process (see the module)."""

    def __init__(self, path: str, *, restart_after: float = RESTART_AFTER) -> None:
        self.path = path
        self.helper_syncs = 0  # fsyncs the helper did
        self.thread_syncs = 0  # fsyncs done in a worker thread (no helper)
        self.helpers_started = 0
        self._process: trio.Process | None = None
        self._restart_after = restart_after
        self._start_after = -math.inf  # trio time: no helper is started before it
        self._given_up: list[trio.Process] = []  # killed, not reaped yet

    async def sync(self) -> None:
        """Return once the WAL is on disk; OSError when the fsync failed."""
        if self._process is None and trio.current_time() >= self._start_after:
            await self._start()
        process = self._process
        if process is not None:
            assert process.stdin is not None and process.stdout is not None
            try:
                await process.stdin.send_all(b"s")
                answer = await process.stdout.receive_some(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                answer = b""
            if answer == b"k":
                self.helper_syncs += 1
                return
            if answer == b"e":
                code = (await process.stdout.receive_some(1) or b"\x05")[0]
                raise OSError(code, os.strerror(code), self.path)
            self._give_up("it stopped answering")
        await trio.to_thread.run_sync(_fsync_file, self.path)
        self.thread_syncs += 1

    async def _start(self) -> None:
        self._given_up = [process for process in self._given_up if process.poll() is None]
        try:
            self._process = await trio.lowlevel.open_process(
                [sys.executable, "-I", "-S", "-c", _HELPER, self.path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:
            self._give_up(f"it could not be started ({exc})")
            return
        self.helpers_started += 1
        if self.helpers_started > 1:
            log.warning("the store's fsync helper for %s was started again", self.path)

    def stop_helper(self) -> None:
        """Kill the helper (it did not answer within ``db_timeout``: stopped, or stuck on the
        disk): the waiting :meth:`sync` sees its end and flushes in a thread instead."""
        if self._process is not None:
            self._process.kill()

    def _give_up(self, why: str) -> None:
        log.warning("the store's fsync helper for %s: %s; flushing in a thread instead, a new "
                    "helper in %g s", self.path, why, self._restart_after)  # fmt: skip
        self._start_after = trio.current_time() + self._restart_after
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            self._given_up.append(process)  # reaped when the next one starts

    async def aclose(self) -> None:
        """Stop the helper (it also ends by itself when this process exits)."""
        self._given_up = [process for process in self._given_up if process.poll() is None]
        process, self._process = self._process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            assert process.stdin is not None
            await process.stdin.aclose()  # the helper's read returns b"": it exits
            with trio.move_on_after(1):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
