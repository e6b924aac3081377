"""SIPp (Debian package sip-tester) drives REGISTER then OPTIONS (tests/sipp/register_options.xml)
against the in-process transport and against ``imc-actors serve`` run as a subprocess.

Skipped when ``sipp`` is not on PATH, unless the environment variable CI is set (then it fails).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support import free_port, start_core

SIPP = shutil.which("sipp")
pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(
        SIPP is None and not os.environ.get("CI"),
        reason="sipp is not on PATH (apt-get install sip-tester)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "tests" / "sipp" / "register_options.xml"


def sipp_binary() -> str:
    """The sipp path; without one (only possible when CI is set) the test fails."""
    if SIPP is None:
        pytest.fail("sipp is not on PATH (install sip-tester); CI is set, so this is an error")
    return SIPP


async def run_scenario(
    sipp: str, server_port: int, workdir: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run one REGISTER+OPTIONS call (``-m 1``) with a global ``-timeout`` so it always ends.

    The scenario is copied to ``workdir`` so SIPp's error traces land there.
    """
    scenario = workdir / SCENARIO.name
    shutil.copy(SCENARIO, scenario)
    command = [
        sipp, "-sf", str(scenario), "-s", "alice", "-m", "1",
        "-timeout", "20s", "-timeout_error", "-nostdin", "-trace_err",
        "-i", "127.0.0.1", "-p", str(free_port()), f"127.0.0.1:{server_port}",
    ]  # fmt: skip
    with trio.fail_after(30):
        return await trio.run_process(
            command, cwd=workdir, capture_stdout=True, capture_stderr=True, check=False
        )


def explain(result: subprocess.CompletedProcess[bytes], workdir: Path) -> str:
    errors = "".join(p.read_text(errors="replace") for p in workdir.glob("*_errors.log"))
    return (
        f"sipp exit {result.returncode}\nstderr: {result.stderr.decode(errors='replace')[-2000:]}"
        f"\nstdout tail: {result.stdout.decode(errors='replace')[-1500:]}\nerrors: {errors[-3000:]}"
    )


async def test_sipp_register_options_in_process(nursery: trio.Nursery, tmp_path: Path) -> None:
    sipp = sipp_binary()
    server = await start_core(nursery, listen=("udp:127.0.0.1:0",), domains=("127.0.0.1",))
    result = await run_scenario(sipp, server.address()[1], tmp_path)
    assert result.returncode == 0, explain(result, tmp_path)
    stats = server.transport.statistics()
    assert stats.requests == 2 and stats.malformed == 0
    assert server.registrar is not None
    [(contact, _)] = server.registrar.bindings(trio.current_time())["alice@127.0.0.1"]
    assert contact.startswith("sip:alice@127.0.0.1:")


async def test_sipp_register_options_against_serve(nursery: trio.Nursery, tmp_path: Path) -> None:
    sipp = sipp_binary()
    port = free_port()
    command = [
        sys.executable, "-m", "imc_actors", "serve",
        "--listen", f"udp:127.0.0.1:{port}", "--db-url", f"sqlite:///{tmp_path}/imc.db",
    ]  # fmt: skip
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    process = await trio.lowlevel.open_process(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    log = bytearray()
    listening = trio.Event()
    ended = trio.Event()

    async def read_stderr() -> None:
        """Collect the server's log (so its pipe never fills) and spot the ready line."""
        assert process.stderr is not None
        try:
            while chunk := await process.stderr.receive_some(4096):
                log.extend(chunk)
                if b"listening on" in log:
                    listening.set()
        except trio.ClosedResourceError:
            pass
        finally:
            ended.set()
            listening.set()

    nursery.start_soon(read_stderr)
    try:
        with trio.fail_after(30):
            await listening.wait()
        if b"listening on" not in log:
            pytest.fail(f"imc-actors serve exited before listening:\n{log.decode()}")
        result = await run_scenario(sipp, port, tmp_path)
        assert result.returncode == 0, explain(result, tmp_path) + "\nserver: " + log.decode()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        with trio.move_on_after(5):
            await ended.wait()
        if process.stderr is not None:
            await process.stderr.aclose()
    assert process.returncode == 0, log.decode()
