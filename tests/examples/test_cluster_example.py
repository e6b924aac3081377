"""examples/cluster: two imc-actors nodes behind Kamailio's dispatcher, and the DNS SRV records
that list the nodes (issue 13, item 5).

Always: the node configs parse and agree with kamailio.cfg and dispatcher.list, the zone file
and the dnsmasq config list the same records, naming the dns-srv nodes, and both are linked.
With Kamailio installed: it accepts the cfg. With Kamailio and PostgreSQL: the two nodes (from
their TOML files), Kamailio (with the example's cfg and list) and test user agents talk SIP:
rooms land on the node their name hashes to, a room created via one node is used via the
other (forwarding), and after ``kill -9`` of a node the dispatcher's probes mark it down and
the other node serves its rooms. With dnsmasq and PostgreSQL: dnsmasq serves the example's
records, they name both running nodes, and a MESSAGE to each resolved target works.

Each example file is used as written, except the SIP port (and dnsmasq's): when 5060 (5353) is
taken on one of the example's loopback addresses, one free on all of them is used instead,
written into a copy of dispatcher.list / dnsmasq.conf and passed as flags. The tables get
unique names (``--rooms-table`` ...) and are dropped afterwards. The test waits for what the
programs log (Kamailio's ``conference node down``, the survivor's ``taking over``), never sleeps.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from imc_actors import Config
from tests.storage.conftest import (
    SERVER_URLS,
    Tables,
    _why_unreachable,
    drop_tables,
    new_tables,
    skip_or_fail,
    version_table_exists,
)
from tests.support.dns import SrvTarget, resolve_a, resolve_srv
from tests.support.logged import LoggedProcess, logged_process
from tests.support.serve import listening_addresses
from tests.support.ua import TestUA

from .loader import EXAMPLES, ROOT

CLUSTER = EXAMPLES / "cluster"
DISPATCHER = CLUSTER / "dispatcher"
DNS = CLUSTER / "dns-srv"
CFG = DISPATCHER / "kamailio.cfg"
LIST = DISPATCHER / "dispatcher.list"
NODE_TOMLS = [DISPATCHER / "node-a.toml", DISPATCHER / "node-b.toml"]
DNS_TOMLS = [DNS / "node-a.toml", DNS / "node-b.toml"]
ZONE = DNS / "example.org.zone"
DNSMASQ_CONF = DNS / "dnsmasq.conf"

KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
)
KAMCMD = shutil.which("kamcmd") or (
    "/usr/sbin/kamcmd" if Path("/usr/sbin/kamcmd").exists() else None
)
DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None
)
needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None or KAMCMD is None, reason="kamailio (with kamcmd) is not installed"
)
needs_dnsmasq = pytest.mark.skipif(
    DNSMASQ is None, reason="dnsmasq is not installed (Debian: dnsmasq-base)"
)
ROOM_NAMES = [
    "chat",
    "lobby",
    "news",
    "dev",
    "ops",
    "sales",
    "support",
    "music",
    "books",
    "games",
    "food",
    "cars",
]


def defines() -> dict[str, str]:
    """The ``#!define NAME VALUE`` defaults of kamailio.cfg (quotes removed)."""
    found = re.findall(r"^#!define\s+(\w+)\s+(.+?)\s*$", CFG.read_text(), re.MULTILINE)
    return {name: value.strip('"') for name, value in found}


def dispatcher_list(text: str) -> list[tuple[int, str, int, int, str]]:
    """The lines of a dispatcher.list: (set, destination URI, flags, priority, attributes)."""
    entries = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            setid, uri, flags, priority, attrs = line.split()
            entries.append((int(setid), uri, int(flags), int(priority), attrs))
    return entries


def node_configs(paths: Sequence[Path]) -> list[Config]:
    return [Config.from_sources(str(path), environ={}) for path in paths]


