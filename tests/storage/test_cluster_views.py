"""The whole cluster in every node's management views (issue 13 item 3): two real
``imc-actors serve`` processes, nodes ``a`` (127.0.0.2) and ``b`` (127.0.0.3) on one database.

Rooms created on ``a`` show on ``b`` in ``#rooms`` (private ones only to their members), in
JSON-RPC, the MI FIFO, the status page's API and ``/metrics`` (with ``a``'s ``node`` label);
an admin action on ``b`` for ``a``'s room is refused naming ``a``; after ``kill -9`` of ``a``,
``b`` shows it as not live and its series leave ``b``'s ``/metrics``. Waits poll a real
condition (the answer of a management call) under a deadline, never a fixed sleep.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import DOMAIN, MANAGER, expect
from tests.storage.conftest import Tables
from tests.support.control import MiClient, http, rpc
from tests.support.serve import serve_process
from tests.support.ua import TestUA

CHAT = f"sip:chat@{DOMAIN}"
SECRET = f"sip:secret@{DOMAIN}"

T = TypeVar("T")


async def call(url: str, method: str, params: Any = ()) -> dict[str, Any]:
    answer = await rpc(
        url + "/RPC", {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
    )
    assert answer.status == 200, answer.body
    return answer.json()


async def until(probe: Callable[[], Awaitable[T | None]], seconds: float = 20) -> T:
    """Poll ``probe`` until it returns something other than None (a safety net bounds it)."""
    with trio.fail_after(seconds):
        while True:
            found = await probe()
            if found is not None:
                return found
            await trio.sleep(0.05)  # a poll interval, not a synchronisation


async def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = await http(url + "/metrics")
    assert answer.status == 200
    found = {}
    for family in text_string_to_metric_families(answer.body.decode()):  # parses: valid text
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def cli(*args: str) -> list[str]:
    """``imc-actors ARGS`` (exit 0); its output lines."""
    done = await trio.run_process([sys.executable, "-m", "imc_actors", *args], capture_stdout=True)
    return done.stdout.decode().splitlines()


def nodes_of(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    return {dict(labels)["node"] for _, labels in found}


async def test_every_node_shows_every_room_of_the_cluster_and_the_nodes(
    db_url: str, tables: Tables, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text("cluster_view_age = 0.0\nmetrics_share_interval = 0.2\n")
    flags = [
        *tables.flags(),
        "--lease-ttl",
        "1.5",
        "--config",
        str(config),
        "--reply-dir",
        str(tmp_path),
    ]
    async with (
        serve_process(
            db_url, *flags, "--node", "a", "--rpc-listen", "127.0.0.2:0", host="127.0.0.2"
        ) as a,
        serve_process(
            db_url, *flags, "--node", "b", "--rpc-listen", "127.0.0.3:0",
            "--mi-fifo", str(tmp_path / "b.fifo"), host="127.0.0.3",
        ) as b,
    ):  # fmt: skip
        a_url, b_url = await a.management_url(), await b.management_url()
        alice = await TestUA.open(nursery, "alice", DOMAIN, a.udp)
        bob = await TestUA.open(nursery, "bob", DOMAIN, b.udp)
        for agent in (alice, bob):
            assert (await agent.register()).code == 200
        assert (await alice.message(MANAGER, "#create chat")).code == 200
        await expect(alice, "*** Room was created", sender=CHAT)
        assert (await alice.message(MANAGER, "#create secret private")).code == 200
        await expect(alice, "*** Room was created", sender=SECRET)

        # no user registers on b the address of a room a serves (b's own rooms are none:
        # the rooms table answers; was 200, and the squatter's MESSAGEs then came "from" chat)
        squatter = await TestUA.open(nursery, "Chat", DOMAIN, b.udp)
        reply = await squatter.register()
        assert (reply.code, reply.reason) == (403, "Address Is A Room")

        # #rooms on b: a's rooms, the private one only for its member
        assert (await bob.message(MANAGER, "#rooms")).code == 200
        await expect(bob, "Rooms:\n[chat]", sender=MANAGER)
        alice.server = b.udp
        assert (await alice.register()).code == 200  # b knows where she is at once
        assert (await alice.message(MANAGER, "#rooms")).code == 200
        await expect(alice, "Rooms:\n[chat]\n[secret]", sender=MANAGER)

        # JSON-RPC on b: the rooms, their members and info from the database, a's node
        listed = (await call(b_url, "imc.list_rooms"))["result"]
        assert [(r["room"], r["members"], r["node"]) for r in listed] == [
            (CHAT, 1, "a"),
            (SECRET, 1, "a"),
        ]
        members = (await call(b_url, "imc.list_members", [CHAT]))["result"]
        assert members == {"room": CHAT, "members": [f"sip:alice@{DOMAIN}"], "count": 1}
        info = (await call(b_url, "imc.room_info", [SECRET]))["result"]
        assert (info["private"], info["owners"], info["node"]) == (
            True,
            [f"sip:alice@{DOMAIN}"],
            "a",
        )
        nodes = {n["name"]: n for n in (await call(b_url, "imc.nodes"))["result"]}
        assert set(nodes) == {"a", "b"}
        assert nodes["a"]["live"] and nodes["b"]["live"]
        assert (nodes["a"]["rooms"], nodes["b"]["rooms"]) == (2, 0)
        assert nodes["a"]["addresses"] == [
            f"udp:{a.udp[0]}:{a.udp[1]}",
            f"tcp:{a.tcp[0]}:{a.tcp[1]}",
        ]
        assert 0 <= nodes["a"]["age"] < 1.5
        # a write on b for a's room: handed to a, which carries it out (was: refused, 503
        # naming node a, which left the workers of serve --workers N no way to moderate the
        # rooms of any worker but the one with the management listener)
        refused = await call(b_url, "imc.kick", [CHAT, "bob"])  # a's room answers: no member
        assert refused["error"]["code"] == 404 and "bob" in refused["error"]["message"], refused
        banned = await call(b_url, "imc.ban", [CHAT, "mallory", "spam"])
        assert banned["result"]["room"] == CHAT, banned
        info = await call(a_url, "imc.ban", [CHAT, "mallory"])  # a has it: banned already
        assert info["error"] == {"code": 403, "message": "[mallory] is banned from this room already"}
        assert (await call(a_url, "imc.destroy_room", [SECRET]))["result"]["destroyed"] is True
        listed = (await call(b_url, "imc.list_rooms"))["result"]  # cluster_view_age = 0
        assert [r["room"] for r in listed] == [CHAT]

        # the CLI against b
        shown = await cli("nodes", "--rpc", b_url + "/RPC")
        assert shown[0].split() == ["NODE", "LIVE", "ROOMS", "AGE", "ADDRESSES"]
        assert [line.split()[:3] for line in shown[1:]] == [["a", "yes", "1"], ["b", "yes", "0"]]
        shown = await cli("rooms", "--rpc", b_url + "/RPC")
        assert [line.split() for line in shown] == [
            ["ROOM", "MEMBERS", "OWNER", "NODE"], [CHAT, "1", f"sip:alice@{DOMAIN}", "a"]
        ]  # fmt: skip

        # the MI FIFO on b
        mi = MiClient(str(tmp_path / "b.fifo"), str(tmp_path))
        reply = await mi.request(b":imc_list_rooms:rooms\n\n", "rooms")
        assert reply == f"200 OK\nROOM::  URI={CHAT} MEMBERS=1 OWNER=sip:alice@{DOMAIN} NODE=a\n\n"
        reply = await mi.request(b":imc_nodes:nodes\n\n", "nodes")
        lines = reply.splitlines()
        assert lines[0] == "200 OK" and lines[1].startswith("NODE:: a LIVE=yes ROOMS=1 AGE=")
        assert lines[2].startswith("NODE:: b LIVE=yes ROOMS=0 AGE=")

        # the status page's API on b
        page = (await http(b_url + "/api/rooms")).json()
        assert [(r["room"], r["node"]) for r in page["rooms"]] == [(CHAT, "a")]
        assert [(n["name"], n["live"]) for n in page["nodes"]] == [("a", True), ("b", True)]
        room = (await http(b_url + f"/api/room?uri={CHAT}")).json()
        assert (room["node"], room["count"]) == ("a", 1)

        # /metrics on b: b's own series and a's, each with its node label, one family each
        async def both() -> dict[Any, float] | None:
            found = await samples(b_url)  # a's snapshot from after the destroy: 1 lease
            return found if found.get(("imc_leases_held", (("node", "a"),))) == 1 else None

        found = await until(both)
        assert nodes_of(found) == {"a", "b"}
        assert found[("imc_leases_held", (("node", "b"),))] == 0
        assert found[("imc_rooms", (("node", "a"),))] == 1

        # kill -9 of a: b shows it as not live, and a's series leave b's /metrics
        assert await a.kill() != 0

        async def a_dead() -> dict[str, Any] | None:
            rows = {n["name"]: n for n in (await call(b_url, "imc.nodes"))["result"]}
            return rows["a"] if not rows["a"]["live"] else None

        dead = await until(a_dead)
        assert dead["age"] >= 1.5

        async def a_gone() -> bool | None:
            return True if nodes_of(await samples(b_url)) == {"b"} else None

        assert await until(a_gone)
        page = (await http(b_url + "/api/rooms")).json()
        assert ("a", False) in [(n["name"], n["live"]) for n in page["nodes"]]
        assert await b.terminate() == 0
