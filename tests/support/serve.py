"""Run ``imc-actors serve`` as a real subprocess on ephemeral loopback ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

LISTENING = re.compile(rb"^imc-actors: listening on (.*)$")
MANAGEMENT = re.compile(rb"management on (http://\S+) ")


def listening_addresses(line: bytes) -> str | None:
    """The addresses of ``serve``'s ``listening on`` line, as text or as a JSON log line."""
    match = LISTENING.search(line)
    if match:
        return match.group(1).decode()
    if line.startswith(b"{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        message = entry.get("message", "")
        if entry.get("logger") == "imc_actors.cli" and message.startswith("listening on "):
            return message.removeprefix("listening on ")
    return None


@dataclass
class ServeProcess:
    """A running server process: its sockets (from the line it prints) and its stderr so far,
    line by line (``log``; the last item may be a line still being written)."""

    process: trio.Process
    addresses: dict[str, tuple[str, int]]
    log: list[bytes] = field(default_factory=list)
    grew: trio.Event = field(default_factory=trio.Event)  # set (and replaced) as stderr grows

    async def logged(self, text: bytes) -> bytes:
        """Wait until a line of stderr contains ``text``; that line."""
        while True:
            for line in self.log:
                if text in line:
                    return line
            await self.grew.wait()

    async def management_url(self) -> str:
        """The base URL of its management listener (``--rpc-listen``), from its log line."""
        line = await self.logged(b"management on ")
        match = MANAGEMENT.search(line)
        assert match is not None, line
        return match.group(1).decode()

    @property
    def udp(self) -> tuple[str, int]:
        return self.addresses["udp"]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def tcp(self) -> tuple[str, int]:
        return self.addresses["tcp"]

    async def terminate(self) -> int:
        """SIGTERM, then wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            return await self.process.wait()

    async def kill(self) -> int:
        """SIGKILL (no cleanup at all), then wait."""
        self.process.kill()
        return await self.process.wait()


def serve_command(db_url: str, *extra: str, host: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable, "-m", "imc_actors", "serve",
        "--listen", f"udp:{host}:0", "--listen", f"tcp:{host}:0",
        "--domain", "127.0.0.1", "--db-url", db_url, *extra,
    ]


@asynccontextmanager
async def serve_process(
    db_url: str,
    *extra: str,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> AsyncIterator[ServeProcess]:
    """Start the server (listening on ``host``, ephemeral ports), wait for its ``listening
    on`` line, stop it (kill if needed) at exit. ``env``: more environment variables
    (``IMC_*`` settings). ``wrapper``: a command the server's command line is appended to
    (it must ``exec`` it, so that signals reach the server)."""
    process = await trio.lowlevel.open_process(
        [*wrapper, *serve_command(db_url, *extra, host=host)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )  # fmt: skip
    assert process.stderr is not None
    stderr = process.stderr
    log: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:
            buffer = b""
            addresses: dict[str, tuple[str, int]] = {}
            with trio.fail_after(60):  # safety net: startup takes well under a second
                while not addresses:
                    chunk = await stderr.receive_some()
                    if not chunk:
                        raise AssertionError(f"server exited before listening: {b''.join(log)!r}")
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        log.append(line)
                        found = listening_addresses(line)
                        if found:
                            for item in found.split():
                                transport, host, port = item.rsplit(":", 2)
                                addresses[transport] = (host.strip("[]"), int(port))
            server = ServeProcess(process, addresses, log)

            async def drain() -> None:
                rest = buffer
                log.append(rest)
                async for chunk in stderr:
                    *lines, rest = (rest + chunk).split(b"\n")
                    log[-1:] = [*lines, rest]
                    server.grew.set()
                    server.grew = trio.Event()

            nursery.start_soon(drain)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