def test_the_nodes_agree_with_kamailio_and_the_dispatcher_list():
    kam = defines()
    a, b = node_configs(NODE_TOMLS)
    assert (a.node, b.node) == ("a", "b")
    assert a.db_url == b.db_url and a.db_url.startswith("postgresql://")  # one database
    entries = dispatcher_list(LIST.read_text())
    assert [setid for setid, *_ in entries] == [int(kam["NODES_SET"])] * 2
    for config, (_, uri, flags, _priority, attrs) in zip((a, b), entries, strict=True):
        hosts = {(address.host, address.port) for address in config.listen_addresses}
        assert {address.transport for address in config.listen_addresses} == {"udp", "tcp"}
        [(host, port)] = hosts  # one address for both transports
        assert uri == f"sip:{host}:{port};transport=tcp"
        assert flags & 8  # probed from the start
        assert f"duid={config.node}" in attrs
        assert config.served_domains == [kam["IMC_DOMAIN"]]
        assert config.outbound_proxy == f"sip:{kam['FRONT_ADDR']}:{kam['FRONT_PORT']}"
        assert config.trusted_sources == [f"{kam['FRONT_ADDR']}/32"]
        assert config.identity_header == "P-Asserted-Identity"
        assert config.registrar is False  # Kamailio registers the users
    assert a.listen_addresses[0].host != b.listen_addresses[0].host  # own loopback addresses


def zone_records(text: str) -> set[tuple[str, ...]]:
    """The SRV and A records of a zone file: ("SRV", name, priority, weight, port, target) or
    ("A", name, address); relative names made absolute with $ORIGIN."""
    origin = re.search(r"^\$ORIGIN\s+(\S+)", text, re.MULTILINE)
    assert origin is not None
    suffix = origin.group(1)

    def absolute(name: str) -> str:
        return name.rstrip(".") if name.endswith(".") else f"{name}.{suffix}".rstrip(".")

    records: set[tuple[str, ...]] = set()
    for line in text.splitlines():
        fields = line.split(";", 1)[0].split()
        if "SRV" in fields:
            i = fields.index("SRV")
            priority, weight, port, target = fields[i + 1 : i + 5]
            records.add(("SRV", absolute(fields[0]), priority, weight, port, absolute(target)))
        elif "A" in fields:
            i = fields.index("A")
            records.add(("A", absolute(fields[0]), fields[i + 1]))
    return records


def dnsmasq_records(text: str) -> set[tuple[str, ...]]:
    """The ``srv-host`` and ``host-record`` lines of a dnsmasq config, as :func:`zone_records`."""
    records: set[tuple[str, ...]] = set()
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "srv-host":
            name, target, port, priority, weight = value.strip().split(",")
            records.add(("SRV", name, priority, weight, port, target))
        elif key.strip() == "host-record":
            name, address = value.strip().split(",")
            records.add(("A", name, address))
    return records


def test_the_zone_file_and_the_dnsmasq_config_list_the_dns_srv_nodes():
    zone = zone_records(ZONE.read_text())
    targets = {record[5] for record in zone if record[0] == "SRV"}
    zone = {record for record in zone if record[0] == "SRV" or record[1] in targets}  # not ns
    assert zone == dnsmasq_records(DNSMASQ_CONF.read_text())
    nodes = node_configs(DNS_TOMLS)
    assert [config.node for config in nodes] == ["a", "b"]
    assert nodes[0].db_url == nodes[1].db_url
    addresses = {record[2] for record in zone if record[0] == "A"}
    assert addresses == {config.listen_addresses[0].host for config in nodes}
    for service in ("_sip._udp", "_sip._tcp"):
        srv = [
            record for record in zone if record[0] == "SRV" and record[1].startswith(service + ".")
        ]
        assert len(srv) == 2, service  # both nodes, for each transport
        for record in srv:
            target = record[5]
            [address] = [a[2] for a in zone if a[0] == "A" and a[1] == target]
            [config] = [c for c in nodes if c.listen_addresses[0].host == address]
            transport = service.removeprefix("_sip._")
            assert (transport, int(record[4])) in {
                (a.transport, a.port) for a in config.listen_addresses
            }
    for config in nodes:
        assert config.registrar is True  # clients register with any node
        assert config.served_domains == [srv_domain(zone)]


def srv_domain(records: set[tuple[str, ...]]) -> str:
    """The domain the SRV records are for (``_sip._udp.<domain>``)."""
    [domain] = {record[1].split(".", 2)[2] for record in records if record[0] == "SRV"}
    return domain


def test_the_cluster_example_is_referenced():
    for index in (ROOT / "README.md", EXAMPLES / "README.md"):
        text = index.read_text()
        assert "cluster/" in text, index
    section = (ROOT / "README.md").read_text().split("### Running several workers and nodes", 1)[1]
    assert "examples/cluster/" in section.split("\n## ", 1)[0]
    overview = (CLUSTER / "README.md").read_text()
    assert "dispatcher/" in overview and "dns-srv/" in overview
    notes = (DISPATCHER / "README.md").read_text()
    assert all(
        name in notes for name in ("kamailio.cfg", "dispatcher.list", "node-a.toml", "node-b.toml")
    )
    notes = (DNS / "README.md").read_text()
    assert all(
        name in notes for name in ("example.org.zone", "dnsmasq.conf", "node-a.toml", "node-b.toml")
    )


