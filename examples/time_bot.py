"""A bot that joins a room and answers ``!time``.

A bot is a room member whose deliveries the application receives instead of a SIP phone: the
bot subscribes to what is sent to its URI (``conference.subscribe(bot_uri)``), joins the room
like anyone (``#join`` from its URI), and when a chat line ending in ``!time`` is relayed to it,
it answers in the room (a MESSAGE from its URI to the room, through ``conference.handle``).

Run it with one command, from the repository root::

    python examples/time_bot.py --demo         # no sockets: a scripted chat, printed
    python examples/time_bot.py                # the full server on udp/tcp 127.0.0.1:5060

With the server, register any SIP client as ``sip:you@127.0.0.1`` (the server is its registrar),
send ``#join`` to ``sip:lobby@127.0.0.1``, then ``what time is it? !time``. Options:
``--listen``, ``--domain``, ``--db-url``, ``--room`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import trio

from imc_actors import Conference, Config, IncomingMessage, serve_conference, serve_server

TRIGGER = b"!time"


def utc_now() -> datetime:
    return datetime.now(UTC)


class TimeBot:
    """The bot ``uri`` in ``room``: start it with ``await nursery.start(bot.run)``.

    ``clock`` gives the time it tells (tests pass a fixed one). ``answered`` counts its answers.
    """

    def __init__(
        self,
        conference: Conference,
        room: str,
        uri: str,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.conference = conference
        self.room = room
        self.uri = uri
        self.clock = clock
        self.answered = 0
        self._answer = trio.Event()

    def answer_text(self) -> str:
        return self.clock().strftime("It is %H:%M:%S %Z on %Y-%m-%d")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the room (creating it if missing), then answer until cancelled."""
        # Subscribe first: the notices of our own #join already come to us.
        with self.conference.subscribe(self.uri) as inbox:
            joined = await self.conference.handle(IncomingMessage(self.room, self.uri, b"#join", "text/plain"))
            if joined.code != 200:
                raise RuntimeError(f"{self.uri} could not join {self.room}: {joined.code} {joined.reason}")
            task_status.started()
            async for delivered in inbox:
                notice = delivered.notice
                if notice.kind == "relay" and notice.body.rstrip().endswith(TRIGGER):
                    reply = IncomingMessage(
                        notice.sender,  # the room the line was said in
                        self.uri,
                        self.answer_text().encode(),
                        "text/plain",
                        f"timebot-{delivered.in_reply_to}",
                    )
                    await self.conference.handle(reply)
                    self.answered += 1
                    self._answer.set()
                    self._answer = trio.Event()

    async def wait_answered(self, count: int) -> None:
        """Wait until the bot has answered ``count`` times in all."""
        while self.answered < count:
            await self._answer.wait()


async def demo(db_url: str) -> list[str]:
    """No sockets: a conference, the bot, and two users; returns what the users received."""
    domain = "example.com"
    room = f"sip:lobby@{domain}"
    config = Config(db_url=db_url, domains=[domain])
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        conference: Conference = await nursery.start(serve_conference, config)
        with conference.subscribe("sip:alice@example.com", "sip:bob@example.com") as people:
            bot = TimeBot(conference, room, f"sip:timebot@{domain}")
            await nursery.start(bot.run)
            for user, body in (("alice", "#join"), ("bob", "#join"), ("alice", "hi bob, what time is it? !time")):
                answer = await conference.handle(IncomingMessage(room, f"sip:{user}@{domain}", body.encode()))
                print(f"{user} -> {room}: {body!r} => {answer.code}")
                await conference.flush_notices()
            await bot.wait_answered(1)
            await conference.flush_notices()  # the bot's answer reaches alice and bob
        async for delivered in people:  # what the two users got, in order
            line = f"  {delivered.notice.to} <= {delivered.notice.body.decode()!r}"
            seen.append(line)
            print(line)
        nursery.cancel_scope.cancel()
    return seen


async def serve(config: Config, room: str, bot: str) -> None:
    """The full server with the bot in ``room``, until SIGINT/SIGTERM."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_server, config)
        await nursery.start(TimeBot(server.conference, room, bot).run)
        listening = " ".join(str(a) for a in server.addresses)
        print(f"time_bot: listening on {listening}; {bot} is in {room}", file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="run a scripted chat without sockets")
    parser.add_argument("--listen", action="append", help="as imc-actors serve (repeatable)")
    parser.add_argument("--domain", default="127.0.0.1", help="the rooms' domain")
    parser.add_argument("--db-url", default="sqlite:///time-bot.db")
    parser.add_argument("--room", default="lobby", help="the room's name")
    args = parser.parse_args(argv)
    if args.demo:
        trio.run(demo, args.db_url)
        return 0
    overrides = {"db_url": args.db_url, "domains": [args.domain], "listen": args.listen}
    config = Config.from_sources(environ={}, overrides=overrides)
    room, bot = f"sip:{args.room}@{args.domain}", f"sip:timebot@{args.domain}"
    trio.run(serve, config, room, bot)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
