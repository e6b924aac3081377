"""Digest authentication end to end: real exchanges over UDP and TCP with the test UA.

The UA computes its answers with hashlib alone (tests/support/ua.py), so these check the
server's digest code against an independent implementation.
"""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from imc_actors.conference import repository_of
from imc_actors.server import Server, open_server
from imc_actors.sip import parse
from imc_actors.sip.digest import Nonces
from tests.integration.conftest import DOMAIN, MANAGER, expect, make_config, udp_address
from tests.support.ua import TestUA, digest_answer

ROOM = f"sip:chat@{DOMAIN}"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw"}


def _users(config, rows=PASSWORDS) -> None:
    repository = repository_of(config)
    repository.init_schema()
    for user, password in rows.items():
        assert repository.set_user(user, DOMAIN, password, create=True)
    repository.close()


async def _server(nursery, tmp_path, **overrides) -> Server:
    config = make_config(tmp_path, **{"auth": "all", **overrides})
    _users(config)

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        async with open_server(config) as server:
            task_status.started(server)
            await trio.sleep_forever()

    return await nursery.start(run)


def _address(server: Server, transport: str) -> tuple[str, int]:
    for addr in server.addresses:
        if addr.transport == transport:
            return addr.host, addr.port
    raise AssertionError(transport)


async def _ua(nursery, server, user, *, transport="udp", password=None) -> TestUA:
    agent = await TestUA.open(nursery, user, DOMAIN, _address(server, transport), transport=transport)
    agent.password = PASSWORDS.get(user) if password is None else password
    return agent


def _bound(server: Server, user: str) -> list[str]:
    assert server.registrar is not None
    return server.registrar.lookup(f"{user}@{DOMAIN}", trio.current_time())


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_users_with_passwords_register_create_join_and_chat(nursery, tmp_path, transport):
    server = await _server(nursery, tmp_path)
    alice = await _ua(nursery, server, "alice", transport=transport)
    bob = await _ua(nursery, server, "bob", transport=transport)
    bob.algorithm = "MD5"  # alice answers SHA-256 (offered first), bob MD5
    assert (await alice.register()).code == 200
    assert (await bob.register()).code == 200
    assert "algorithm=SHA-256" in alice.authorizations[0] and "algorithm=MD5" in bob.authorizations[0]
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created", sender=ROOM)
    assert (await bob.message(ROOM, "#join")).code == 200
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    assert (await bob.message(ROOM, "hello alice")).code == 202
    await expect(alice, "[bob]: hello alice")
    room = server.conference.room(ROOM)
    assert room is not None and [m.uri for m in room.members] == [f"sip:alice@{DOMAIN}", f"sip:bob@{DOMAIN}"]


async def test_the_challenge_offers_sha256_first_then_md5(nursery, tmp_path):
    server = await _server(nursery, tmp_path)
    stranger = await _ua(nursery, server, "alice", password="")
    stranger.password = None  # no answer: look at the 401 itself
    response = await stranger.register()
    assert response.code == 401
    challenges = response.header_list("WWW-Authenticate")
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]
    for text in challenges:
        assert f'realm="{DOMAIN}"' in text and 'qop="auth"' in text and "stale" not in text
    assert _bound(server, "alice") == []
    response = await stranger.message(MANAGER, "#create chat")
    assert response.code == 401
    assert server.conference.rooms() == []


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_wrong_password_registers_and_sends_nothing(nursery, tmp_path, transport):
    server = await _server(nursery, tmp_path)
    mallory = await _ua(nursery, server, "alice", transport=transport, password="guess")
    response = await mallory.register()
    assert (response.code, response.reason) == (403, "Wrong User Or Password")
    assert _bound(server, "alice") == []
    response = await mallory.message(MANAGER, "#create chat")
    assert (response.code, response.reason) == (403, "Wrong User Or Password")
    assert server.conference.rooms() == []
    nobody = await _ua(nursery, server, "nobody", transport=transport, password="x")
    assert (await nobody.register()).reason == "Wrong User Or Password"  # same answer: no probing


