"""SIP over WebSocket (RFC 7118): listeners, connections, and the contacts they registered.

A :class:`WsListener` accepts WebSocket handshakes (on trio-websocket) that offer the ``sip``
subprotocol; one without it is refused with HTTP 400. Each accepted connection is a
:class:`WsConnection`: one SIP message per WebSocket message, text or binary, in both
directions (we send text when the message is valid UTF-8, as SIP nearly always is). A message
larger than :data:`MAX_MESSAGE` closes the connection (close code 1009), as a TCP framing error
does. A connection quiet for ``idle_timeout`` seconds is pinged; one that does not answer the
ping within :data:`PONG_TIMEOUT` seconds is closed.

A browser cannot accept connections, so a request for a contact registered over a WebSocket
(typically ``sip:<random>@<random>.invalid;transport=ws``) can only go back over the connection
that registered it. :class:`~.bindings.ConnectionBindings` (the registry TCP and TLS
connections share) remembers that: the server reports each accepted REGISTER's binding changes,
and routing asks it for the connection of ``(aor, contact)``. Once that connection has closed
there is no way to a ``transport=ws`` contact: a request to it fails at once (480), it never
waits for a timeout.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from .records import Source
from .tcp import bind_listeners
from .udp import Address

__all__ = [
    "MAX_MESSAGE",
    "SUBPROTOCOL",
    "WsConnection",
    "WsListener",
]

log = logging.getLogger(__name__)

#: The WebSocket subprotocol of SIP (RFC 7118 §4.1).
SUBPROTOCOL = "sip"
#: Largest WebSocket message accepted: the SIP parser's own limit (64 KiB).
MAX_MESSAGE = 65536
#: Seconds a client has to complete the opening handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds the closing handshake may take before the socket is closed anyway.
CLOSE_TIMEOUT = 2.0
#: Seconds an idle connection has to answer our ping before it is closed.
PONG_TIMEOUT = 10.0

#: ``on_message(message_bytes, connection)`` -> bytes to send back at once, or None.
MessageCallback = Callable[[bytes, "WsConnection"], "bytes | None"]


class WsConnection:
    """One SIP-over-WebSocket connection accepted by a :class:`WsListener`.

    ``peer`` and ``local`` are ``(host, port)``; ``closed`` becomes True once the reader ended
    or a send failed. ``via_host`` is the ``<random>.invalid`` sent-by our requests over this
    connection carry in their Via (RFC 7118 §5: the client cannot reach us by that name and
    need not). ``bindings`` holds ``(aor, contact) -> expires_at`` for the contacts registered
    over it (kept by :class:`~.bindings.ConnectionBindings`).
    """

    transport = "ws"

    def __init__(self, ws: WebSocketConnection, *, idle_timeout: float = math.inf) -> None:
        self.ws = ws
        self.idle_timeout = idle_timeout
        self.peer: Address = _address(ws.remote)
        self.local: Address = _address(ws.local)
        self.closed = False
        self.via_host = f"{secrets.token_hex(6)}.invalid"
        self.bindings: dict[tuple[str, str], float] = {}
        self.frames_received = 0
        self.frames_sent = 0
        self._scope: trio.CancelScope | None = None

    @property
    def source(self) -> Source:
        """What requests read from this connection are handed over with."""
        return Source("ws", self.peer[0], self.peer[1])

    async def send(self, data: bytes) -> bool:
        """Send one complete SIP message as one WebSocket message; False when the connection
        is (or becomes) closed. Checkpoints. Cancellation while the frame is half-written
        leaves the stream unusable, so the connection is then closed."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            return False
        try:
            message: str | bytes = data.decode("utf-8")
        except UnicodeDecodeError:
            message = data
        try:
            await self.ws.send_message(message)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            log.debug("ws %s: send failed: connection closed", self.peer)
            self._stop()
            return False
        except trio.Cancelled:
            self._stop()
            raise
        self.frames_sent += 1
        return True

    async def run(self, on_message: MessageCallback) -> None:
        """Read and dispatch messages until the peer closes, an error, or cancellation.

        Each message goes to ``on_message`` (synchronously; text is encoded as UTF-8); its
        return value, if any, is sent back on this connection. Empty messages and bare
        CRLF keep-alives are ignored. Checkpoints at every receive; ``closed`` is True when
        it returns (the listener then closes the WebSocket).
        """
        try:
            with trio.CancelScope() as self._scope:
                while True:
                    message = await self._receive()
                    if message is None:
                        break
                    data = message.encode("utf-8") if isinstance(message, str) else message
                    if not data.strip():
                        continue
                    self.frames_received += 1
                    try:
                        answer = on_message(data, self)
                    except Exception:
                        log.exception("ws %s: error handling a message", self.peer)
                        continue
                    if answer is not None:
                        await self.send(answer)
        finally:
            self._scope = None
            self.closed = True

    async def _receive(self) -> str | bytes | None:
        """The next message, None once the connection is gone (or an idle one missed its
        ping)."""
        while True:
            with trio.move_on_after(self.idle_timeout):
                try:
                    return await self.ws.get_message()
                except ConnectionClosed:
                    return None
            with trio.move_on_after(PONG_TIMEOUT) as scope:
                try:
                    await self.ws.ping()
                except ConnectionClosed:
                    return None
            if scope.cancelled_caught:
                log.debug("ws %s: no answer to a ping; closing", self.peer)
                return None

    def _stop(self) -> None:
        self.closed = True
        if self._scope is not None:
            self._scope.cancel()


