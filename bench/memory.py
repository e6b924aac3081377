"""Memory: 100,000 rooms × 10 members, built through the public API and loaded from storage.

1. **API** (a child process, ``python -m bench.memory api``): ``imc_actors.open_conference``
   on a fresh SQLite database; every room is created (``#create``) and joined (``#join``)
   through :meth:`Conference.handle`, exactly as the server does for a MESSAGE, each change
   durable before its answer. Reported: build time, commands/s, and the growth of the
   process's RSS divided by the number of members.
2. **Storage load**: ``imc-actors serve`` started on that database (a restart): time until it
   says it listens and until it answers a first MESSAGE (``#members`` in the last room, 200
   with every member listed), and its RSS over that of the same server on an empty database,
   per member.
3. **Kamailio**, when installed: the same rows (copied: Kamailio 5.x empties its tables after
   loading them and writes them back at shutdown) loaded by its imc module at start, for
   comparison of time to serve and memory.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import procs
from .servers import REPO, ImcServer, KamailioServer, ServerError

DOMAIN = "127.0.0.1"


@dataclass
class MemoryResult:
    rooms: int
    members: int
    api_seconds: float = 0.0
    api_commands_per_s: float = 0.0
    api_rss_base_mib: float = 0.0
    api_rss_mib: float = 0.0
    api_bytes_per_member: float = 0.0
    load_listening_s: float = 0.0
    load_first_answer_s: float = 0.0
    load_rss_empty_mib: float = 0.0
    load_rss_mib: float = 0.0
    load_bytes_per_member: float = 0.0
    kam_first_answer_s: float | None = None
    kam_pss_empty_mib: float | None = None
    kam_pss_mib: float | None = None
    kam_bytes_per_member: float | None = None
    error: str = ""


def _rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------- API (child)
async def _build(db: str, rooms: int, members: int, concurrency: int) -> dict[str, float]:
    import trio

    import imc_actors
    from imc_actors.conference import IncomingMessage
    from imc_actors.config import Config

    open_conference = getattr(imc_actors, "open_conference", None)
    if open_conference is None:  # until the package re-exports it
        from imc_actors.conference import open_conference
    config = Config.from_sources(environ={}, overrides={"db_url": f"sqlite:///{db}", "domains": [DOMAIN]})
    # The collector set as `imc-actors serve` sets it (an application's choice: see cli._tune_gc).
    from imc_actors import cli

    gc.set_threshold(*getattr(cli, "GC_THRESHOLDS", (10_000, 20, 20)))
    async with open_conference(config) as conf:
        gc.collect()
        gc.freeze()
        base = _rss_kib()
        started = time.perf_counter()
        failures = 0

        async def worker(first: int) -> None:
            nonlocal failures
            for r in range(first, rooms, concurrency):
                ruri = f"sip:room{r}@{DOMAIN}"
                for m in range(members):
                    body = b"#create" if m == 0 else b"#join"
                    msg = IncomingMessage(ruri, f"sip:u{r}x{m}@{DOMAIN}", body, "text/plain", f"c{r}x{m}")
                    answer = await conf.handle(msg)
                    if answer.code != 200:
                        failures += 1

        async with trio.open_nursery() as nursery:
            for first in range(concurrency):
                nursery.start_soon(worker, first)
        seconds = time.perf_counter() - started
        gc.collect()
        rss = _rss_kib()
        counted = sum(len(state.members) for state in conf.rooms())
    return {"seconds": seconds, "base_kib": base, "rss_kib": rss, "failures": failures, "members": counted}


def _child(argv: list[str]) -> int:
    import trio

    db, rooms, members, concurrency = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    result = trio.run(_build, db, rooms, members, concurrency)
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------- restart
def _members_request(port: int, room: str, user: str) -> bytes:
    call_id = uuid.uuid4().hex
    body = b"#members"
    return (
        f"MESSAGE sip:{room}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag={call_id[:8]}\r\n"
        f"To: <sip:{room}@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def first_answer(port: int, room: str, user: str, *, deadline: float, proc: subprocess.Popen[bytes]) -> str:
    """Send ``#members`` to ``room`` every 50 ms until a final answer comes; its status line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        data = _members_request(sock.getsockname()[1], room, user)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                sock.sendto(data, ("127.0.0.1", port))
                reply, _ = sock.recvfrom(65535)
            except OSError:
                continue
            line = reply.split(b"\r\n", 1)[0].decode(errors="replace")
            if line.startswith("SIP/2.0 ") and not line.startswith("SIP/2.0 1"):
                return line
    return "no answer"