async def test_a_source_that_keeps_guessing_is_refused_without_a_check(nursery, tmp_path, caplog):
    # a tour: 5,000 guesses at 1,800/s from one socket were all checked (the right one then
    # passed), and the refusal lines named no source for a firewall to block
    server = await _server(
        nursery, tmp_path, auth_fail_rate=0.01, auth_fail_burst=3, auth_fail_block=600.0
    )
    assert server.authenticator is not None and server.authenticator.guesses is not None
    now = [1000.0]
    server.authenticator.monotonic = lambda: now[0]
    mallory = await _ua(nursery, server, "alice", password="guess")
    alice = await _ua(nursery, server, "alice")
    for _ in range(3):
        assert (await mallory.register()).reason == "Wrong User Or Password"
    # a user who mistyped up to the burst still gets in: a right answer spends nothing
    assert (await alice.register()).code == 200
    caplog.set_level("INFO", logger="imc_actors.auth")
    assert (await mallory.register()).reason == "Wrong User Or Password"  # one more: blocked
    refused = await mallory.register()
    assert (refused.code, refused.reason, refused.header("Retry-After")) == (403, "Too Many Wrong Passwords", "600")
    # the right password from that address is not checked either, while the block lasts
    refused = await alice.register()
    assert (refused.reason, refused.header("Retry-After")) == ("Too Many Wrong Passwords", "600")
    assert server.authenticator.statistics().blocked == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "digest answers from 127.0.0.1 refused for 600 s: more than 3 wrong passwords"
    ]
    now[0] += 601  # the block is over: the right password is checked again
    assert (await alice.register()).code == 200
    assert _bound(server, "alice") == [alice.contact]


async def test_refusals_are_logged_with_their_source_at_most_once_a_second(nursery, tmp_path, caplog):
    server = await _server(nursery, tmp_path)
    assert server.authenticator is not None
    now = [0.0]
    server.authenticator.monotonic = lambda: now[0]
    caplog.set_level("INFO", logger="imc_actors.auth")
    mallory = await _ua(nursery, server, "alice", password="guess")
    for _ in range(4):
        assert (await mallory.message(MANAGER, "#rooms")).code == 403
    now[0] += 1.0
    assert (await mallory.register()).code == 403
    lines = [r.getMessage() for r in caplog.records if "refused: wrong user or password" in r.getMessage()]
    assert lines == [
        f"MESSAGE from 127.0.0.1: digest for 'alice' at {DOMAIN} refused: wrong user or password",
        f"REGISTER from 127.0.0.1: digest for 'alice' at {DOMAIN} refused: wrong user or password"
        " (3 more refusals not logged)",
    ]


async def test_a_captured_authorization_cannot_be_replayed(nursery, tmp_path):
    server = await _server(nursery, tmp_path)
    alice = await _ua(nursery, server, "alice")
    assert (await alice.register()).code == 200
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    captured = alice.authorizations[-1]
    # eve replays alice's MESSAGE, Authorization and all, from another port, as a new request
    eve = await _ua(nursery, server, "alice", password="")
    eve.password = None
    response = await eve.request("MESSAGE", MANAGER, body=b"#create stolen", content_type="text/plain",
                                 headers=[("Authorization", captured)])  # fmt: skip
    assert response.code == 401
    assert any("stale=true" in c for c in response.header_list("WWW-Authenticate"))
    assert server.conference.room(f"sip:stolen@{DOMAIN}") is None
    # the same for a captured REGISTER: eve cannot put her contact in alice's bindings
    assert (await alice.register()).code == 200
    register = alice.authorizations[-1]
    response = await eve.request("REGISTER", f"sip:{DOMAIN}", to_uri=alice.uri,
                                 headers=[("Contact", f"<{eve.contact}>"), ("Authorization", register)])
    assert response.code == 401
    assert _bound(server, "alice") == [alice.contact]
    # a higher nonce-count with the same nonce is a new answer (a client reusing its nonce)
    nonce = register.split('nonce="')[1].split('"')[0]
    challenge = f'Digest realm="{DOMAIN}", nonce="{nonce}", algorithm=SHA-256, qop="auth"'
    again = digest_answer(challenge, "MESSAGE", MANAGER, "alice", PASSWORDS["alice"], 2)
    response = await alice.request("MESSAGE", MANAGER, body=b"#rooms", content_type="text/plain",
                                   headers=[("Authorization", again)])  # fmt: skip
    assert response.code == 200


