"""An asyncio application driving a conference, through trio-asyncio (``imc_actors.aio``).

The application is ordinary asyncio code: a small JSON-over-HTTP service written with
``asyncio.start_server`` (an aiohttp or FastAPI handler would make the very same calls). It
runs on trio-asyncio's loop, inside the Trio run that hosts the conference
(``imc_actors.aio.run``), and delivers the rooms' notices its own way: into per-user inboxes
that web clients poll.

Run it with one command, from the repository root::

    python examples/asyncio_app.py              # http://127.0.0.1:8080, rooms in ./asyncio-demo.db
    python examples/asyncio_app.py --port 0     # any free port (printed)

Then, for example::

    curl -d '{"from": "sip:alice@example.com", "to": "sip:imc-manager@example.com", "body": "#create chat"}' \\
        http://127.0.0.1:8080/messages          # -> {"code": 200, "reason": "OK"}
    curl http://127.0.0.1:8080/rooms            # -> [{"uri": "sip:chat@example.com", "members": [...]}]
    curl 'http://127.0.0.1:8080/inbox?user=sip:alice@example.com'   # what the rooms sent alice

Stop it with Ctrl-C (or SIGTERM): it stops serving, then the conference and the loop close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from imc_actors import Config, IncomingMessage
from imc_actors.aio import AsyncioConference, AsyncioNotices, run

DOMAIN = "example.com"


class ChatService:
    """The asyncio application: HTTP in, conference calls, per-user inboxes out."""

    def __init__(self, conference: AsyncioConference) -> None:
        self.conference = conference
        self.inboxes: dict[str, list[dict[str, str]]] = defaultdict(list)

    async def collect(self, notices: AsyncioNotices) -> None:
        """Deliver every notice into its recipient's inbox (until the conference ends)."""
        async for delivered in notices:
            notice = delivered.notice
            self.inboxes[notice.to.lower()].append(
                {"from": notice.sender, "body": notice.body.decode(errors="replace")}
            )

    async def route(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """One HTTP request -> (HTTP status, JSON document)."""
        url = urlsplit(target)
        if method == "POST" and url.path == "/messages":
            try:
                data = json.loads(body)
                message = IncomingMessage(
                    data["to"], data["from"], data["body"].encode(), "text/plain", data.get("call_id", "")
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                return 400, {"error": 'expected {"from": URI, "to": URI, "body": text}'}
            answer = await self.conference.handle(message)
            return 200, {"code": answer.code, "reason": answer.reason}
        if method == "GET" and url.path == "/rooms":
            rooms = self.conference.rooms()
            return 200, [{"uri": r.uri, "members": [m.uri for m in r.members]} for r in rooms]
        if method == "GET" and url.path == "/inbox":
            user = parse_qs(url.query).get("user", [""])[0].lower()
            items, self.inboxes[user] = self.inboxes[user], []
            return 200, items
        return 404, {"error": "not found"}

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A deliberately small HTTP/1.1 server: one request per connection."""
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if len(request_line) < 2:
                status, document = 400, {"error": "bad request"}
            else:
                status, document = await self.route(request_line[0], request_line[1], body)
            payload = json.dumps(document).encode()
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n".encode() + payload
            )
            await writer.drain()
        finally:
            writer.close()


async def app(
    conference: AsyncioConference,
    host: str = "127.0.0.1",
    port: int = 8080,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve HTTP on ``host``:``port`` until ``stop`` is set (or until cancelled);
    ``ready(port)`` once listening."""
    service = ChatService(conference)
    collector = asyncio.ensure_future(service.collect(conference.subscribe()))
    server = await asyncio.start_server(service.serve_client, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"asyncio_app: listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    if ready is not None:
        ready(bound)
    try:
        async with server:
            await (stop.wait() if stop is not None else server.serve_forever())
    finally:
        collector.cancel()


async def main(conference: AsyncioConference, host: str, port: int) -> None:
    """The asyncio entry point: serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await app(conference, host, port, stop=stop)
    print("asyncio_app: stopped", file=sys.stderr, flush=True)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--db-url", default="sqlite:///asyncio-demo.db")
    args = parser.parse_args(argv)
    config = Config(db_url=args.db_url, domains=[DOMAIN])
    run(lambda conference: main(conference, args.host, args.port), config)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
