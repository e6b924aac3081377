"""``imc-actors serve --workers 2`` as a real process tree (issue 13, items 2, 4 and 6): two
worker nodes share the SIP ports of 127.0.0.4 (SO_REUSEPORT), rooms made through either are
used through the other (steered to the room's home worker, or forwarded), a worker killed
with ``kill -9`` has its rooms served again with every acknowledged change, and SIGTERM to
the parent hands every lease over.

The kernel picks the worker of each client (by a hash of its source port), so the tests use
many clients and read from the lease table which worker owns what. Waits are for log lines
and for answers (polled, with a deadline), never sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import peewee
import trio

from imc_actors.transport.steering import home_of
from tests.integration.conftest import DOMAIN, MANAGER, expect
from tests.storage.conftest import Tables
from tests.support.serve import ServeProcess, serve_process
from tests.support.ua import TestUA

HOST = "127.0.0.4"
TTL = "1.5"
CLIENTS = 16  # all on one worker by chance: 2 x 2^-16


def leases(raw_db: peewee.Database, tables: Tables) -> dict[str, tuple[str, int, int]]:
    """room -> (node, epoch, expires ms) as stored."""
    q = raw_db.quote[0], raw_db.quote[-1]
    rows = raw_db.execute_sql(f"SELECT room, node, epoch, expires FROM {q[0]}{tables.leases}{q[1]}")
    return {room: (node, int(epoch), int(expires)) for room, node, epoch, expires in rows}


def nodes(raw_db: peewee.Database, tables: Tables) -> dict[str, tuple[list[str], int]]:
    """node -> (addresses, heartbeat ms) as stored."""
    q = raw_db.quote[0], raw_db.quote[-1]
    rows = raw_db.execute_sql(f"SELECT name, addresses, heartbeat FROM {q[0]}{tables.nodes}{q[1]}")
    return {name: (addresses.split(), int(heartbeat)) for name, addresses, heartbeat in rows}


def worker_pids(server: ServeProcess) -> dict[str, int]:
    """node -> pid of its latest process, from the parent's ``started`` lines."""
    pids = {}
    for line in server.log:
        found = re.search(rb"\(node (\S+)\) started, pid (\d+)", line)
        if found:
            pids[found.group(1).decode()] = int(found.group(2))
    return pids


HELD = b"*** Room is held by another node now"


async def answered(agent: TestUA, room: str, body: str, code: int = 200) -> None:
    """Send ``body`` to ``room`` until it gets ``code`` (503 while the room's lease has not
    expired yet after a kill); a deadline bounds it. A 503 may come with its ``***`` notice
    (read past with :func:`expect_past_refusals`)."""
    with trio.fail_after(30):  # safety net: lease_ttl and a restart are a few seconds
        while (response := await agent.message(room, body)).code != code:
            assert response.code == 503, response
            await trio.sleep(0.1)  # poll again: the condition is the answer itself


async def expect_past_refusals(agent: TestUA, body: str, sender: str) -> None:
    """The next MESSAGE ``agent`` receives that is not a 503's "held by another node" notice
    is ``body`` from ``sender``."""
    with trio.fail_after(10):
        while (message := await agent.next_message()).body.startswith(HELD):
            pass
    assert (message.body, message.from_uri) == (body.encode(), sender)