async def test_a_stale_nonce_gets_stale_true_and_a_fresh_one(nursery, tmp_path):
    server = await _server(nursery, tmp_path)
    store = server.conference.store
    assert store is not None
    secret = await store.read(lambda repository: repository.load_secret())
    old = Nonces(secret, 300).make(time.time() - 301)  # well signed, past nonce_expires
    challenge = f'Digest realm="{DOMAIN}", nonce="{old}", algorithm=MD5, qop="auth"'
    alice = await _ua(nursery, server, "alice")
    stale = digest_answer(challenge, "MESSAGE", MANAGER, "alice", PASSWORDS["alice"], 1)
    alice.password = None
    response = await alice.request("MESSAGE", MANAGER, body=b"#create chat", content_type="text/plain",
                                   headers=[("Authorization", stale)])  # fmt: skip
    assert response.code == 401
    challenges = response.header_list("WWW-Authenticate")
    assert len(challenges) == 2 and all("stale=true" in c and old not in c for c in challenges)
    assert server.conference.rooms() == []
    # a made-up nonce is no nonce of ours: a plain challenge, no stale
    forged = digest_answer(challenge.replace(old, "x" * 43), "MESSAGE", MANAGER, "alice", "alice-pw", 1)
    response = await alice.request("MESSAGE", MANAGER, body=b"#create chat", content_type="text/plain",
                                   headers=[("Authorization", forged)])  # fmt: skip
    assert response.code == 401 and not any("stale" in c for c in response.header_list("WWW-Authenticate"))


async def _challenge(bob: TestUA) -> str:
    password, bob.password = bob.password, None
    challenged = await bob.message(ROOM, "no credentials")
    bob.password = password
    assert challenged.code == 401
    return challenged.header_list("WWW-Authenticate")[-1]  # MD5


async def _pipelined(bob: TestUA, chosen: str, counts: range) -> list[int]:
    """Chat lines from bob to the room, sent back to back under one nonce with the
    nonce-counts ``counts`` (RFC 3428 lets a UA send before the last MESSAGE is answered);
    the codes of their answers."""
    for nc in counts:
        authorization = digest_answer(chosen, "MESSAGE", ROOM, "bob", PASSWORDS["bob"], nc)
        await bob.send_raw(bob.build("MESSAGE", ROOM, body=f"line {nc}".encode(), content_type="text/plain",
                                     headers=[("Authorization", authorization)]))  # fmt: skip
    with trio.fail_after(10):  # safety net only
        return [parse(await bob.recv_raw()).code for _ in counts]


async def test_back_to_back_messages_under_one_nonce_all_pass_and_keep_their_order(nursery, tmp_path):
    # Each one is taken as it arrives while bob's row is cached (no task, no reordering),
    # and nonce-counts checked in another order would still pass (a window, not a maximum).
    server = await _server(nursery, tmp_path)
    alice = await _ua(nursery, server, "alice")
    bob = await _ua(nursery, server, "bob")
    assert (await alice.register()).code == 200 and (await bob.register()).code == 200
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    await expect(alice, "*** Room was created")
    assert (await bob.message(ROOM, "#join")).code == 200
    await expect(alice, "*** [bob] has joined the room")
    assert server.authenticator is not None
    before = server.authenticator.statistics()
    chosen = await _challenge(bob)
    assert await _pipelined(bob, chosen, range(1, 31)) == [202] * 30
    for nc in range(1, 31):
        await expect(alice, f"[bob]: line {nc}")
    after = server.authenticator.statistics()
    assert (after.accepted - before.accepted, after.replayed - before.replayed) == (30, 0)
    # each count passes once: sent again, they are replays and reach no one
    assert await _pipelined(bob, chosen, range(28, 33)) == [401, 401, 401, 202, 202]
    await expect(alice, "[bob]: line 31")
    await expect(alice, "[bob]: line 32")
    assert server.authenticator.statistics().replayed - after.replayed == 3


async def test_a_forged_from_is_refused_with_a_notice_to_the_real_sender(nursery, tmp_path):
    server = await _server(nursery, tmp_path)
    alice = await _ua(nursery, server, "alice")
    bob = await _ua(nursery, server, "bob")
    assert (await alice.register()).code == 200
    assert (await bob.register()).code == 200
    # alice's password, bob's From
    posing = await _ua(nursery, server, "bob", password=PASSWORDS["alice"])
    posing.auth_user = "alice"
    response = await posing.message(MANAGER, "#create chat")
    assert (response.code, response.reason) == (403, "From Is Not The Authenticated User")
    assert server.conference.rooms() == []
    await expect(alice, f"*** You are signed in as sip:alice@{DOMAIN}: you cannot send as sip:bob@{DOMAIN}",
                 sender=MANAGER)  # fmt: skip
    assert bob.pending_messages() == []
    # nor can she register a contact for bob
    response = await posing.register()
    assert (response.code, response.reason) == (403, "To Is Not The Authenticated User")
    assert _bound(server, "bob") == [bob.contact]


