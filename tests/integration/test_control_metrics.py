"""``/metrics`` end to end: values move when SIP messages flow."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from imc_actors.conference import IncomingMessage
from imc_actors.control.metrics import ServerMetrics, families_of
from tests.integration.conftest import DOMAIN
from tests.support import free_port
from tests.support.control import CHAT, MANAGER, command, http, next_message


@pytest.fixture
def config_overrides() -> dict:
    return {"rpc_listen": "127.0.0.1:0"}


async def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as ``{(name, sorted labels): value}``."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # deliveries and answers settled
    answer = await http(server.http_url + "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, node: str = "", **labels: str) -> float:
    """The sample ``name`` with ``labels``, of ``node`` (every series has a node label: ``""``
    without config ``node``)."""
    return samples[(name, tuple(sorted((labels | {"node": node}).items())))]


async def test_every_series_has_a_node_label_empty_without_a_node_name(server, ua):
    samples = await scrape(server)
    assert samples and {dict(labels).get("node") for _, labels in samples} == {""}


async def test_metrics_move_with_traffic(server, ua):
    before = await scrape(server)
    assert value(before, "imc_rooms") == 0
    assert value(before, "imc_messages_in_total", kind="chat") == 0
    assert value(before, "imc_actor_restarts_total") == 0
    assert value(before, "imc_mailbox_depth_max") == 0
    assert value(before, "imc_sip_transactions_refused_total") == 0

    alice, bob = await ua("alice"), await ua("bob")
    await command(alice, MANAGER, "#create chat")
    await next_message(alice)
    await command(bob, CHAT, "#join")
    await next_message(alice)
    await next_message(bob)
    await command(bob, CHAT, "hello", code=202)
    assert await next_message(alice) == b"[bob]: hello"
    await command(bob, "sip:nope@127.0.0.1", "hello?", code=404)
    await next_message(bob)  # the 404 is explained in a notice

    after = await scrape(server)
    assert value(after, "imc_rooms") == 1
    assert value(after, "imc_members") == 2
    assert value(after, "imc_messages_in_total", kind="command") == 2
    assert value(after, "imc_messages_in_total", kind="chat") == 2
    assert value(after, "imc_messages_out_total", kind="relay") == 1
    assert value(after, "imc_messages_out_total", kind="notice") == 4
    assert value(after, "imc_deliveries_total", result="ok") == 5
    assert value(after, "imc_deliveries_total", result="failed") == 0
    assert value(after, "imc_sip_responses_total", method="MESSAGE", code="200") == 2
    assert value(after, "imc_sip_responses_total", method="MESSAGE", code="202") == 1
    assert value(after, "imc_sip_responses_total", method="MESSAGE", code="404") == 1
    assert value(after, "imc_sip_responses_total", method="REGISTER", code="200") == 2
    assert value(after, "imc_store_commits_total") == 5  # two REGISTERs, #create, #join, the archived line
    assert value(after, "imc_store_commit_seconds_count") >= 1  # one transaction per group commit
    assert value(after, "imc_store_commit_seconds_bucket", le="+Inf") == value(after, "imc_store_commit_seconds_count")
    assert value(after, "imc_room_commands_total") == 3
    assert value(after, "imc_sip_requests_total") == 6
    assert value(after, "imc_sip_received_total") > value(before, "imc_sip_received_total")
    assert value(after, "imc_store_available") == 1
    assert value(after, "imc_store_outages_total") == 0
    assert value(after, "imc_actor_restarts_total") == 0
    assert not [name for name, _ in after if name.endswith("_created")]  # nobody asked for them


async def test_failed_deliveries_are_counted(server, ua):
    alice = await ua("alice")
    await command(alice, MANAGER, "#create chat")
    await next_message(alice)
    dead = await ua("dead", answer=403)  # registered, but refuses every MESSAGE
    await command(dead, CHAT, "#join")
    await next_message(alice)
    await next_message(dead)
    samples = await scrape(server)
    assert value(samples, "imc_deliveries_total", result="failed") == 1
    assert value(samples, "imc_sip_client_requests_total", result="failed") == 1
    assert value(samples, "imc_pending_total", event="queued") == 0  # a refusal is not stored


async def test_notices_for_an_unreachable_member_are_stored_and_counted(server, ua):
    alice = await ua("alice")
    await command(alice, MANAGER, "#create chat")
    await next_message(alice)
    away = await ua("away", answer=480)  # registered, but "temporarily unavailable"
    await command(away, CHAT, "#join")
    await next_message(alice)
    await next_message(away)  # answered 480: stored for away
    await server.conference.flush_notices()
    samples = await scrape(server)
    assert value(samples, "imc_deliveries_total", result="failed") == 0
    assert value(samples, "imc_pending_total", event="queued") == 1
    assert value(samples, "imc_pending_notices") == 1
    assert value(samples, "imc_pending_members") == 1


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0", "max_transactions": 1}])
async def test_requests_refused_at_the_transaction_limit_are_counted(server, ua):
    alice = await ua("alice")  # its REGISTER holds the one server transaction (Timer J: 32 s)
    refused = await alice.request("OPTIONS", f"sip:{alice.domain}")
    assert (refused.code, refused.header("Retry-After")) == (503, "1")
    samples = await scrape(server)
    assert value(samples, "imc_sip_transactions_refused_total") == 1
    assert value(samples, "imc_sip_server_transactions") == 1


async def test_requests_ended_by_icmp_unreachable_are_counted(server, ua):
    alice = await ua("alice")
    before = await scrape(server)
    assert value(before, "imc_sip_client_unreachable_total") == 0
    gone = f"sip:gone@127.0.0.2:{free_port(host='127.0.0.2')}"  # a closed port, not our domain
    with trio.fail_after(5):  # Timer F would be 32 s
        result = await server.transport.send_request(
            "MESSAGE", gone, from_uri=alice.uri, to_uri=gone
        )
    assert result.code == 503
    after = await scrape(server)
    assert value(after, "imc_sip_client_unreachable_total") == 1
    assert value(after, "imc_sip_client_timeouts_total") == 0


THROTTLING = {"rpc_listen": "127.0.0.1:0", "flood_rate": 0.01, "flood_burst": 2, "flood_block": 60}


@pytest.mark.parametrize("config_overrides", [THROTTLING])
async def test_throttled_requests_are_counted(server, ua):
    alice = await ua("alice", register=False)
    codes = [(await alice.request("OPTIONS", f"sip:{alice.domain}")).code for _ in range(5)]
    assert codes == [200, 200, 503, 503, 503]  # flood_burst, then the source is blocked
    samples = await scrape(server)
    assert value(samples, "imc_sip_throttled_total") == 3
    assert value(samples, "imc_sip_transactions_refused_total") == 0
    assert value(samples, "imc_sip_server_transactions") == 2  # the throttled got none
    assert value(samples, "imc_sip_transaction_bytes") > 0
    for name in ("imc_sip_vias_refused_total", "imc_sip_tcp_refused_total",
                 "imc_sip_tcp_outgoing_refused_total", "imc_sip_tcp_accept_failures_total"):  # fmt: skip
        assert value(samples, name) == 0


@pytest.mark.parametrize("config_overrides", [{**THROTTLING, "flood_burst": 12}])
async def test_each_page_of_a_long_reply_costs_the_source_a_request(server, ua):
    # a tour: ~930 #rooms a second from one address (inside flood_rate) made the server send
    # 9 pages each, more than it could, and the kernel dropped requests unanswered
    for i in range(300):  # rooms made through the embedding API: no SIP, no budget spent
        made = await server.conference.handle(
            IncomingMessage(MANAGER, f"sip:owner{i}@{DOMAIN}", f"#create room{i:03d}".encode(), None, f"c{i}")
        )
        assert made.code == 200
    alice = await ua("alice")  # one request of 12
    codes = []
    for _ in range(5):
        codes.append((await alice.message(MANAGER, "#rooms")).code)
    pages = [m for m in alice.pending_messages() if m.body.startswith(b"Rooms (1/")]
    (total,) = {int(m.body.split(b"/")[1].split(b")")[0]) for m in pages}
    assert total == 4  # 300 rooms: four pages, three of them charged beyond the request
    # 11 left: 1 + 3, 1 + 3, then the third request (the budget at 3) goes, its pages take
    # the budget below zero, and the source is refused from then on
    assert codes == [200, 200, 200, 503, 503]
    assert value(await scrape(server), "imc_sip_throttled_total") == 2


@pytest.mark.parametrize("config_overrides", [{**THROTTLING, "trusted_sources": ["127.0.0.0/8"]}])
async def test_trusted_sources_are_not_throttled(server, ua):
    alice = await ua("alice", register=False)
    codes = [(await alice.request("OPTIONS", f"sip:{alice.domain}")).code for _ in range(5)]
    assert codes == [200] * 5
    assert value(await scrape(server), "imc_sip_throttled_total") == 0


def test_the_other_nodes_snapshots_merge_into_one_family_each_until_they_are_stale():
    a, b = ServerMetrics(node="a"), ServerMetrics(node="b")
    a.observe_commit(0.01)
    b.observe_commit(0.02)
    b.observe_commit(0.03)
    b.peers, b.peer_max_age = [("a", 1000.0, families_of(a.snapshot()))], 15.0
    text = b.exposition(now=1014.0).decode()
    assert text.count("# TYPE imc_store_commit_seconds histogram") == 1
    counts = {
        sample.labels["node"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "imc_store_commit_seconds_count"
    }
    assert counts == {"b": 2.0, "a": 1.0}
    assert 'node="a"' not in b.exposition(now=1015.0).decode()  # a's snapshot is too old now
    with pytest.raises(ValueError, match="not a metrics snapshot"):
        families_of('{"no": "list"}')
