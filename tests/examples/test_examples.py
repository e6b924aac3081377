"""Every example runs with the one command its docstring gives, and does what it says."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio_asyncio

import imc_actors.aio
from imc_actors import Config
from imc_actors.server import open_server
from tests.support.serve import serve_process
from tests.support.ua import TestUA

from .loader import EXAMPLES, ROOT, load_example, user_env

PY_EXAMPLES = ["embed_trio", "time_bot", "asyncio_app", "test_faults_example"]


async def run_command(argv: list[str], cwd) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):  # safety net only
        return await trio.run_process(
            argv, cwd=cwd, env=user_env(), capture_stdout=True, capture_stderr=True, check=False
        )


@pytest.mark.parametrize("name", PY_EXAMPLES)
def test_each_example_documents_its_command(name):
    source = (EXAMPLES / f"{name}.py").read_text()
    doc = ast.get_docstring(ast.parse(source))
    assert doc, f"{name}.py has no module docstring"
    command = f"python -m pytest examples/{name}.py" if name.startswith("test_") else f"python examples/{name}.py"
    assert command in doc, f"{name}.py's docstring does not say how to run it ({command})"
    index = (EXAMPLES / "README.md").read_text() + (ROOT / "README.md").read_text()
    assert index.count(command) >= 2, f"{command} is not in README.md and examples/README.md"


# ---------------------------------------------------------------------- embed_trio.py
async def test_embed_trio_example(tmp_path):
    result = await run_command([sys.executable, str(EXAMPLES / "embed_trio.py")], tmp_path)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert (tmp_path / "embed-demo.db").exists()  # the default --db-url, in the current directory
    assert "bob -> sip:chat@example.com: 'hello, room' => 202 Accepted" in out
    assert "  alice <= sip:chat@example.com: '[bob]: hello, room'" in out
    assert "  bob <= sip:chat@example.com: '[carol]: hi both'" in out
    assert out.rstrip().endswith("room sip:chat@example.com: alice*, bob, carol")
    # run again in-process on the same database: the rooms survived the first process
    example = load_example("embed_trio")
    again = await example.main(f"sqlite:///{tmp_path}/embed-demo.db")
    assert again == [
        "sip:chat@example.com already exists (from an earlier run)",
        "room sip:chat@example.com: alice*, bob, carol",
    ]


# ---------------------------------------------------------------------- time_bot.py
async def test_time_bot_demo(tmp_path):
    result = await run_command([sys.executable, str(EXAMPLES / "time_bot.py"), "--demo"], tmp_path)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    answers = re.findall(r"(sip:\w+@example.com) <= '\[timebot\]: It is \d\d:\d\d:\d\d UTC", out)
    assert sorted(answers) == ["sip:alice@example.com", "sip:bob@example.com"], out


async def test_time_bot_answers_sip_users_through_the_server(tmp_path, nursery):
    example = load_example("time_bot")
    config = Config.from_sources(environ={}, overrides={
        "listen": ["udp:127.0.0.1:0"], "db_url": f"sqlite:///{tmp_path}/bot.db", "domains": ["127.0.0.1"],
    })
    async with open_server(config) as server:
        bot = example.TimeBot(
            server.conference, "sip:lobby@127.0.0.1", "sip:timebot@127.0.0.1",
            clock=lambda: datetime(2026, 1, 2, 12, 34, 56, tzinfo=UTC),
        )
        await nursery.start(bot.run)
        [address] = server.addresses
        alice = await TestUA.open(nursery, "alice", "127.0.0.1", (address.host, address.port))
        assert (await alice.register()).code == 200
        assert (await alice.message("sip:lobby@127.0.0.1", "#join")).code == 200
        with trio.fail_after(10):  # safety net only
            assert (await alice.next_message()).body == b"*** [alice] has joined the room"
            assert (await alice.message("sip:lobby@127.0.0.1", "no question here")).code == 202
            assert (await alice.message("sip:lobby@127.0.0.1", "what time is it? !time")).code == 202
            answer = await alice.next_message()
        assert answer.body == b"[timebot]: It is 12:34:56 UTC on 2026-01-02"
        assert answer.from_uri == "sip:lobby@127.0.0.1"
        assert bot.answered == 1  # only the line ending in !time
        alice.close()


# ---------------------------------------------------------------------- asyncio_app.py
async def http(port: int, method: str, target: str, document: Any = None) -> tuple[int, Any]:
    body = json.dumps(document).encode() if document is not None else b""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        data = b""
        async for chunk in stream:  # the service closes the connection after one response
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


async def test_asyncio_app_in_process(tmp_path):
    example = load_example("asyncio_app")
    config = Config(db_url=f"sqlite:///{tmp_path}/app.db", domains=["example.com"])
    async with imc_actors.aio.open_asyncio_conference(config) as conference, trio.open_nursery() as nursery:
        ready = trio.Event()
        ports: list[int] = []
        stop: list[Any] = []

        def on_ready(port: int) -> None:
            ports.append(port)
            ready.set()

        async def serve() -> None:
            import asyncio

            stop.append(asyncio.Event())
            await example.app(conference, "127.0.0.1", 0, on_ready, stop[0])

        nursery.start_soon(trio_asyncio.aio_as_trio(serve))
        await ready.wait()
        port = ports[0]
        create = {"from": "sip:alice@example.com", "to": "sip:imc-manager@example.com", "body": "#create chat"}
        assert await http(port, "POST", "/messages", create) == (200, {"code": 200, "reason": "OK"})
        join = {"from": "sip:bob@example.com", "to": "sip:chat@example.com", "body": "#join"}
        assert await http(port, "POST", "/messages", join) == (200, {"code": 200, "reason": "OK"})
        assert await http(port, "POST", "/messages", {"body": 1}) == (400, {"error": 'expected {"from": URI, "to": URI, "body": text}'})
        assert await http(port, "GET", "/rooms") == (
            200, [{"uri": "sip:chat@example.com", "members": ["sip:alice@example.com", "sip:bob@example.com"]}]
        )
        await conference.conference.flush_notices()
        await trio.testing.wait_all_tasks_blocked()  # the asyncio collector has filed them
        status, inbox = await http(port, "GET", "/inbox?user=sip:alice@example.com")
        assert (status, [item["body"] for item in inbox]) == (
            200, ["*** Room was created", "*** [bob] has joined the room"]
        )
        assert await http(port, "GET", "/inbox?user=sip:alice@example.com") == (200, [])  # taken
        stop[0].set()


async def test_asyncio_app_command(tmp_path):
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / "asyncio_app.py"), "--port", "0"],
        cwd=tmp_path, env=user_env(), stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        log = b""
        with trio.fail_after(30):  # safety net only
            while b"\n" not in log:
                log += await process.stderr.receive_some()
            match = re.search(rb"listening on http://127.0.0.1:(\d+)", log)
            assert match, log
            create = {"from": "sip:alice@example.com", "to": "sip:imc-manager@example.com", "body": "#create chat"}
            assert await http(int(match.group(1)), "POST", "/messages", create) == (200, {"code": 200, "reason": "OK"})
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            async for chunk in process.stderr:
                log += chunk
        assert b"asyncio_app: stopped" in log
        assert (tmp_path / "asyncio-demo.db").exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------------- test_faults_example.py
async def test_the_fault_injection_example_passes():
    result = await run_command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/test_faults_example.py"], ROOT
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out[-3000:]
    assert re.search(r"\b4 passed\b", out), out[-3000:]


# ---------------------------------------------------------------------- sipp/
def test_the_sipp_example_scenarios_are_the_suites():
    for name in ("imc_chat_uac.xml", "imc_member_uas.xml"):
        assert (EXAMPLES / "sipp" / name).read_bytes() == (ROOT / "tests" / "sipp" / name).read_bytes(), name
    assert os.access(EXAMPLES / "sipp" / "run_chat.sh", os.X_OK)


@pytest.mark.sipp
@pytest.mark.skipif(
    (shutil.which("sipp") is None or shutil.which("ss") is None) and not os.environ.get("CI"),
    reason="sipp (Debian package sip-tester) or ss is not installed",
)
async def test_the_sipp_example_script_against_imc_actors_serve(tmp_path):
    async def run_chat(work, **env: str) -> tuple[int, str]:
        with trio.fail_after(60):  # safety net only
            result = await trio.run_process(
                ["bash", str(EXAMPLES / "sipp" / "run_chat.sh"), f"{host}:{port}"], cwd=tmp_path,
                env={**user_env(), "WORKDIR": str(work), **env}, capture_stdout=True,
                capture_stderr=True, check=False,
            )  # fmt: skip
        return result.returncode, result.stdout.decode() + result.stderr.decode()

    async with serve_process(f"sqlite:///{tmp_path}/imc.db") as server:
        host, port = server.udp
        code, output = await run_chat(tmp_path / "first")
        assert code == 0, output
        assert "run_chat: ok" in output
        received = (tmp_path / "first" / "member-messages.log").read_bytes()
        assert received.count(b"*** [bob] has joined the room") == 2
        assert b"[alice]: hello from sipp" in received
        # again against the same server: a room of its own, so it passes again
        code, output = await run_chat(tmp_path / "second")
        assert code == 0, output
        room = re.search(r"run_chat: ok \(room (\S+) created", output)
        assert room, output
        # a room that exists already (ROOM= chooses it): the failure is explained in words
        code, output = await run_chat(tmp_path / "third", ROOM=room.group(1))
    assert code == 1, output
    assert (
        "run_chat: the server answered 403 Forbidden to a request for sip:imc-manager@127.0.0.1 "
        f"(the scenario expected 200; room {room.group(1)})"
    ) in output
    assert "*** Room already exists and you are a member" in output