async def test_a_kamailio_subscriber_table_with_plaintext_and_md5_rows(nursery, tmp_path):
    config = make_config(tmp_path, auth="all")
    repository = repository_of(config)
    # Kamailio 5.x's subscriber table as kamdbctl makes it: no ha1_sha256 column
    repository._db.execute_sql(
        "CREATE TABLE subscriber (id INTEGER PRIMARY KEY NOT NULL, username VARCHAR(64) DEFAULT '' NOT NULL,"
        " domain VARCHAR(64) DEFAULT '' NOT NULL, password VARCHAR(64) DEFAULT '' NOT NULL,"
        " ha1 VARCHAR(128) DEFAULT '' NOT NULL, ha1b VARCHAR(128) DEFAULT '' NOT NULL,"
        " CONSTRAINT subscriber_account_idx UNIQUE (username, domain))"
    )
    import hashlib

    md5 = hashlib.md5(f"bob:{DOMAIN}:bob-pw".encode()).hexdigest()
    repository._db.execute_sql(
        "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES (?, ?, ?, '', ''), (?, ?, '', ?, '')",
        ("alice", DOMAIN, "alice-pw", "bob", DOMAIN, md5),
    )
    repository.close()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        async with open_server(config) as server:
            task_status.started(server)
            await trio.sleep_forever()

    server = await nursery.start(run)
    alice = await _ua(nursery, server, "alice")  # plaintext row: SHA-256 and MD5 both work
    assert (await alice.register()).code == 200 and "SHA-256" in alice.authorizations[-1]
    bob = await _ua(nursery, server, "bob")  # MD5 ha1 only: a SHA-256 answer is offered MD5 alone
    response = await bob.register()
    assert response.code == 401
    assert [c.split("algorithm=")[1].split(",")[0] for c in response.header_list("WWW-Authenticate")] == ["MD5"]
    bob.algorithm = "MD5"
    assert (await bob.register()).code == 200
    assert (await bob.message(MANAGER, "#create chat")).code == 200
    await expect(bob, "*** Room was created")


async def test_auth_register_challenges_register_only(nursery, tmp_path):
    server = await _server(nursery, tmp_path, auth="register")
    alice = await _ua(nursery, server, "alice")
    alice.password = None
    assert (await alice.register()).code == 401
    assert (await alice.message(MANAGER, "#create chat")).code == 200  # From is taken as it is
    alice.password = PASSWORDS["alice"]
    assert (await alice.register()).code == 200


async def test_trusted_sources_are_not_challenged(nursery, tmp_path):
    server = await _server(nursery, tmp_path, trusted_sources=["127.0.0.0/8"])
    proxy = await _ua(nursery, server, "alice")
    proxy.password = None
    assert (await proxy.register()).code == 200
    assert (await proxy.message(MANAGER, "#create chat")).code == 200


async def test_untrusted_sources_are_refused_with_a_log_line_a_second_at_most(
    nursery, tmp_path, caplog, mock_clock
):
    # a tour: 3,010 requests from an untrusted address wrote 3,010 log lines
    server = await _server(nursery, tmp_path, auth="register", trusted_sources=["127.0.0.200/32"])
    caplog.set_level("INFO", logger="imc_actors.sipcore")
    stranger = await _ua(nursery, server, "alice")
    for _ in range(5):
        assert (await stranger.message(MANAGER, "#rooms")).code == 403
    mock_clock.jump(1.0)
    assert (await stranger.request("INFO", MANAGER)).code == 403
    lines = [r.getMessage() for r in caplog.records if "untrusted source" in r.getMessage()]
    assert lines == [
        "MESSAGE from untrusted source 127.0.0.1: 403",
        "INFO from untrusted source 127.0.0.1: 403 (4 more refusals not logged)",
    ]


@pytest.mark.parametrize("config_overrides", [{"trusted_sources": ["127.0.0.0/8"],
                                               "identity_header": "P-Asserted-Identity"}])  # fmt: skip
