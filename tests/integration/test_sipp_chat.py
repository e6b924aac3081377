"""SIPp against ``imc-actors serve``: create a room, join a member, relay a message (spec §4, §5)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from tests.support.serve import serve_process

SIPP_DIR = Path(__file__).resolve().parent.parent / "sipp"

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(
        shutil.which("sipp") is None and not os.environ.get("CI"),
        reason="sipp (Debian package sip-tester) is not installed",
    ),
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def test_sipp_creates_joins_and_chats(tmp_path):
    messages = tmp_path / "member-messages.log"
    uas_port = free_udp_port()
    async with serve_process(f"sqlite:///{tmp_path}/imc.db") as server, trio.open_nursery() as nursery:
        uas_done = trio.Event()
        uas_result: list[subprocess.CompletedProcess] = []

        async def member() -> None:
            uas_result.append(await trio.run_process(
                ["sipp", "-sf", str(SIPP_DIR / "imc_member_uas.xml"), "-i", "127.0.0.1",
                 "-p", str(uas_port), "-m", "4", "-timeout", "30s", "-timeout_error", "-nostdin",
                 "-trace_msg", "-message_file", str(messages)],
                cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
            ))
            uas_done.set()

        nursery.start_soon(member)
        with trio.fail_after(30):
            while not port_taken(uas_port):  # poll until the UAS has bound its port
                await trio.sleep(0.01)
        host, port = server.udp
        uac = await trio.run_process(
            ["sipp", f"{host}:{port}", "-sf", str(SIPP_DIR / "imc_chat_uac.xml"), "-i", "127.0.0.1",
             "-p", str(free_udp_port()), "-m", "1", "-set", "uas_port", str(uas_port), "-set", "room", "sippchat",
             "-timeout", "30s", "-timeout_error", "-nostdin"],
            cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
        )
        assert uac.returncode == 0, uac.stdout.decode(errors="replace")[-3000:]
        with trio.fail_after(30):
            await uas_done.wait()
        assert uas_result[0].returncode == 0, uas_result[0].stdout.decode(errors="replace")[-3000:]
    received = messages.read_bytes()
    assert received.count(b"*** Room was created") == 1
    assert received.count(b"*** [bob] has joined the room") == 2
    assert b"[alice]: hello from sipp" in received
    assert b"Supported: kamailio/imc" in received
