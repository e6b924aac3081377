"""Embedding rooms in a Trio application (no SIP sockets).

Run it with one command, from the repository root::

    python examples/embed_trio.py                     # rooms in ./embed-demo.db
    python examples/embed_trio.py --db-url sqlite:////tmp/rooms.db

A web chat backend would look like this: the conference runs as one of the application's
tasks (``nursery.start(serve_conference, config)``), the application hands it what its users
send (``conference.handle(IncomingMessage(...))``) and delivers what the rooms send its own way
(here: a task reading ``conference.subscribe()`` and printing each notice, where a real
application would write to each user's WebSocket). Rooms and members are read from the
read-only views. Run it twice: the rooms are still there (they are in the database).
"""

from __future__ import annotations

import argparse
import sys

import trio

from imc_actors import Conference, Config, IncomingMessage, NoticeChannel, serve_conference

DOMAIN = "example.com"
MANAGER = f"sip:imc-manager@{DOMAIN}"
ROOM = f"sip:chat@{DOMAIN}"

#: (user, Request-URI, body): what the application's users send, in order.
SCRIPT = [
    ("alice", MANAGER, "#create chat"),
    ("bob", ROOM, "#join"),
    ("bob", ROOM, "hello, room"),
    ("alice", ROOM, "#members"),
    ("alice", ROOM, "#invite carol"),
    ("carol", ROOM, "#accept"),
    ("carol", ROOM, "hi both"),
]


def user_of(uri: str) -> str:
    """``sip:alice@example.com`` -> ``alice``."""
    return uri.split(":", 1)[-1].split("@", 1)[0]


async def deliver_to_users(inbox: NoticeChannel, out: list[str]) -> None:
    """The application's own delivery: one line per notice (a WebSocket send in real life)."""
    async for delivered in inbox:
        notice = delivered.notice
        line = f"  {user_of(notice.to)} <= {notice.sender}: {notice.body.decode()!r}"
        out.append(line)
        print(line)


async def run_script(conference: Conference, out: list[str]) -> None:
    """Send the users' messages, one after the other, printing each answer."""
    for user, uri, body in SCRIPT:
        message = IncomingMessage(uri, f"sip:{user}@{DOMAIN}", body.encode(), "text/plain")
        answer = await conference.handle(message)
        line = f"{user} -> {uri}: {body!r} => {answer.code} {answer.reason}"
        out.append(line)
        print(line)
        await conference.flush_notices()  # let this command's notices go out before the next


async def main(db_url: str) -> list[str]:
    """Run the demo against ``db_url``; returns every line it printed."""
    config = Config(db_url=db_url, domains=[DOMAIN])
    out: list[str] = []
    async with trio.open_nursery() as nursery:
        conference: Conference = await nursery.start(serve_conference, config)
        async with trio.open_nursery() as delivering:
            inbox = conference.subscribe()  # every notice: this application delivers them
            delivering.start_soon(deliver_to_users, inbox, out)
            if conference.room(ROOM) is None:
                await run_script(conference, out)
            else:
                out.append(f"{ROOM} already exists (from an earlier run)")
                print(out[-1])
            inbox.close()  # no new notices; deliver_to_users ends after the ones it has
        for room in conference.rooms():  # read-only views
            members = ", ".join(f"{user_of(m.uri)}{'*' if m.owner else ''}" for m in room.members)
            out.append(f"room {room.uri}: {members}")
            print(out[-1])
        nursery.cancel_scope.cancel()  # stops the conference: everything acknowledged is durable
    return out


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-url", default="sqlite:///embed-demo.db", help="where the rooms live")
    args = parser.parse_args(argv)
    trio.run(main, args.db_url)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
