"""What the fault tests share: one domain, two rooms, a recording sender, config."""

from __future__ import annotations

from imc_actors import Config, DeliveryResult, IncomingMessage, Notice

DOMAIN = "example.com"
MANAGER = f"sip:imc-manager@{DOMAIN}"
ROOM_A = f"sip:a@{DOMAIN}"
ROOM_B = f"sip:b@{DOMAIN}"


def say(ruri: str, user: str, body: str, call_id: str = "") -> IncomingMessage:
    """A MESSAGE from ``user`` to ``ruri``; the Call-ID defaults to ``user:body``."""
    return IncomingMessage(ruri, f"sip:{user}@{DOMAIN}", body.encode(), "text/plain", call_id or f"{user}:{body}")


def make_config(tmp_path, **overrides) -> Config:
    # db_timeout is wall-clock time, and these tests run on an autojump clock: while the
    # store's thread commits, virtual time jumps, so the periodic loops (overdue checks,
    # expiry) run back to back and on a loaded machine can keep that thread from the GIL
    # past 5 s (seen once in a full CI run: a #create got 503). They test crash handling,
    # not db_timeout (tests/storage/test_db_timeout.py does), so it is set far out here.
    return Config.from_sources(environ={}, overrides={
        "db_url": f"sqlite:///{tmp_path}/imc.db", "domains": [DOMAIN], "db_timeout": 60.0,
        **overrides,
    })


class Inbox:
    """A sender that records every notice it is asked to deliver."""

    def __init__(self) -> None:
        self.sent: list[Notice] = []

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        self.sent.append(notice)
        return DeliveryResult(200, "OK")

    def bodies_to(self, user: str) -> list[bytes]:
        return [n.body for n in self.sent if n.to == f"sip:{user}@{DOMAIN}"]


async def two_rooms(conf, *, joiner: str | None = "carol") -> None:
    """Rooms a (owner alice) and b (owner bob); ``joiner`` joins a; their notices are out."""
    assert (await conf.handle(say(MANAGER, "alice", "#create a"))).code == 200
    assert (await conf.handle(say(MANAGER, "bob", "#create b"))).code == 200
    if joiner is not None:
        assert (await conf.handle(say(ROOM_A, joiner, "#join"))).code == 200
    await conf.flush_notices()
