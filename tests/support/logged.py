"""Run a program (Kamailio, dnsmasq) as a subprocess whose stderr the test reads line by line,
so it can wait for what the program says it did instead of sleeping."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio


@dataclass
class LoggedProcess:
    """A running program and its stderr so far, line by line (``log``; the last item may be a
    line still being written)."""

    process: trio.Process
    log: list[bytes] = field(default_factory=lambda: [b""])
    grew: trio.Event = field(default_factory=trio.Event)  # set (and replaced) as stderr grows
    ended: bool = False  # stderr closed: the program exited

    def lines_with(self, text: bytes) -> list[bytes]:
        """Every line of stderr so far that contains ``text``."""
        return [line for line in self.log if text in line]

    async def logged(self, text: bytes, *, count: int = 1) -> bytes:
        """Wait until ``count`` lines of stderr contain ``text``; the last of them. Raises
        AssertionError (with the log's tail) when the program exits first."""
        while True:
            found = self.lines_with(text)
            if len(found) >= count:
                return found[count - 1]
            if self.ended:
                raise AssertionError(f"exited before logging {text!r}: {self.tail()}")
            await self.grew.wait()

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of stderr, for assertion messages."""
        return b"\n".join(self.log[-lines:]).decode(errors="replace")


@asynccontextmanager
async def logged_process(command: Sequence[str]) -> AsyncIterator[LoggedProcess]:
    """Start ``command`` (stdout discarded, stderr read into :class:`LoggedProcess`); at exit
    SIGTERM it, and SIGKILL it if it has not ended 10 s later."""
    process = await trio.lowlevel.open_process(
        list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr
    running = LoggedProcess(process)

    async def drain() -> None:
        async for chunk in stderr:
            *lines, rest = (running.log[-1] + chunk).split(b"\n")
            running.log[-1:] = [*lines, rest]
            running.grew.set()
            running.grew = trio.Event()
        running.ended = True
        running.grew.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            try:
                yield running
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
