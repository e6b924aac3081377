"""The management CLI (``imc-actors rooms|members|rpc``) as a subprocess, against a server
running in this test's Trio loop (no threads), and ``serve`` with the management flags."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.control import CHAT, MiClient, http, populate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_overrides() -> dict:
    return {"rpc_listen": "127.0.0.1:0"}


Result = tuple[int, str, str]


async def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m imc_actors ARGS``; return (exit code, stdout, stderr)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMC_")}
    environ.update(env or {})
    with trio.fail_after(30):  # safety net only
        done = await trio.run_process(
            [sys.executable, "-m", "imc_actors", *args],
            capture_stdout=True, capture_stderr=True, check=False, cwd=ROOT, env=environ,
        )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def gather(runs: dict[str, Coroutine[Any, Any, Result]]) -> dict[str, Result]:
    """Run several CLI invocations at once; their results by name."""
    results: dict[str, Result] = {}

    async def one(name: str, run: Coroutine[Any, Any, Result]) -> None:
        results[name] = await run

    async with trio.open_nursery() as nursery:
        for name, run in runs.items():
            nursery.start_soon(one, name, run)
    return results


async def test_rooms_and_members(server, ua):
    url = server.rpc_url
    code, out, err = await cli("rooms", "--rpc", url)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["ROOM  MEMBERS  OWNER", "(no rooms)"]

    await populate(ua)
    code, out, err = await cli("rooms", "--rpc", url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ROOM", "MEMBERS", "OWNER"]
    assert [line.split() for line in lines[1:]] == [
        ["sip:chat@127.0.0.1", "3", "sip:alice@127.0.0.1"],
        ["sip:secret@127.0.0.1", "1", "sip:bob@127.0.0.1"],
    ]
    assert len({line.index("sip:", 5) for line in lines[1:]}) == 1  # the owner column lines up

    code, out, err = await cli("rooms", "--json", "--rpc", url)
    assert code == 0
    assert json.loads(out) == [
        {"room": "sip:chat@127.0.0.1", "members": 3, "owner": "sip:alice@127.0.0.1"},
        {"room": "sip:secret@127.0.0.1", "members": 1, "owner": "sip:bob@127.0.0.1"},
    ]

    code, out, err = await cli("members", "chat@127.0.0.1", "--rpc", url)  # sip: may be left out
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["sip:chat@127.0.0.1:", "3", "members"],
        ["#", "MEMBER"],
        ["1", "sip:alice@127.0.0.1"],
        ["2", "sip:bob@127.0.0.1"],
        ["3", "sip:carol@127.0.0.1"],
    ]
    code, out, err = await cli("members", CHAT, "--json", "--rpc", url)
    assert code == 0
    assert json.loads(out)["members"] == ["sip:alice@127.0.0.1", "sip:bob@127.0.0.1", "sip:carol@127.0.0.1"]


async def test_a_reader_that_went_away_ends_the_command_quietly(server, ua):
    # was a BrokenPipeError traceback (imc-actors rooms | head)
    await populate(ua)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMC_")}
    for args in (("rooms",), ("members", CHAT), ("rpc", "imc.list_rooms")):
        read, write = os.pipe()
        os.close(read)  # nobody reads: the first write fails with EPIPE
        try:
            with trio.fail_after(30):  # safety net only
                done = await trio.run_process(
                    [sys.executable, "-m", "imc_actors", *args, "--rpc", server.rpc_url],
                    stdout=write, capture_stderr=True, check=False, cwd=ROOT, env=environ,
                )  # fmt: skip
        finally:
            os.close(write)
        assert (done.returncode, done.stderr.decode()) == (141, ""), args


async def test_an_output_that_cannot_be_written_is_one_line_and_exit_1(server, ua):
    # > /dev/full was an OSError traceback (ENOSPC on the final flush)
    await populate(ua)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMC_")}
    with open("/dev/full", "wb") as full, trio.fail_after(30):  # safety net only
        done = await trio.run_process(
            [sys.executable, "-m", "imc_actors", "rooms", "--rpc", server.rpc_url],
            stdout=full, capture_stderr=True, check=False, cwd=ROOT, env=environ,
        )  # fmt: skip
    assert (done.returncode, done.stderr.decode()) == (
        1, "imc-actors: cannot write the output: No space left on device\n"
    )  # fmt: skip


async def test_the_client_reads_a_servers_file_it_could_not_serve_with(server, ua, tmp_path):
    # the service's own file: a key this user cannot read, a listener that needs auth. Only
    # rpc_listen is the client's business; it said "invalid tls_cert: ..." and exit 2
    await populate(ua)
    path = tmp_path / "imc.toml"
    path.write_text(
        'listen = ["udp:0.0.0.0:5060", "tls:0.0.0.0:5061"]\n'
        f'tls_cert = "{tmp_path}/absent.pem"\ntls_key = "{tmp_path}/absent.key"\n'
        f'rpc_listen = "{server.http_url.removeprefix("http://")}"\n'
    )
    code, out, err = await cli("rooms", "--config", str(path))
    assert (code, err) == (0, "") and CHAT in out
    path.write_text('rpc_listen = "127.0.0.1:http"\n')  # what it reads is still checked
    code, _, err = await cli("rooms", "--config", str(path))
    assert code == 2 and err.startswith("imc-actors: invalid rpc_listen")


async def test_errors_and_exit_codes(server, ua):
    await populate(ua)
    url = server.rpc_url
    listen = server.http_url.removeprefix("http://")
    runs = {
        "room not found": cli("members", "sip:nope@127.0.0.1", "--rpc", url),
        "rpc ok": cli("rpc", "imc.list_members", CHAT, "--rpc", url),
        "rpc error": cli("rpc", "imc.list_members", "--rpc", url),
        "no method": cli("rpc", "imc.no_such_method", "--rpc", url),
        "bad params": cli("rpc", "imc.list_members", "1", "--rpc", url),  # JSON 1: a number
        "usage": cli("members"),
        "not http": cli("rooms", "--rpc", "ftp://127.0.0.1/"),
        "not rpc": cli("rooms", "--rpc", server.http_url + "/not-rpc"),
        # the URL comes from rpc_listen (environment or --config file) without --rpc
        "from env": cli("rooms", "--json", env={"IMC_RPC_LISTEN": listen}),
    }
    results = await gather(runs)
    assert results["room not found"] == (1, "", "imc-actors: Room not found (error 500)\n")
    code, out, _ = results["rpc ok"]
    assert code == 0 and json.loads(out)["count"] == 3
    assert results["rpc error"] == (1, "", "imc-actors: No room name (error 500)\n")
    code, _, err = results["no method"]
    assert code == 1 and "Method not found" in err
    code, _, err = results["bad params"]
    assert code == 1 and "Invalid params" in err
    code, _, err = results["usage"]
    assert code == 2 and "ROOM" in err
    code, _, err = results["not http"]
    assert code == 2 and "http://" in err
    code, _, err = results["not rpc"]
    assert code == 3 and "HTTP 404" in err
    code, out, _ = results["from env"]
    assert code == 0 and len(json.loads(out)) == 2


async def test_unreachable_server_exits_3(tmp_path):
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/RPC"
        config = tmp_path / "imc.toml"
        config.write_text(f'rpc_listen = "127.0.0.1:{sock.getsockname()[1]}"\n')
        results = await gather({
            "rooms": cli("rooms", "--rpc", url),
            "members": cli("members", CHAT, "--rpc", url),
            "rpc": cli("rpc", "imc.list_rooms", "--rpc", url),
            "config": cli("rooms", "--config", str(config)),
        })  # fmt: skip
    for name, (code, out, err) in results.items():
        assert code == 3, (name, code, err)
        assert out == ""
        assert err.startswith(f"imc-actors: cannot reach the server at {url}: "), err
        assert "refused" in err.lower(), err


async def test_serve_with_management_flags(tmp_path):
    """``serve --rpc-listen --mi-fifo --log-format json``: the interfaces come up, the log is
    JSON lines, and the CLI reaches the server through the printed URL."""
    fifo = tmp_path / "imc.fifo"
    command = [
        sys.executable, "-m", "imc_actors", "serve",
        "--listen", "udp:127.0.0.1:0", "--domain", "127.0.0.1",
        "--db-url", f"sqlite:///{tmp_path}/imc.db",
        "--rpc-listen", "127.0.0.1:0", "--mi-fifo", str(fifo), "--reply-dir", str(tmp_path),
        "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stderr is not None
    lines: list[str] = []
    try:
        buffer = b""
        with trio.fail_after(30):  # safety net: startup takes about a second
            while not any('"message": "MI FIFO at' in line for line in lines):
                chunk = await process.stderr.receive_some()
                assert chunk, f"server exited: {lines}"
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                lines += [line.decode() for line in done]
        said = [json.loads(line)["message"] for line in lines if '"logger": "imc_actors.cli"' in line]
        base = next(m for m in said if m.startswith("management on ")).split()[2]
        code, out, err = await cli("rooms", "--json", "--rpc", base + "/RPC")
        assert (code, out) == (0, "[]\n")
        assert (await http(base + "/metrics")).status == 200
        mi = MiClient(str(fifo), str(tmp_path))
        assert await mi.request(b":imc_list_rooms:reply\n\n") == "200 OK\n\n"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            rest = b"".join([chunk async for chunk in process.stderr])
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines += (buffer + rest).decode().splitlines()
    records = [json.loads(line) for line in lines if line]  # every line is JSON, the CLI's too
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert [r["message"].split(" ")[0] for r in records if r["logger"] == "imc_actors.cli"] == [
        "listening", "management", "MI", "SIGTERM,"
    ]  # the startup and shutdown lines, once each
    assert not fifo.exists()  # removed at shutdown


async def test_bad_rpc_listen_stops_startup(tmp_path):
    code, out, err = await cli("serve", "--rpc-listen", "localhost:http", "--db-url", f"sqlite:///{tmp_path}/x.db")
    assert code == 2
    assert err == "imc-actors: invalid rpc_listen: expected host:port, got 'localhost:http'\n"


async def test_rpc_port_in_use_stops_startup(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, out, err = await cli(
            "serve", "--listen", "udp:127.0.0.1:0", "--rpc-listen", f"127.0.0.1:{port}",
            "--db-url", f"sqlite:///{tmp_path}/x.db",
        )  # fmt: skip
    assert code == 1
    assert f"rpc_listen 127.0.0.1:{port}" in err and "in use" in err


TOKEN = "cli-token-0123456789abcdef"


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0", "rpc_token": TOKEN}])
async def test_the_cli_sends_the_token_from_flag_env_or_config(server, tmp_path):
    url = server.rpc_url
    config = tmp_path / "client.toml"
    config.write_text(f'rpc_token = "{TOKEN}"\n')
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('rpc_token = "not-the-right-token-at-all"\n')
    results = await gather({
        "none": cli("rooms", "--rpc", url),
        "flag": cli("rooms", "--json", "--rpc", url, "--token", TOKEN),
        "env": cli("members", "--json", CHAT, "--rpc", url, env={"IMC_RPC_TOKEN": TOKEN}),
        "config": cli("rpc", "imc.list_rooms", "--rpc", url, "--config", str(config)),
        "flag wins": cli("rooms", "--json", "--rpc", url, "--token", TOKEN, "--config", str(wrong)),
        "wrong": cli("rooms", "--rpc", url, "--config", str(wrong)),
    })  # fmt: skip
    assert results["none"] == (
        4, "", f"imc-actors: the server at {url} wants a token: pass --token, or set rpc_token "
        "(IMC_RPC_TOKEN or the configuration file)\n",
    )  # fmt: skip
    assert results["flag"] == (0, "[]\n", "")
    assert results["env"] == (1, "", "imc-actors: Room not found (error 500)\n")  # it got through
    assert results["config"] == (0, "[]\n", "")
    assert results["flag wins"] == (0, "[]\n", "")
    assert results["wrong"] == (4, "", f"imc-actors: the server at {url} refused the token (wrong token)\n")


async def test_serve_refuses_a_non_loopback_rpc_listen_without_a_token(tmp_path):
    code, out, err = await cli(
        "serve", "--rpc-listen", "0.0.0.0:0", "--db-url", f"sqlite:///{tmp_path}/x.db"
    )
    assert code == 2
    assert err == (
        "imc-actors: invalid rpc_token: required when rpc_listen (0.0.0.0:0) is not a loopback "
        "address\n"
    )


async def test_bad_flags_are_usage_errors_and_odd_answers_are_reported(tmp_path):
    # never a traceback: a URL that does not parse, a timeout that is no duration, a token
    # that cannot be a header are usage errors (2); a server whose answer is not what the
    # method returns is reported (3), as one that is not an imc-actors server
    import http.server
    import threading

    runs = {
        "url": cli("rooms", "--rpc", "http://[::1:8091/RPC"),
        "port": cli("rooms", "--rpc", "http://127.0.0.1:99999/RPC"),
        "negative": cli("rooms", "--rpc", "http://127.0.0.1:9/RPC", "--timeout", "-1"),
        "nan": cli("rooms", "--rpc", "http://127.0.0.1:9/RPC", "--timeout", "nan"),
        "inf": cli("rooms", "--rpc", "http://127.0.0.1:9/RPC", "--timeout", "inf"),
        "token": cli("rooms", "--rpc", "http://127.0.0.1:9/RPC", "--token", "a\nb"),
    }
    for name, (code, out, err) in (await gather(runs)).items():
        assert code == 2 and out == "" and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)

    class Odd(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b'{"jsonrpc": "2.0", "result": 5, "id": 1}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    odd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    threading.Thread(target=odd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{odd.server_address[1]}/RPC"
        for command in (("rooms",), ("members", "chat"), ("nodes",)):
            code, out, err = await cli(*command, "--rpc", url)
            assert code == 3 and "Traceback" not in err and "not what it returns" in err, (command, err)
    finally:
        odd.shutdown()
