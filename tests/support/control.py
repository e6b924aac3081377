"""Helpers for the management-interface tests: a populated server, HTTP and MI FIFO clients."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import trio

from tests.support.ua import TestUA

DOMAIN = "127.0.0.1"
MANAGER = f"sip:imc-manager@{DOMAIN}"
CHAT = f"sip:chat@{DOMAIN}"
SECRET = f"sip:secret@{DOMAIN}"


async def next_message(agent: TestUA) -> bytes:
    """The body of the next MESSAGE ``agent`` receives (safety-net timeout only)."""
    with trio.fail_after(10):
        return (await agent.next_message()).body


async def command(agent: TestUA, ruri: str, body: str, code: int = 200) -> None:
    """Send ``body`` to ``ruri`` and check the SIP answer."""
    response = await agent.message(ruri, body)
    assert response.code == code, (body, response.code, response.reason)


async def populate(ua: Any) -> dict[str, TestUA]:
    """Rooms created over SIP, as the management tests expect them:

    - ``sip:chat@127.0.0.1`` (public): alice (owner, created it), bob (member), carol (INVITED);
    - ``sip:secret@127.0.0.1`` (private): bob (owner).

    Every notice is taken from the inboxes before returning.
    """
    alice, bob, carol = await ua("alice"), await ua("bob"), await ua("carol")
    await command(alice, MANAGER, "#create chat")
    assert await next_message(alice) == b"*** Room was created"
    await command(bob, CHAT, "#join")
    await next_message(alice)
    await next_message(bob)
    await command(alice, CHAT, "#invite carol")
    assert b"invites you" in await next_message(carol)
    await command(bob, MANAGER, "#create secret private")
    assert await next_message(bob) == b"*** Room was created"
    return {"alice": alice, "bob": bob, "carol": carol}


# ---------------------------------------------------------------------------------- HTTP
@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _fetch(
    url: str, data: bytes | None, method: str, content_type: str, extra: dict[str, str]
) -> HttpAnswer:
    headers = {"Content-Type": content_type} if data is not None else {}
    headers.update(extra)
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return HttpAnswer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


async def http(
    url: str,
    data: bytes | None = None,
    *,
    method: str | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> HttpAnswer:
    """One HTTP request over a real socket (urllib in a worker thread; the server stays in the
    Trio thread); ``headers`` are added (``Host`` replaces urllib's own)."""
    verb = method or ("POST" if data is not None else "GET")
    return await trio.to_thread.run_sync(_fetch, url, data, verb, content_type, headers or {})


async def rpc(url: str, payload: Any, *, headers: dict[str, str] | None = None) -> HttpAnswer:
    """POST ``payload`` (JSON-encoded unless bytes) to the JSON-RPC URL."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await http(url, data, headers=headers)


# ---------------------------------------------------------------------------------- MI FIFO
class MiClient:
    """Writes requests into the server's MI FIFO and reads replies from FIFOs in ``directory``."""

    def __init__(self, fifo: str, directory: str) -> None:
        self.fifo = fifo
        self.directory = directory

    async def write(self, data: bytes) -> None:
        """Write raw bytes into the server's FIFO (never blocks: the server holds it open)."""
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        stream = trio.lowlevel.FdStream(fd)
        async with stream:
            await stream.send_all(data)

    def reply_fifo(self, name: str) -> str:
        path = name if os.path.isabs(name) else os.path.join(self.directory, name)
        if not os.path.exists(path):
            os.mkfifo(path)
        return path

    async def request(self, data: bytes, reply: str = "reply") -> str:
        """Send a request naming reply FIFO ``reply`` (created here) and return the reply text.

        The reply FIFO is opened read-write so neither side ever sees end-of-file early.
        """
        path = self.reply_fifo(reply)
        stream = trio.lowlevel.FdStream(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        async with stream:
            await self.write(data)
            answer = b""
            with trio.fail_after(10):  # safety net only
                while not answer.endswith(b"\n\n"):
                    answer += await stream.receive_some(65536)
        return answer.decode()