def _address(endpoint: object) -> Address:
    address = getattr(endpoint, "address", None)
    port = getattr(endpoint, "port", None)
    return (str(address), int(port)) if address is not None and port is not None else ("", 0)


class WsListener:
    """Bound TCP listening socket(s) for one ``ws:`` listen address."""

    def __init__(self, listeners: list[trio.SocketListener], idle_timeout: float) -> None:
        self.listeners = listeners
        self.idle_timeout = idle_timeout
        name = listeners[0].socket.getsockname()
        self.address: Address = (name[0], name[1])
        #: Handshakes refused because they did not offer the ``sip`` subprotocol.
        self.refused = 0

    @classmethod
    async def bind(
        cls, host: str, port: int, *, idle_timeout: float = math.inf, reuse_port: bool = False
    ) -> WsListener:
        """Bind and listen on ``host:port`` (port 0 = ephemeral; ``reuse_port``: see
        :func:`~.tcp.bind_listeners`).

        Raises :class:`OSError` naming the address. Checkpoints (name resolution).
        """
        return cls(await bind_listeners("ws", host, port, reuse_port=reuse_port), idle_timeout)

    async def serve(self, on_connection: Callable[[WsConnection], Awaitable[None]]) -> None:
        """Accept WebSocket connections forever; each accepted one runs ``on_connection`` in
        its own task, and is closed when that returns. Runs until cancelled; cancellation
        also ends every connection."""

        async def handle(request: WebSocketRequest) -> None:
            if SUBPROTOCOL not in request.proposed_subprotocols:
                self.refused += 1
                await request.reject(
                    400,
                    extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
                    body=b"SIP over WebSocket needs the subprotocol 'sip' (RFC 7118)\n",
                )
                return
            ws = await request.accept(subprotocol=SUBPROTOCOL)
            await on_connection(WsConnection(ws, idle_timeout=self.idle_timeout))

        server = WebSocketServer(
            handle,
            self.listeners,
            max_message_size=MAX_MESSAGE,
            connect_timeout=HANDSHAKE_TIMEOUT,
            disconnect_timeout=CLOSE_TIMEOUT,
        )
        await server.run()

    async def aclose(self) -> None:
        """Close the listening sockets. Checkpoints."""
        for listener in self.listeners:
            await listener.aclose()
