"""SIP over WebSocket (RFC 7118): listeners, connections, and the contacts they registered.

A :class:`WsListener` accepts WebSocket handshakes (on trio-websocket) that offer the ``sip``
subprotocol; one without it is refused with HTTP 400. Each accepted connection is a
:class:`WsConnection`: one SIP message per WebSocket message, text or binary, in both
directions (we send text when the message is valid UTF-8, as SIP nearly always is). A message
larger than the parser's ``max_message`` (``sip_max_message``, :data:`MAX_MESSAGE` by
default) closes the connection (close code 1009), as a TCP framing error does. A connection quiet for ``idle_timeout`` seconds is pinged; one that does not answer the
ping within :data:`PONG_TIMEOUT` seconds is closed. As over TCP, everything sent goes through
the connection's :class:`~.sendqueue.SendQueue` (``send_queue`` bytes), written in order by one
writer task beside the reader (:meth:`WsConnection.try_send` without waiting,
:meth:`WsConnection.send` awaited); a message the peer does not take within ``idle_timeout``
seconds closes the connection.

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
import ssl
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from ..sip import parser_limits
from .records import Source
from .sendqueue import DEFAULT_SEND_QUEUE, SendQueue
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
#: Largest WebSocket message accepted by default: the SIP parser's default limit (64 KiB);
#: a listener takes the parser's limit in force when it accepts (``sip_max_message``).
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

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        idle_timeout: float = math.inf,
        send_queue: int = DEFAULT_SEND_QUEUE,
        secure: bool = False,
    ) -> None:
        self.ws = ws
        #: True over TLS (a ``wss:`` listener): our requests' Via then says ``WSS``.
        self.secure = secure
        self.via_transport = "WSS" if secure else "WS"
        self.idle_timeout = idle_timeout
        self.peer: Address = _address(ws.remote)
        self.local: Address = _address(ws.local)
        self.closed = False
        self.via_host = f"{secrets.token_hex(6)}.invalid"
        self.bindings: dict[tuple[str, str], float] = {}
        self.frames_received = 0
        self.frames_sent = 0
        self._scope: trio.CancelScope | None = None
        #: What the writer task sends, in order (see :meth:`try_send` and :meth:`send`).
        self.queue = SendQueue(send_queue)

    @property
    def source(self) -> Source:
        """What requests read from this connection are handed over with."""
        return Source("ws", self.peer[0], self.peer[1])

    def try_send(self, data: bytes) -> bool:
        """Queue one complete SIP message (one WebSocket message) without waiting: True when
        queued, False when the connection is closed or its queue has no room. No
        checkpoint."""
        if self.closed:
            return False
        return self.queue.offer(data)

    async def send(self, data: bytes) -> bool:
        """Send one complete SIP message as one WebSocket message through the queue: waits for
        room, then until the writer sent it; False when the connection is (or becomes) closed
        first. Checkpoints; once queued, a cancelled caller's message is still sent whole."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            return False
        return await self.queue.put(data)

    async def _write_loop(self) -> None:
        """The writer: one WebSocket message per queued SIP message (text when it is UTF-8),
        in order; a send that fails or takes more than ``idle_timeout`` seconds closes the
        connection. Returns once the queue is closed."""
        queue = self.queue
        while True:
            batch = await queue.take(0)  # one at a time: each is a WebSocket message of its own
            if not batch:
                return
            data = batch[0][0]
            try:
                message: str | bytes = data.decode("utf-8")
            except UnicodeDecodeError:
                message = data
            ok = False
            with trio.move_on_after(self.idle_timeout) as stall:
                try:
                    await self.ws.send_message(message)
                    ok = True
                except (
                    ConnectionClosed,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    OSError,
                ):
                    log.debug("ws %s: send failed: connection closed", self.peer)
                else:
                    self.frames_sent += 1
            queue.done(batch, ok)
            if not ok:
                if stall.cancelled_caught:
                    log.info(
                        "ws %s: a message was not taken in %.0f s (%d bytes queued); closing",
                        self.peer, self.idle_timeout, queue.queued,
                    )  # fmt: skip
                self._stop()
                return

    async def run(self, on_message: MessageCallback) -> None:
        """Read and dispatch messages until the peer closes, an error, or cancellation.

        Each message goes to ``on_message`` (synchronously; text is encoded as UTF-8); its
        return value, if any, is sent back on this connection. Empty messages and bare
        CRLF keep-alives are ignored. The writer task runs beside the reader for as long.
        Checkpoints at every receive; ``closed`` is True when it returns (the listener then
        closes the WebSocket) and whatever was still queued is dropped.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._write_loop)
                await self._read_loop(on_message)
                nursery.cancel_scope.cancel()
        finally:
            self._scope = None
            self.closed = True
            self.queue.close()

    async def _read_loop(self, on_message: MessageCallback) -> None:
        while True:
            message = await self._receive()
            if message is None:
                return
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
        self.queue.close()
        if self._scope is not None:
            self._scope.cancel()


def _address(endpoint: object) -> Address:
    address = getattr(endpoint, "address", None)
    port = getattr(endpoint, "port", None)
    return (str(address), int(port)) if address is not None and port is not None else ("", 0)


class WsListener:
    """Bound TCP listening socket(s) for one ``ws:`` listen address, or for one ``wss:`` one
    (``ssl_context`` set: each connection does the TLS handshake first, within the opening
    handshake's :data:`HANDSHAKE_TIMEOUT`; a failed one closes that connection only)."""

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        self.listeners = listeners
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.send_queue = send_queue
        #: ``wss:`` connections whose TLS handshake failed or timed out.
        self.handshake_failures = 0
        name = listeners[0].socket.getsockname()
        self.address: Address = (name[0], name[1])
        #: Handshakes refused because they did not offer the ``sip`` subprotocol.
        self.refused = 0

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        *,
        idle_timeout: float = math.inf,
        ssl_context: ssl.SSLContext | None = None,
        send_queue: int = DEFAULT_SEND_QUEUE,
        reuse_port: bool = False,
    ) -> WsListener:
        """Bind and listen on ``host:port`` (port 0 = ephemeral); with ``ssl_context``, for
        ``wss:``; its connections queue at most ``send_queue`` bytes for sending
        (``reuse_port``: see :func:`~.tcp.bind_listeners`).

        Raises :class:`OSError` naming the address. Checkpoints (name resolution).
        """
        name = "wss" if ssl_context is not None else "ws"
        listeners = await bind_listeners(name, host, port, reuse_port=reuse_port)
        return cls(listeners, idle_timeout, ssl_context, send_queue)

    async def serve(
        self,
        on_connection: Callable[[WsConnection], Awaitable[None]],
        *,
        admit: Callable[[str], bool] = lambda host: True,
        release: Callable[[str], None] = lambda host: None,
    ) -> None:
        """Accept WebSocket connections forever; each accepted one runs ``on_connection`` in
        its own task, and is closed when that returns. Runs until cancelled; cancellation
        also ends every connection.

        ``admit(host)`` is asked first, before any TLS or opening handshake: False closes the
        connection at once; each True is paired with ``release(host)`` when it ends (the
        transport passes its accepted-connection budget, ``tcp_max_connections`` and
        ``tcp_max_per_ip``). A TLS handshake that fails closes its connection at once
        (counted in ``handshake_failures``); one that, or an opening handshake that, does not
        complete within :data:`HANDSHAKE_TIMEOUT` seconds is closed then."""

        async def serve_stream(stream: trio.SocketStream) -> None:
            try:
                host = str(stream.socket.getpeername()[0])
            except OSError:  # already gone
                await trio.aclose_forcefully(stream)
                return
            if not admit(host):
                await trio.aclose_forcefully(stream)
                return
            try:
                await self._serve_stream(stream, on_connection)
            finally:
                release(host)

        await trio.serve_listeners(serve_stream, self.listeners)  # type: ignore[arg-type]

    async def _serve_stream(
        self,
        raw: trio.SocketStream,
        on_connection: Callable[[WsConnection], Awaitable[None]],
    ) -> None:
        stream: trio.abc.Stream = raw
        async with trio.open_nursery() as nursery:  # the WebSocket's reader task
            request: WebSocketRequest | None = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                if self.ssl_context is not None:  # TLS under the WebSocket (wss:)
                    secure = trio.SSLStream(raw, self.ssl_context, server_side=True, https_compatible=True)
                    stream = secure
                    try:
                        await secure.do_handshake()
                    except trio.BrokenResourceError:
                        self.handshake_failures += 1
                        log.debug("wss %s: TLS handshake failed", raw.socket.getpeername())
                        await trio.aclose_forcefully(raw)
                        return
                request = await wrap_server_stream(
                    nursery, stream, max_message_size=parser_limits().max_message
                )
            if request is None:  # a handshake that did not complete in time
                if self.ssl_context is not None and stream is raw:
                    self.handshake_failures += 1
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)
                return
            try:
                if SUBPROTOCOL not in request.proposed_subprotocols:
                    self.refused += 1
                    await request.reject(
                        400,
                        extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
                        body=b"SIP over WebSocket needs the subprotocol 'sip' (RFC 7118)\n",
                    )
                    return
                ws = await request.accept(subprotocol=SUBPROTOCOL)
                conn = WsConnection(
                    ws, idle_timeout=self.idle_timeout, send_queue=self.send_queue,
                    secure=self.ssl_context is not None,
                )  # fmt: skip
                try:
                    await on_connection(conn)
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await ws.aclose()
            finally:
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)

    async def aclose(self) -> None:
        """Close the listening sockets. Checkpoints."""
        for listener in self.listeners:
            await listener.aclose()
