"""A SIP-over-WebSocket user agent for tests (RFC 7118), on trio-websocket as the client.

:class:`WsUA` is what a browser's SIP library is to the server: it opens one WebSocket with the
``sip`` subprotocol, names itself ``<random>.invalid`` in Via and Contact (a browser cannot be
reached any other way), registers ``sip:<random>@<random>.invalid;transport=ws``, sends
requests and answers incoming MESSAGEs 200. No retransmissions: WebSocket is reliable.

Typical use::

    async with WsUA.connect(server_ws_address, "alice", "127.0.0.1") as alice:
        assert (await alice.register()).code == 200
        assert (await alice.message("sip:imc-manager@127.0.0.1", "#create chat")).code == 200
        notice = await alice.next_message()
"""

from __future__ import annotations

import itertools
import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from imc_actors.sip import (
    Request,
    Response,
    SipParseError,
    build_request,
    build_response,
    new_branch,
    new_call_id,
    new_tag,
    parse,
)

__all__ = ["WsUA"]


class WsUA:
    """A test UA over one WebSocket (see the module docstring).

    ``uri`` is ``sip:user@domain``; ``contact`` the ``.invalid`` contact it registers;
    ``received`` every request that arrived, in order; ``raw`` what arrived that matched no
    request of ours (responses to :meth:`send_raw`, unparsable messages); ``closed`` is set
    once the server closed the connection.
    """

    __test__ = False

    def __init__(self, ws: WebSocketConnection, user: str, domain: str) -> None:
        self.ws = ws
        self.user, self.domain = user, domain
        self.uri = f"sip:{user}@{domain}"
        self.host = f"{secrets.token_hex(5)}.invalid"
        self.contact = f"sip:{secrets.token_hex(4)}@{self.host};transport=ws"
        self.received: list[Request] = []
        self.closed = trio.Event()
        self._cseq = itertools.count(1)
        self._waiters: dict[str, trio.MemorySendChannel[Response]] = {}
        self._messages_send, self._messages = trio.open_memory_channel[Request](1000)
        self._raw_send, self._raw = trio.open_memory_channel[bytes](1000)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        address: tuple[str, int],
        user: str,
        domain: str,
        *,
        subprotocols: Sequence[str] = ("sip",),
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncIterator[WsUA]:
        """Open the WebSocket to ``ws://host:port/`` (``wss://`` with ``ssl_context``) and
        read it for the body of the block."""
        host, port = address
        use_ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else False
        async with open_websocket(
            host, port, "/", use_ssl=use_ssl, subprotocols=list(subprotocols)
        ) as ws:
            agent = cls(ws, user, domain)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(agent._reader)
                try:
                    yield agent
                finally:
                    nursery.cancel_scope.cancel()

    async def _reader(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                data = message.encode() if isinstance(message, str) else message
                answer = self._on_message(data)
                if answer is not None:
                    await self.ws.send_message(answer.decode())
        except ConnectionClosed:
            self.closed.set()

    def _on_message(self, data: bytes) -> bytes | None:
        try:
            message = parse(data)
        except SipParseError:
            self._raw_send.send_nowait(data)
            return None
        if isinstance(message, Response):
            waiter = self._waiters.get(message.branch or "")
            if waiter is None:
                self._raw_send.send_nowait(data)
            elif message.code >= 200:
                waiter.send_nowait(message)
            return None
        self.received.append(message)
        if message.method == "MESSAGE":
            self._messages_send.send_nowait(message)
        return build_response(message, 200, to_tag=new_tag())

    # ------------------------------------------------------------------ sending
    async def request(
        self,
        method: str,
        ruri: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        to_uri: str | None = None,
    ) -> Response:
        """Send one request and wait for its final response (wrap in a deadline)."""
        branch = new_branch()
        data = build_request(
            method, ruri, from_uri=self.uri, from_tag=new_tag(), to_uri=to_uri or ruri,
            call_id=new_call_id(self.host), cseq=next(self._cseq), via_host=self.host,
            via_port=None, via_transport="WS", branch=branch, headers=headers, body=body,
            content_type="text/plain" if body else None,
        )  # fmt: skip
        send, receive = trio.open_memory_channel[Response](1)
        self._waiters[branch] = send
        try:
            await self.ws.send_message(data.decode())
            with trio.fail_after(10):  # a safety net: the answer normally comes at once
                return await receive.receive()
        finally:
            del self._waiters[branch]

    async def register(self, expires: int = 600) -> Response:
        """REGISTER :attr:`contact` for :attr:`uri` (``expires`` 0 removes it)."""
        return await self.request(
            "REGISTER", f"sip:{self.domain}", to_uri=self.uri,
            headers=(("Contact", f"<{self.contact}>;expires={expires}"),),
        )  # fmt: skip

    async def message(self, ruri: str, body: str) -> Response:
        """A MESSAGE with a text body."""
        return await self.request("MESSAGE", ruri, body=body.encode())

    async def send_raw(self, data: bytes | str) -> None:
        """Send ``data`` as one WebSocket message."""
        await self.ws.send_message(data)

    async def next_raw(self) -> bytes:
        """The next message that matched nothing we sent."""
        with trio.fail_after(10):
            return await self._raw.receive()

    async def next_message(self) -> Request:
        """The next incoming MESSAGE (already answered 200)."""
        with trio.fail_after(10):
            return await self._messages.receive()