@needs_kamailio
def test_kamailio_accepts_the_cluster_config():
    result = subprocess.run(
        [KAMAILIO, "-c", "-f", str(CFG), "-A", f'DISPATCHER_LIST="{LIST}"'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------- running


def port_free_on(hosts: Sequence[str], preferred: int) -> int:
    """``preferred`` when it is free for UDP and TCP on every host, else a port that is."""

    def free(port: int) -> bool:
        sockets = []
        try:
            for host in hosts:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    sockets.append(sock)
                    sock.bind((host, port))
            return True
        except OSError:
            return False
        finally:
            for sock in sockets:
                sock.close()

    if free(preferred):
        return preferred
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if free(port):
            return port
    raise OSError(f"no port free on all of {hosts}")


def postgresql_url() -> str:
    url = SERVER_URLS["postgresql"]
    reason = _why_unreachable("postgresql", url)
    if reason is not None:
        skip_or_fail(reason)
    return url


@asynccontextmanager
async def fresh_tables(url: str) -> AsyncIterator[Tables]:
    """Unique tables, created (``db init``) before the nodes start and dropped afterwards."""
    tables = new_tables()
    had_version = version_table_exists(url)
    repository = tables.repository(url)
    try:
        repository.init_schema()
        repository.close()
        yield tables
    finally:
        drop_tables(url, tables, drop_version=not had_version)


@asynccontextmanager
async def node(
    toml: Path, url: str, tables: Tables, port: int, *extra: str
) -> AsyncIterator[LoggedProcess]:
    """``imc-actors serve --config toml`` on its own address and ``port``, on ``tables``."""
    host = Config.from_sources(str(toml), environ={}).listen_addresses[0].host
    command = [
        sys.executable, "-m", "imc_actors", "serve", "--config", str(toml), "--db-url", url,
        "--listen", f"udp:{host}:{port}", "--listen", f"tcp:{host}:{port}", *tables.flags(), *extra,
    ]  # fmt: skip
    async with logged_process(command) as process:
        with trio.fail_after(60):  # safety net: startup takes about a second
            line = await process.logged(b"listening on")
        assert listening_addresses(line) == f"udp:{host}:{port} tcp:{host}:{port}", process.tail()
        yield process


async def kamcmd(ctl: str, *args: str) -> str:
    assert KAMCMD is not None
    result = await trio.run_process(
        [KAMCMD, "-s", ctl, *args], capture_stdout=True, capture_stderr=True
    )
    return result.stdout.decode()


async def expect(agent: TestUA, body: str) -> None:
    with trio.fail_after(10):  # safety net only
        message = await agent.next_message()
    assert message.body == body.encode(), (message.body, body)
    assert message.header("X-Service") == "imc"  # extra_hdrs: it came from a node


async def locate(url: str, tables: Tables, room: str) -> str | None:
    """The node holding ``room``'s live lease (``room`` a key, ``name@domain``)."""

    def read() -> str | None:
        repository = tables.repository(url)
        try:
            location = repository.locate(room)
        finally:
            repository.close()
        return None if location is None else location.node

    return await trio.to_thread.run_sync(read)


@needs_kamailio
async def test_two_nodes_behind_the_dispatcher(tmp_path, nursery):
    url = postgresql_url()
    kam = defines()
    front, domain = kam["FRONT_ADDR"], kam["IMC_DOMAIN"]
    configs = node_configs(NODE_TOMLS)
    hosts = [config.listen_addresses[0].host for config in configs]
    port = port_free_on([front, *hosts], int(kam["FRONT_PORT"]))
    node_list = tmp_path / "dispatcher.list"
    node_list.write_text(LIST.read_text().replace(":5060;", f":{port};"))
    ctl = f"unix:{tmp_path / 'kamailio_ctl'}"
    lease_ttl = configs[0].lease_ttl
    by_uri = {
        f"sip:{host}:{port};transport=tcp": config.node
        for host, config in zip(hosts, configs, strict=True)
    }
    async with fresh_tables(url) as tables:
        flags = ["--outbound-proxy", f"sip:{front}:{port}"]
        async with (
            node(NODE_TOMLS[0], url, tables, port, *flags) as node_a,
            node(NODE_TOMLS[1], url, tables, port, *flags) as node_b,
            logged_process(
                [
                    KAMAILIO,
                    "-f",
                    str(CFG),
                    "-DD",
                    "-E",
                    "-A",
                    f"FRONT_PORT={port}",
                    "-A",
                    f'DISPATCHER_LIST="{node_list}"',
                    "-A",
                    f'CTL_SOCKET="{ctl}"',
                    "-P",
                    str(tmp_path / "kamailio.pid"),
                    "-Y",
                    str(tmp_path),
                    "-m",
                    "64",
                    "-M",
                    "8",
                ]
            ) as kamailio,  # fmt: skip
        ):
            nodes = {"a": node_a, "b": node_b}
            alice = await TestUA.open(nursery, "alice", kam["USER_DOMAIN"], (front, port))
            bob = await TestUA.open(nursery, "bob", kam["USER_DOMAIN"], (front, port))
            # the first REGISTER is retransmitted until Kamailio listens
            assert (await alice.register()).code == 200, kamailio.tail()
            assert (await bob.register()).code == 200

            # Where the dispatcher sends each name: the slot of its hash in the set's order.
            listing = await kamcmd(ctl, "dispatcher.list")
            order = [by_uri[uri] for uri in re.findall(r"URI: (\S+)", listing)]
            assert sorted(order) == ["a", "b"], listing

            async def hashed(name: str) -> str:
                answer = await kamcmd(ctl, "dispatcher.hash", "2", name)
                slot = re.search(r"slot: (\d+)", answer)
                assert slot is not None, answer
                return order[int(slot.group(1))]

            names = {name: await hashed(name) for name in ROOM_NAMES}
            manager_node = await hashed("imc-manager")
            other = "b" if manager_node == "a" else "a"
            on_node = {n: [name for name, at in names.items() if at == n] for n in ("a", "b")}
            assert on_node["a"] and len(on_node[other]) >= 2, names  # rooms for both nodes

            # 1. A room made by a request to its own URI (#join creates it) lands on the node
            #    its name hashes to: that node holds its lease.
            hashed_rooms = {n: on_node[n][0] for n in ("a", "b")}
            for n, room in hashed_rooms.items():
                uri = f"sip:{room}@{domain}"
                assert (await alice.message(uri, "#join")).code == 200
                await expect(alice, "*** Room was created")
                assert (await bob.message(uri, "#join")).code == 200
                await expect(alice, "*** [bob] has joined the room")
                await expect(bob, "*** [bob] has joined the room")
                assert await locate(url, tables, f"{room}@{domain}") == n

            # 2. #create goes to the manager's node; the room's own name hashes to the other
            #    node, which forwards every request for it to the owner.
            far = next(name for name in on_node[other] if name not in hashed_rooms.values())
            far_uri = f"sip:{far}@{domain}"
            assert (await alice.message(f"sip:imc-manager@{domain}", f"#create {far}")).code == 200
            await expect(alice, "*** Room was created")
            assert await locate(url, tables, f"{far}@{domain}") == manager_node
            assert (await bob.message(far_uri, "#join")).code == 200  # via the other node
            await expect(alice, "*** [bob] has joined the room")
            await expect(bob, "*** [bob] has joined the room")
            assert (await bob.message(far_uri, "hello from the other node")).code == 202
            await expect(alice, "[bob]: hello from the other node")
            assert await locate(url, tables, f"{far}@{domain}") == manager_node  # not moved

            # 3. kill -9 of the manager's node: the probes mark it down, the other node takes
            #    its rooms over once their leases expire, and serves them through Kamailio.
            victim, survivor = manager_node, other
            victim_uri = next(uri for uri, n in by_uri.items() if n == victim)
            nodes[victim].process.kill()  # no release of its leases, no cleanup
            await nodes[victim].process.wait()
            probe_interval = int(kam["PROBE_INTERVAL"]) + int(kam["PROBE_TIMEOUT"]) / 1000
            # safety net: lease_ttl + a lease round (lease_ttl / 3) + a probe, and slack for
            # a loaded machine; the waits end as soon as the programs say it happened
            with trio.fail_after(lease_ttl * 4 / 3 + probe_interval + 10):
                await kamailio.logged(f"conference node down: {victim_uri}".encode())
                await nodes[survivor].logged(b"rooms of dead nodes")
            victim_room = hashed_rooms[victim]
            assert (await bob.message(f"sip:{victim_room}@{domain}", "#members")).code == 200, (
                kamailio.tail() + nodes[survivor].tail()
            )
            await expect(bob, "Members:\n*[alice]\n[bob]")  # restored from the database
            assert await locate(url, tables, f"{victim_room}@{domain}") == survivor
            assert (await alice.message(far_uri, "still here")).code == 202
            await expect(bob, "[alice]: still here")
            assert await locate(url, tables, f"{far}@{domain}") == survivor
            listing = await kamcmd(ctl, "dispatcher.list")
            flags_of = dict(
                zip(
                    re.findall(r"URI: (\S+)", listing),
                    re.findall(r"FLAGS: (\S+)", listing),
                    strict=True,
                )
            )
            assert flags_of[victim_uri].startswith("I") and flags_of[
                next(u for u in by_uri if u != victim_uri)
            ].startswith("A")
            alice.close()
            bob.close()


# ----------------------------------------------------------------------------------- DNS SRV


@needs_dnsmasq
async def test_the_srv_records_name_both_nodes_and_each_takes_messages(tmp_path, nursery):
    url = postgresql_url()
    conf = DNSMASQ_CONF.read_text()
    listen = re.search(r"^listen-address=(\S+)", conf, re.MULTILINE)
    dns_port = re.search(r"^port=(\d+)", conf, re.MULTILINE)
    assert listen is not None and dns_port is not None
    dns_host = listen.group(1)
    configs = node_configs(DNS_TOMLS)
    hosts = [config.listen_addresses[0].host for config in configs]
    sip_port = port_free_on(hosts, configs[0].listen_addresses[0].port)
    port = port_free_on([dns_host], int(dns_port.group(1)))
    conf = re.sub(r"^port=\d+", f"port={port}", conf, flags=re.MULTILINE)
    conf = re.sub(r"^(srv-host=[^,]+,[^,]+),5060,", rf"\g<1>,{sip_port},", conf, flags=re.MULTILINE)
    copy = tmp_path / "dnsmasq.conf"
    copy.write_text(conf)
    domain = configs[0].served_domains[0]
    async with (
        fresh_tables(url) as tables,
        node(DNS_TOMLS[0], url, tables, sip_port) as node_a,
        node(DNS_TOMLS[1], url, tables, sip_port) as node_b,
        logged_process(
            [DNSMASQ, f"--conf-file={copy}", "--keep-in-foreground", "--log-facility=-"]
        ) as dnsmasq,
    ):
        with trio.fail_after(30):  # safety net: dnsmasq starts at once
            await dnsmasq.logged(b"started")
        server = (dns_host, port)
        udp = await resolve_srv(server, f"_sip._udp.{domain}")
        tcp = await resolve_srv(server, f"_sip._tcp.{domain}")
        assert {t.target for t in udp} == {t.target for t in tcp} and len(udp) == 2
        targets: list[tuple[SrvTarget, str]] = []
        for srv in sorted(udp, key=lambda t: (t.priority, -t.weight, t.target)):
            [address] = await resolve_a(server, srv.target)
            targets.append((srv, address))
        assert sorted(address for _, address in targets) == sorted(hosts)  # both running nodes
        assert {srv.port for srv, _ in targets} == {sip_port}
        assert node_a.process.returncode is None and node_b.process.returncode is None

        # A MESSAGE to each resolved target: alice registers and creates the room through the
        # first, bob through the second; the second forwards to the room's owner.
        (_, first), (_, second) = targets
        alice = await TestUA.open(nursery, "alice", domain, (first, sip_port))
        bob = await TestUA.open(nursery, "bob", domain, (second, sip_port))
        for agent in (alice, bob):
            assert (await agent.register()).code == 200
        room = f"sip:chat@{domain}"
        assert (await alice.message(f"sip:imc-manager@{domain}", "#create chat")).code == 200
        await expect_plain(alice, "*** Room was created")
        assert (await bob.message(room, "#join")).code == 200
        await expect_plain(alice, "*** [bob] has joined the room")
        await expect_plain(bob, "*** [bob] has joined the room")
        assert (await bob.message(room, "hello via SRV")).code == 202
        await expect_plain(alice, "[bob]: hello via SRV")
        alice.close()
        bob.close()


async def expect_plain(agent: TestUA, body: str) -> None:
    with trio.fail_after(10):  # safety net only
        message = await agent.next_message()
    assert message.body == body.encode(), (message.body, body)
