"""``imc-actors serve`` refuses bad settings and taken ports with one line and a non-zero exit."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import pytest
import trio

from tests.support.serve import serve_process


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imc_actors", "serve", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_bad_value_names_the_parameter(tmp_path):
    result = serve("--listen", "udp:127.0.0.1:99999", "--db-url", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imc-actors: invalid listen: bad port in 'udp:127.0.0.1:99999' (1-65535, or 0 for a free one)"
    ]


def test_a_listen_host_name_is_refused_before_any_lookup(tmp_path):
    result = serve("--listen", "foo", "--db-url", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imc-actors: invalid listen: 'foo' in 'foo' is not an IP address or localhost "
        "(0.0.0.0 or :: listen on every interface)"
    ]
    assert not (tmp_path / "x.db").exists()  # stopped before opening anything


def test_bad_environment_value_names_the_parameter(tmp_path):
    result = serve("--db-url", f"sqlite:///{tmp_path}/x.db", env={"IMC_OWNER_LEAVE": "sometimes"})
    assert result.returncode == 2
    assert result.stderr.strip() == "imc-actors: invalid owner_leave: must be 'destroy' or 'refuse'"


def test_taken_port_stops_startup_with_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = serve("--listen", f"udp:127.0.0.1:{port}", "--db-url", f"sqlite:///{tmp_path}/x.db",
                       "--log-level", "error")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imc-actors: cannot start:")
    assert f"127.0.0.1:{port}" in lines[0]


def test_help_lists_the_flags():
    result = subprocess.run([sys.executable, "-m", "imc_actors", "serve", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--config", "--listen", "--domain", "--db-url", "--outbound-proxy", "--log-level",
                 "--log-format", "--rpc-listen", "--mi-fifo", "--max-transactions"):
        assert flag in result.stdout


def test_bad_max_transactions_flag_names_the_parameter(tmp_path):
    result = serve("--max-transactions", "0", "--db-url", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == 2
    assert result.stderr.strip() == "imc-actors: invalid max_transactions: must be positive"


async def test_one_listening_line_and_json_everywhere_with_log_format_json(tmp_path):
    fifo = tmp_path / "imc.fifo"
    extra = ("--rpc-listen", "127.0.0.1:0", "--mi-fifo", str(fifo))
    async with serve_process(f"sqlite:///{tmp_path}/text.db", *extra) as server:
        assert await server.terminate() == 0
    text = [line.decode() for line in server.log if line]
    said = [line for line in text if re.search(r"listening on|Running on|management (HTTP )?on|MI FIFO", line)]
    assert [line.split(" on ")[0].split(" at ")[0] for line in said] == [
        "imc-actors: listening", "imc-actors: management", "imc-actors: MI FIFO"
    ], text
    assert text[-1] == "imc-actors: SIGTERM, shutting down", text

    async with serve_process(f"sqlite:///{tmp_path}/json.db", "--log-format", "json", *extra) as server:
        assert server.udp[1] > 0  # serve_process found the JSON listening line
        assert await server.terminate() == 0
    entries = [json.loads(line) for line in server.log if line]  # every line is JSON
    messages = [(e["logger"], e["message"].split(" on ")[0].split(" at ")[0]) for e in entries]
    assert ("imc_actors.cli", "listening") in messages, entries
    assert ("imc_actors.cli", "management") in messages, entries
    assert messages[-1] == ("imc_actors.cli", "SIGTERM, shutting down"), entries
    assert sum(e["message"].startswith("listening on") for e in entries) == 1, entries


def test_cannot_start_is_json_too_with_log_format_json(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = serve("--listen", f"udp:127.0.0.1:{port}", "--db-url", f"sqlite:///{tmp_path}/x.db",
                       "--log-format", "json")
    assert result.returncode == 1
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[-1]["level"] == "ERROR"
    assert entries[-1]["message"].startswith("cannot start:")
    assert f"127.0.0.1:{port}" in entries[-1]["message"]


def test_an_mi_fifo_directory_that_cannot_be_made_stops_startup_with_one_line(tmp_path):
    (tmp_path / "run").write_text("a file where the directory should be")
    path = tmp_path / "run" / "imc" / "imc.fifo"
    result = serve("--listen", "udp:127.0.0.1:0", "--db-url", f"sqlite:///{tmp_path}/x.db",
                   "--mi-fifo", str(path), "--log-level", "error")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"imc-actors: cannot start: mi_fifo: cannot create directory {path.parent} for {path}: "
        "Not a directory"
    ]


def test_a_reply_dir_that_is_no_directory_stops_startup_with_one_line(tmp_path):
    # it was accepted, and every relative reply FIFO name then failed
    result = serve("--listen", "udp:127.0.0.1:0", "--db-url", f"sqlite:///{tmp_path}/x.db",
                   "--mi-fifo", str(tmp_path / "imc.fifo"), "--reply-dir", str(tmp_path / "absent"),
                   "--log-level", "error")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"imc-actors: cannot start: reply_dir: {tmp_path / 'absent'} is not a directory"
    ]


def test_a_database_that_cannot_be_reached_stops_startup_with_one_line():
    # nothing listens on port 1 of loopback: the connection is refused at once
    # (at the default log level: a "reconnecting and retrying once" WARNING came first)
    result = serve("--listen", "udp:127.0.0.1:0", "--db-url", "postgresql://postgres@127.0.0.1:1/test")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("imc-actors: cannot start: creating the tables failed on postgresql://")
    assert "127.0.0.1:1" in lines[0] or "port 1" in lines[0]


def test_an_sqlite_file_in_a_folder_that_does_not_exist_is_named_so(tmp_path):
    # was: "unable to open database file", after a retry's WARNING
    result = serve("--listen", "udp:127.0.0.1:0", "--db-url", f"sqlite:///{tmp_path}/absent/imc.db")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"imc-actors: cannot start: the folder {tmp_path}/absent of sqlite:///{tmp_path}/absent/imc.db "
        "does not exist (make it first)"
    ]


def test_an_exposed_listener_without_auth_does_not_start(tmp_path):
    result = serve("--listen", "udp:0.0.0.0:0", "--db-url", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imc-actors: invalid auth: udp:0.0.0.0:0 is not a loopback address and nothing "
        'authenticates the users: set auth = "register" or "all" (add users with imc-actors '
        'user add), or trusted_sources (a proxy that authenticates), or auth = "off" to take '
        "every From as it is"
    ]
    assert not (tmp_path / "x.db").exists()
    bad = serve("--auth", "maybe", "--db-url", f"sqlite:///{tmp_path}/x.db")
    assert bad.returncode == 2 and "invalid choice: 'maybe'" in bad.stderr


async def test_a_fault_in_c_code_says_so_on_stderr_before_the_server_dies(tmp_path):
    # was: exit 135 without a word (SIGBUS from SQLite's mapped -shm file on a filesystem that
    # stopped taking writes, in the operator tour)
    async with serve_process(f"sqlite:///{tmp_path}/imc.db") as server:
        server.process.send_signal(signal.SIGBUS)
        with trio.fail_after(30):  # safety net only
            assert await server.process.wait() == -signal.SIGBUS
            await server.logged(b"most recent call first")
    text = b"\n".join(server.log)
    assert b"Fatal Python error: Bus error" in text
    assert b"imc_actors" in text  # the stack says where it was


def test_ctrl_c_during_startup_exits_130_without_a_traceback(tmp_path, monkeypatch, capsys):
    # A SIGINT before serve catches the signals is a KeyboardInterrupt in its main task, here
    # while the conference loads its rooms: inside nurseries, which used to wrap it in
    # exception groups that serve let out as a traceback (exit 1) instead of exiting 130.
    from imc_actors import cli
    from imc_actors.config import Config
    from imc_actors.store.writer import Store

    async def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "load_rooms", interrupted)
    config = Config.from_sources(environ={}, overrides={
        "listen": ["udp:127.0.0.1:0"], "db_url": f"sqlite:///{tmp_path}/x.db", "domains": ["127.0.0.1"],
    })
    assert cli.serve(config) == 130
    assert "Traceback" not in capsys.readouterr().err


async def test_a_second_server_on_the_same_database_stops_with_one_line_naming_the_first(tmp_path):
    # it used to start, and each of the two then served every room from its own member list
    db_url = f"sqlite:///{tmp_path}/imc.db"
    async with serve_process(db_url) as running:
        second = await trio.to_thread.run_sync(
            lambda: serve("--listen", "udp:127.0.0.1:0", "--db-url", db_url, "--log-level", "error")
        )
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"imc-actors: cannot start: another imc-actors process (pid {running.pid}) serves "
            f"{db_url} without a node name ({tmp_path}/imc.db.lock is locked): stop it first; "
            "two would split every room between them"
        ]
        await running.kill()  # kill -9: the kernel lets the lock go with the process
    async with serve_process(db_url) as again:
        assert await again.terminate() == 0


@pytest.mark.parametrize("delay", [0.001, 0.01, 0.05])
def test_ctrl_c_while_serve_is_still_starting_exits_130_without_a_traceback(tmp_path, delay):
    # a tour: Ctrl-C 0.8 s after `serve --workers 2` printed a traceback from the import in
    # _serve_workers (exit -2). SIGINT arrives here from a timer set just before main() runs,
    # so at some point of the start: wherever it lands, it must end the same way.
    script = (
        "import os, signal, sys\n"
        "from imc_actors.cli import main\n"
        "signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))\n"
        f"signal.setitimer(signal.ITIMER_REAL, {delay})\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "serve", "--workers", "2", "--listen", "udp:127.0.0.83:0",
         "--db-url", f"sqlite:///{tmp_path}/imc.db"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 130, (done.returncode, done.stderr)