async def test_identity_header_is_required_single_and_parsed(ua, server, config_overrides):
    proxy = await ua("proxy")
    carol = await ua("carol")

    async def send(*values: str):
        return await proxy.request("MESSAGE", MANAGER, body=b"#create chat", content_type="text/plain",
                                   headers=[("P-Asserted-Identity", v) for v in values])  # fmt: skip

    response = await send()
    assert (response.code, response.reason) == (403, "No Valid P-Asserted-Identity")
    assert (await send("not a uri")).code == 403
    response = await send(f"<sip:carol@{DOMAIN}>", f"<sip:dave@{DOMAIN}>")
    assert (response.code, response.reason) == (400, "Several P-Asserted-Identity Values")
    assert (await send(f"<sip:carol@{DOMAIN}>, <sip:dave@{DOMAIN}>")).code == 400
    assert server.conference.rooms() == []
    response = await send(f'"Doe, Carol \\"C\\"" <sip:carol@{DOMAIN}>')
    assert response.code == 200
    await expect(carol, "*** Room was created")
    room = server.conference.room(ROOM)
    assert room is not None and room.owner is not None and room.owner.uri == f"sip:carol@{DOMAIN}"


async def test_garbage_authorizations_leave_no_state(nursery, tmp_path):
    # 20 users' rows read (auth_fail_rate 0: no bound on one source's wrong answers)
    server = await _server(nursery, tmp_path, auth_cache_size=4, auth_fail_rate=0.0)
    eve = await _ua(nursery, server, "alice", password="")
    eve.password = None
    nonce = (await eve.register()).header_list("WWW-Authenticate")[0].split('nonce="')[1].split('"')[0]
    for index in range(20):
        challenge = f'Digest realm="{DOMAIN}", nonce="{nonce}", algorithm=MD5, qop="auth"'
        value = digest_answer(challenge, "MESSAGE", MANAGER, f"user{index}", "pw", index + 1)
        response = await eve.request("MESSAGE", MANAGER, body=b"#rooms", content_type="text/plain",
                                     headers=[("Authorization", value)])  # fmt: skip
        assert response.code == 403
    response = await eve.request("MESSAGE", MANAGER, body=b"#rooms", content_type="text/plain",
                                 headers=[("Authorization", 'Digest username="a" realm')])  # fmt: skip
    assert (response.code, response.reason) == (400, "Malformed Digest parameters")
    authenticator = server.authenticator
    assert authenticator is not None
    assert len(authenticator.counts) == 0 and len(authenticator.users) <= 4
    stats = authenticator.statistics()
    assert (stats.refused, stats.malformed, stats.accepted, stats.nonces) == (20, 1, 0, 0)
    assert server.metrics is not None
    text = server.metrics.exposition().decode()
    assert 'imc_auth_total{node="",result="refused"} 20.0' in text and "imc_auth_users" in text
    assert 'imc_auth_total{node="",result="blocked"} 0.0' in text
    assert 'imc_registrar_aors{node=""} 0.0' in text and 'imc_registrar_full_total{node=""} 0.0' in text


async def test_loopback_default_is_off(server, ua):
    alice = await ua("alice")  # the default test server: loopback, no auth
    assert (await alice.message(MANAGER, "#create chat")).code == 200
    assert udp_address(server)[0] == "127.0.0.1" and server.authenticator is None


async def test_the_digest_uri_must_name_the_request_uri_or_the_server(nursery, tmp_path):
    server = await _server(nursery, tmp_path)
    alice = await _ua(nursery, server, "alice")
    alice.password = None
    nonce = (await alice.register()).header_list("WWW-Authenticate")[0].split('nonce="')[1].split('"')[0]
    challenge = f'Digest realm="{DOMAIN}", nonce="{nonce}", algorithm=MD5, qop="auth"'
    for nc, (uri, code) in enumerate(
        [(f"sip:bob@{DOMAIN}", 400), (f"sip:{DOMAIN}:5060", 200), (f"SIP:imc-manager@{DOMAIN};x=y", 200)],
        start=1,
    ):
        value = digest_answer(challenge, "MESSAGE", uri, "alice", PASSWORDS["alice"], nc)
        response = await alice.request("MESSAGE", MANAGER, body=b"#rooms", content_type="text/plain",
                                       headers=[("Authorization", value)])  # fmt: skip
        assert response.code == code, (uri, response)
        if code == 400:
            assert response.reason == "Digest URI Differs From Request-URI"


