"""Replays across processes: nonce-counts live in each process's memory, so an answer that
one worker (or node, or the process before a restart) accepted must not pass at another. Each
process takes only the nonces it made (their origin is its node name) and only those issued
since it started; others get ``401 stale=true`` (the client answers again, with our nonce)."""

from __future__ import annotations

import time

from imc_actors.auth import Authenticated, Authenticator
from imc_actors.config import Config
from imc_actors.sip import Request, build_request, new_branch, new_tag, parse
from imc_actors.store.users import Subscriber
from tests.support.ua import digest_answer

DOMAIN = "example.org"
ROOM = f"sip:chat@{DOMAIN}"
ALICE = Subscriber("alice", DOMAIN, "alice-pw", "", "")


def authenticator(node: str | None, now: float) -> Authenticator:
    config = Config(domains=[DOMAIN], node=node)

    async def load(username: str, domain: str) -> Subscriber | None:
        return ALICE if (username, domain) == ("alice", DOMAIN) else None

    return Authenticator(config, b"one secret for the cluster", load, clock=lambda: now)


def message(authorization: str | None = None) -> Request:
    headers = [("Authorization", authorization)] if authorization else []
    request = parse(build_request(
        "MESSAGE", ROOM, from_uri=f"sip:alice@{DOMAIN}", from_tag=new_tag(), to_uri=ROOM,
        call_id="c1@127.0.0.1", cseq=1, via_host="127.0.0.1", via_port=5070, via_transport="UDP",
        branch=new_branch(), headers=headers, body=b"hi",
    ))  # fmt: skip
    assert isinstance(request, Request)
    return request


async def answered(auth: Authenticator, nc: int = 1) -> str:
    """An Authorization for ``auth``'s own challenge (MD5, nonce-count ``nc``)."""
    challenge = await auth.authenticate(message())
    assert not isinstance(challenge, Authenticated) and challenge.code == 401
    md5 = next(value for name, value in challenge.headers if "algorithm=MD5" in value)
    return digest_answer(md5, "MESSAGE", ROOM, "alice", "alice-pw", nc)


async def test_an_answer_accepted_by_one_worker_is_stale_at_the_others() -> None:
    now = time.time()
    first, second = authenticator("imc-0", now), authenticator("imc-1", now)
    captured = await answered(first)
    assert await first.authenticate(message(captured)) == Authenticated(f"sip:alice@{DOMAIN}")
    replayed = await second.authenticate(message(captured))  # e.g. over a TCP connection to it
    assert not isinstance(replayed, Authenticated) and replayed.code == 401
    assert all("stale=true" in value for name, value in replayed.headers if name == "WWW-Authenticate")
    assert second.statistics().stale == 1 and second.statistics().accepted == 0
    # its own nonces it takes, and the first worker now refuses the second's
    own = await answered(second)
    assert isinstance(await second.authenticate(message(own)), Authenticated)
    assert not isinstance(await first.authenticate(message(own)), Authenticated)


async def test_a_restarted_process_takes_no_nonce_issued_before_it_started() -> None:
    now = time.time()
    before = authenticator("imc-0", now)
    captured = await answered(before)
    assert isinstance(await before.authenticate(message(captured)), Authenticated)
    after = authenticator("imc-0", now + 1)  # the same node, restarted: its counts are gone
    replayed = await after.authenticate(message(captured))
    assert not isinstance(replayed, Authenticated) and replayed.code == 401
    assert all("stale=true" in value for name, value in replayed.headers if name == "WWW-Authenticate")
    # counted as stale, not as a replay: every client answering its last challenge after a
    # restart does this (a replay would get the same answer); an alert on replays fired at
    # each restart
    assert (after.statistics().stale, after.statistics().replayed) == (1, 0)
    assert isinstance(await after.authenticate(message(await answered(after))), Authenticated)