def _serve_and_time(server, room: str, user: str, timeout: float) -> tuple[float, float, str]:  # type: ignore[no-untyped-def]
    """Start ``server`` on its existing database; (listening s, first answer s, status line)."""
    started = time.perf_counter()
    listening = server.start(fresh=False, timeout=timeout)
    status = first_answer(server.port, room, user, deadline=time.monotonic() + timeout, proc=server.proc)
    return listening, time.perf_counter() - started, status


def run(*, rooms: int, members: int, workdir: Path, log: Callable[..., None] = print) -> MemoryResult:
    result = MemoryResult(rooms, members)
    total = rooms * members
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "memory.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    # 1. the public API, in a child process of its own (clean RSS).
    log(f"memory: building {rooms:,} rooms x {members} members through open_conference ...")
    child = [sys.executable, "-m", "bench.memory", "api", str(db), str(rooms), str(members), "1000"]
    out = workdir / "memory-api.out"
    source = Path(os.environ.get("IMC_BENCH_SOURCE") or REPO)  # imc_actors from there, as ImcServer
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(source), str(REPO)]))}
    proc = procs.spawn(child, cwd=workdir, env=env, stdout=out, stderr=workdir / "memory-api.err")
    if not procs.wait(proc, 1800):
        procs.stop(proc)
        result.error = "API build took over 30 minutes"
        return result
    procs.stop(proc)
    try:
        data = json.loads(out.read_text().strip().splitlines()[-1])
    except (IndexError, ValueError):
        result.error = f"API build failed: {(workdir / 'memory-api.err').read_text()[-2000:]}"
        return result
    if data["failures"] or data["members"] != total:
        result.error = f"API build: {data['failures']} commands refused, {data['members']} members"
    result.api_seconds = data["seconds"]
    result.api_commands_per_s = total / data["seconds"]
    result.api_rss_base_mib = data["base_kib"] / 1024
    result.api_rss_mib = data["rss_kib"] / 1024
    result.api_bytes_per_member = (data["rss_kib"] - data["base_kib"]) * 1024 / total
    log(f"memory: API build {data['seconds']:.1f}s ({result.api_commands_per_s:,.0f} commands/s), "
        f"{result.api_bytes_per_member:.0f} bytes/member")  # fmt: skip

    # 2. restart: imc-actors loads the rooms from storage.
    last_room, last_member = f"room{rooms - 1}", f"u{rooms - 1}x0"
    empty_dir = workdir / "empty"
    empty_dir.mkdir(exist_ok=True)
    port = procs.free_port()
    empty = ImcServer(empty_dir, port)
    try:
        empty.start(fresh=True)
        first_answer(port, "room0", "nobody", deadline=time.monotonic() + 30, proc=empty.proc)  # type: ignore[arg-type]
        result.load_rss_empty_mib = _rss_kib(empty.pid) / 1024
    finally:
        empty.stop()
    server = ImcServer(workdir, procs.free_port())
    server.db_path = db
    try:
        listening, answered, status = _serve_and_time(server, last_room, last_member, timeout=600)
        time.sleep(0.5)
        result.load_rss_mib = _rss_kib(server.pid) / 1024
    except ServerError as exc:
        result.error = str(exc)[:500]
        return result
    finally:
        server.stop()
    if not status.startswith("SIP/2.0 200"):
        result.error = f"imc-actors after restart answered {status!r}"
    result.load_listening_s, result.load_first_answer_s = listening, answered
    result.load_bytes_per_member = (result.load_rss_mib - result.load_rss_empty_mib) * 1024 * 1024 / total
    log(f"memory: restart: listening after {listening:.1f}s, first answer after {answered:.1f}s "
        f"({status}), {result.load_bytes_per_member:.0f} bytes/member")  # fmt: skip

    # 3. Kamailio on a copy of the same rows.
    if KamailioServer.available() is None:
        try:
            _kamailio(result, db, workdir, last_room, last_member, total, log)
        except (ServerError, OSError, sqlite3.Error) as exc:
            log(f"memory: kamailio: {exc}")
    return result