async def test_digest_over_websocket_with_a_jssip_user_agent(nursery, tmp_path):
    from tests.support.ws import WsUA

    server = await _server(nursery, tmp_path, listen=["udp:127.0.0.1:0", "ws:127.0.0.1:0"])
    agent = [("User-Agent", "imc-actors chat page (JsSIP)")]
    async with WsUA.connect(_address(server, "ws"), "alice", DOMAIN) as alice:

        async def authenticated(method: str, ruri: str, headers, **kwargs):
            first = await alice.request(method, ruri, headers=[*agent, *headers], **kwargs)
            assert first.code == 401
            [challenge] = first.header_list("WWW-Authenticate")  # JsSIP: MD5 alone
            assert "algorithm=MD5" in challenge
            answer = digest_answer(challenge, method, ruri, "alice", PASSWORDS["alice"], 1)
            return await alice.request(method, ruri, headers=[*agent, *headers, ("Authorization", answer)], **kwargs)

        contact = [("Contact", f"<{alice.contact}>;expires=600")]
        assert (await authenticated("REGISTER", f"sip:{DOMAIN}", contact, to_uri=alice.uri)).code == 200
        assert (await authenticated("MESSAGE", MANAGER, [], body=b"#create chat")).code == 200
        assert (await alice.next_message()).body == b"*** Room was created"


async def test_a_new_password_works_at_once_despite_the_cache(nursery, tmp_path):
    server = await _server(nursery, tmp_path)
    alice = await _ua(nursery, server, "alice")
    assert (await alice.register()).code == 200  # her row is cached now
    store = server.conference.store
    assert store is not None
    assert await store.read(lambda r: r.set_user("alice", DOMAIN, "new-pw", create=False))
    alice.password = "new-pw"
    assert (await alice.register()).code == 200  # the failed check read the row again
    alice.password = PASSWORDS["alice"]
    assert (await alice.register()).code == 403


class Loads:
    """A user-row reader that finds nobody and records each read (``now[0]``: the clock)."""

    def __init__(self) -> None:
        self.now = [0.0]
        self.users: list[str] = []

    async def __call__(self, user, domain):  # type: ignore[no-untyped-def]
        self.users.append(user)
        await trio.lowlevel.checkpoint()


async def test_user_cache_is_bounded_and_expires():
    from imc_actors.auth import UserCache

    reads = Loads()
    now, loads, load = reads.now, reads.users, reads
    cache = UserCache(load, size=2, ttl=10.0, clock=lambda: now[0])
    for user in ("a", "b", "a", "c", "a"):
        await cache.get(user, "d")
    assert loads == ["a", "b", "c"] and len(cache) == 2  # "b" was the least recently used
    assert (await cache.get("b", "d"))[1] is False
    now[0] = 10.0
    assert (await cache.get("a", "d"))[1] is False  # expired: read again
    assert len(cache) == 2


async def test_failed_checks_read_a_row_again_a_few_times_a_second_at_most():
    from imc_actors.auth import RECHECK_BURST, RECHECK_INTERVAL, UserCache

    reads = Loads()
    now, loads, load = reads.now, reads.users, reads
    cache = UserCache(load, size=10, ttl=30.0, clock=lambda: now[0])
    await cache.get("mallory", "d")
    for _ in range(100):  # a flood of wrong answers for one user
        await cache.get("mallory", "d", fresh=True)
    assert len(loads) == 1 + RECHECK_BURST
    now[0] += RECHECK_INTERVAL  # a second later: at once again, up to the burst
    for _ in range(100):
        await cache.get("mallory", "d", fresh=True)
    assert len(loads) == 2 + 2 * RECHECK_BURST


async def test_user_lookups_under_way_are_bounded():
    # a flood of unknown users: past auth_max_reads lookups the rest are refused at once
    # (503), so the store's thread, which also commits, is never queued full of reads
    from imc_actors.auth import UserCache
    from imc_actors.store.writer import StoreUnavailable

    release = trio.Event()

    async def load(user, domain):
        await release.wait()
        return None

    cache = UserCache(load, size=100, ttl=30.0, clock=lambda: 0.0, max_reads=2)
    outcomes: list[str] = []

    async def lookup(user: str) -> None:
        try:
            await cache.get(user, "d")
        except StoreUnavailable as exc:
            outcomes.append(f"busy {exc.retry_after}")
        else:
            outcomes.append("read")

    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(lookup, f"random{index}")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(outcomes) == ["busy 1"] * 3 and cache.reading == 2
        release.set()
    assert sorted(outcomes) == ["busy 1"] * 3 + ["read"] * 2
    assert (cache.reading, cache.refused) == (0, 3)