async def test_two_workers_share_the_ports_forward_fail_over_and_hand_over(
    db_url: str, tables: Tables, raw_db: peewee.Database, nursery: trio.Nursery
) -> None:
    flags = [*tables.flags(), "--lease-ttl", TTL, "--workers", "2", "--node", "w"]
    async with serve_process(db_url, *flags, host=HOST) as server:
        assert await server.logged(b"2 workers (nodes w-0 w-1) are serving")
        assert server.udp[0] == HOST and server.tcp[0] == HOST  # one shared port each
        advertised = nodes(raw_db, tables)
        assert sorted(advertised) == ["w-0", "w-1"]
        shared = {f"udp:{HOST}:{server.udp[1]}", f"tcp:{HOST}:{server.tcp[1]}"}
        for addresses, _ in advertised.values():  # private address first, then the shared ones
            private = addresses[0]
            assert private.startswith(f"udp:{HOST}:") and private not in shared
            assert shared <= set(addresses)

        agents = [await TestUA.open(nursery, f"u{i}", DOMAIN, server.udp) for i in range(CLIENTS)]
        for index, agent in enumerate(agents):
            assert (await agent.register()).code == 200
            assert (await agent.message(MANAGER, f"#create r{index}")).code == 200
            await expect(agent, "*** Room was created", sender=f"sip:r{index}@{DOMAIN}")
        owner = {room.split("@")[0]: node for room, (node, _, _) in leases(raw_db, tables).items()}
        assert set(owner.values()) == {"w-0", "w-1"}, owner  # both workers serve rooms
        # each room was created at its home worker (the #create forwarded there when it
        # reached the other one), where the other worker steers the room's UDP requests
        assert all(node == f"w-{home_of(name, 2)}" for name, node in owner.items()), owner

        # each client reaches the worker that owns its own room: join a room of the other one
        first = agents[0]
        home = owner["r0"]
        index = next(i for i in range(CLIENTS) if owner[f"r{i}"] != home)
        room, creator = f"sip:r{index}@{DOMAIN}", agents[index]
        assert (await first.message(room, "#join")).code == 200  # steered to the owner
        for agent in (creator, first):
            await expect(agent, "*** [u0] has joined the room", sender=room)
        assert (await first.message(room, "said before the kill")).code == 202
        await expect(creator, "[u0]: said before the kill", sender=room)

        # kill -9 of the room's worker: served again (restored from the database) in time
        victim = owner[f"r{index}"]
        os.kill(worker_pids(server)[victim], signal.SIGKILL)
        await server.logged(f"(node {victim}, pid".encode())  # the parent saw it die
        await answered(first, room, "#members")
        await expect_past_refusals(first, f"Members:\n*[u{index}]\n[u0]", sender=room)
        assert (await first.message(room, "#history")).code == 200
        told = await expect_prefix(first, "History:")
        assert b"[u0]: said before the kill" in told
        assert (await server.logged(b"starting it again")) is not None
        alive = leases(raw_db, tables)[f"r{index}@{DOMAIN}"]
        assert alive[1] > 1  # a new epoch: taken over (by the other worker or the restarted one)

        # SIGTERM to the parent: every worker shuts down and hands its leases over
        assert await server.terminate() == 0
    assert all(expires == 0 for _, _, expires in leases(raw_db, tables).values())
    assert all(heartbeat == 0 for _, heartbeat in nodes(raw_db, tables).values())


async def expect_prefix(agent: TestUA, prefix: str) -> bytes:
    """The body of the next MESSAGE ``agent`` receives, which starts with ``prefix``."""
    with trio.fail_after(10):
        message = await agent.next_message()
    assert message.body.startswith(prefix.encode()), message.body
    return message.body


def run_serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imc_actors", "serve", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_port_in_use_stops_the_workers_with_the_one_line_message(tmp_path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_REUSEPORT: nobody shares
    taken.bind((HOST, 0))
    try:
        port = taken.getsockname()[1]
        result = run_serve(
            "--workers", "2", "--listen", f"udp:{HOST}:{port}",
            "--db-url", f"sqlite:///{tmp_path / 'imc.db'}",
        )  # fmt: skip
    finally:
        taken.close()
    assert result.returncode == 1
    refusals = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert refusals == [
        f"imc-actors: worker 0 (node {refusals[0].split('node ')[1].split(')')[0]}) cannot start: "
        f"cannot bind udp:{HOST}:{port}: Address already in use"
    ], result.stderr


def test_workers_need_a_database_they_share(tmp_path) -> None:
    result = run_serve(
        "--workers", "2", "--db-url", "sqlite:///:memory:", "--listen", f"udp:{HOST}:0"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imc-actors: invalid workers: 2 workers need one database they share, and "
        "sqlite:///:memory: is a new one in each process; use a SQLite file (sqlite:///imc.db) "
        "or PostgreSQL or MariaDB"
    ]


def test_workers_are_bounded(tmp_path) -> None:
    for count in ("0", "65", "two"):
        result = run_serve("--workers", count, "--db-url", f"sqlite:///{tmp_path / 'x.db'}")
        assert result.returncode == 2
        assert result.stderr.startswith("imc-actors: invalid workers: "), result.stderr