def _kamailio(result: MemoryResult, db: Path, workdir: Path, room: str, user: str, total: int,
              log: Callable[..., None]) -> None:
    kdir = workdir / "kamailio"
    kdir.mkdir(exist_ok=True)
    empty = KamailioServer(kdir, procs.free_port())
    try:
        empty.start(fresh=True)
        time.sleep(1.0)
        result.kam_pss_empty_mib = procs.memory_kib(procs.descendants(empty.pid))[1] / 1024
    finally:
        empty.stop()
    server = KamailioServer(kdir, procs.free_port())
    server.db_path = kdir / "memory-copy.db"
    shutil.copy(db, server.db_path)
    with sqlite3.connect(server.db_path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("CREATE TABLE IF NOT EXISTS version (table_name VARCHAR(32) NOT NULL, "
                     "table_version INTEGER DEFAULT 0 NOT NULL, CONSTRAINT version_table_name_idx "
                     "UNIQUE (table_name))")  # fmt: skip
        conn.execute("INSERT OR IGNORE INTO version (table_name, table_version) "
                     "VALUES ('imc_rooms', 1), ('imc_members', 1)")
        # Kamailio 5.x reads each room's members with `room = ?`, which no index of the
        # schema serves: without this it scans a million rows per room (hours).
        conn.execute("CREATE INDEX IF NOT EXISTS bench_members_room ON imc_members (room)")
    # Kamailio keeps rooms in shared memory: give it room for a million members.
    server_command = server.command

    def command() -> list[str]:
        argv = server_command()
        i = argv.index("-m")  # -m <shm MiB> -M <private MiB>: the query result is private memory
        return [*argv[:i], "-m", "2048", "-M", "1024", *argv[i + 4 :]]

    server.command = command  # type: ignore[method-assign]
    try:
        _, answered, status = _serve_and_time(server, room, user, timeout=600)
        time.sleep(0.5)
        result.kam_pss_mib = procs.memory_kib(procs.descendants(server.pid))[1] / 1024
    finally:
        # SIGKILL: on SIGTERM Kamailio would spend minutes writing every row back.
        if server.proc is not None:
            procs.stop(server.proc, sig=9)
            server.proc = None
    result.kam_first_answer_s = answered
    result.kam_bytes_per_member = (result.kam_pss_mib - result.kam_pss_empty_mib) * 1024 * 1024 / total
    log(f"memory: kamailio: first answer after {answered:.1f}s ({status}), "
        f"{result.kam_bytes_per_member:.0f} bytes/member")  # fmt: skip


def render(result: MemoryResult) -> str:
    lines = [
        f"Memory, {result.rooms:,} rooms × {result.members} members ({result.rooms * result.members:,} members):",
        "",
        "| what | imc-actors | Kamailio 5.6 |",
        "|---|---:|---:|",
        f"| built through `open_conference` + `Conference.handle` (durable) | {result.api_seconds:.0f} s, "
        f"{result.api_commands_per_s:,.0f} commands/s | – |",
        f"| RSS per member, API-built | {result.api_bytes_per_member:.0f} B | – |",
        f"| RSS per member, loaded from storage | {result.load_bytes_per_member:.0f} B | "
        + (f"{result.kam_bytes_per_member:.0f} B (PSS)" if result.kam_bytes_per_member is not None else "–")
        + " |",
        f"| RSS after restart (empty server) | {result.load_rss_mib:.0f} MiB ({result.load_rss_empty_mib:.0f} MiB) | "
        + (f"{result.kam_pss_mib:.0f} MiB ({result.kam_pss_empty_mib:.0f} MiB) PSS" if result.kam_pss_mib else "–")
        + " |",
        f"| restart: listening / first answer | {result.load_listening_s:.1f} s / {result.load_first_answer_s:.1f} s | "
        + (f"– / {result.kam_first_answer_s:.1f} s" if result.kam_first_answer_s is not None else "–")
        + " |",
    ]
    if result.error:
        lines += ["", f"Problem: {result.error}"]
    return "\n".join(lines)


def as_dict(result: MemoryResult) -> dict[str, object]:
    return asdict(result)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "api":
        sys.exit(_child(sys.argv[2:]))
    print("usage: python -m bench memory   (this module's 'api' mode is its worker)", file=sys.stderr)
    sys.exit(2)
