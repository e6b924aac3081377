"""TCP for SIP: listeners, connections framed with :func:`imc_actors.sip.parse_stream`.

A :class:`TcpConnection` wraps one ``trio.SocketStream`` (accepted or opened by us). Its reader
(:meth:`TcpConnection.run`) turns the byte stream into complete SIP messages and hands each to a
synchronous callback. Everything sent goes through the connection's :class:`~.sendqueue.SendQueue`
(at most ``send_queue`` bytes), drained in order by one writer task that :meth:`run` starts
beside the reader: :meth:`TcpConnection.try_send` queues without waiting (or refuses when the
queue is full), :meth:`TcpConnection.send` waits for room and for the write. Over plain TCP, a
message that finds the queue idle is written straight to the non-blocking socket (what the
kernel does not take is queued first, for the writer). A write that fails,
or makes no progress for ``idle_timeout`` seconds (a peer that stopped reading), closes the
connection. A framing error gets the
400 the callback salvages, then the connection is closed (there is no way to find the next
message boundary); so does an incomplete message that fills ``max_buffer`` bytes (513). A
connection idle for ``idle_timeout`` seconds is closed.

:class:`TcpListener` accepts in a loop of its own: when accept fails for lack of resources
(EMFILE, ENFILE, ENOMEM, ENOBUFS) it waits :data:`ACCEPT_RETRY` seconds and tries again, and
says so at most once per :data:`EXHAUSTED_LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable

import trio

from imc_actors.sip import SipParseError, parse_stream

from .limits import LogBudget, LogInterval
from .records import Source
from .sendqueue import DEFAULT_SEND_QUEUE, SendQueue

__all__ = [
    "ACCEPT_RETRY",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BUFFER",
    "EXHAUSTED_LOG_INTERVAL",
    "TcpConnection",
    "TcpListener",
    "bind_listeners",
    "open_connection",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: ``on_frame(message_bytes, connection)`` -> bytes to send back at once on the connection, or None.
FrameCallback = Callable[[bytes, "TcpConnection"], "bytes | None"]
#: ``on_framing_error(buffered_bytes, error)`` -> a last answer (a 400) or None; then we close.
FramingErrorCallback = Callable[[bytes, SipParseError], "bytes | None"]

DEFAULT_IDLE_TIMEOUT = 120.0  # Kamailio's tcp_connection_lifetime
#: Bytes buffered for one incomplete message: the largest message parse accepts (64 KiB), and
#: room for the CRLFs a keep-alive may put before it.
DEFAULT_MAX_BUFFER = 65 * 1024
#: Seconds the accept loop waits after accept failed for lack of file descriptors or memory.
ACCEPT_RETRY = 0.1
#: Resource exhaustion (EMFILE on accept, a connection cap reached) is logged at most once
#: per this many seconds.
EXHAUSTED_LOG_INTERVAL = 10.0
#: Framing errors (a peer sending what is no SIP) logged at most 20 a second in this process,
#: whichever connections they come on (each connection is closed after its one).
_FRAMING_LOG = LogBudget(20)
_RECEIVE_SIZE = 65536
#: Most bytes the writer hands the stream in one write (several queued messages joined).
_WRITE_BATCH = 65536
#: What accept(2) returns when the process or the system is out of resources.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class TcpConnection:
    """One SIP-over-TCP connection (and, as :class:`~.tls.TlsConnection`, over TLS).

    ``peer`` and ``local`` are ``(host, port)``. ``outgoing`` is True for connections we opened.
    ``closed`` becomes True once the reader ended or :meth:`aclose` ran. ``max_buffer``: most
    bytes held for one incomplete message; ``send_queue``: most bytes queued for the writer.
    ``stream`` is what is read and written (a
    ``trio.SocketStream``, or a ``trio.SSLStream`` over one: then ``socket`` names the socket).
    ``bindings`` holds ``(aor, contact) -> expires_at`` for the contacts registered over it
    (kept by :class:`~.bindings.ConnectionBindings`).
    """

    #: The ``Source.transport`` of requests read from it and the Via transport sent over it.
    transport = "tcp"

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        outgoing: bool,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        socket: trio.socket.SocketType | None = None,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        self.stream = stream
        self.outgoing = outgoing
        self.idle_timeout = idle_timeout
        self.max_buffer = max_buffer
        sock = socket if socket is not None else stream.socket  # type: ignore[attr-defined]
        peer = sock.getpeername()
        local = sock.getsockname()
        self.peer: Address = (peer[0], peer[1])
        self.local: Address = (local[0], local[1])
        self.closed = False
        self.stream_closed = False
        self.bindings: dict[tuple[str, str], float] = {}
        #: What the writer task writes, in order (see :meth:`try_send` and :meth:`send`).
        self.queue = SendQueue(send_queue)
        # Plain TCP: a message finding the queue idle is written straight to this
        # (non-blocking) socket, without waking the writer. None over TLS.
        self._fd: int | None = sock.fileno() if type(stream) is trio.SocketStream else None
        self._idle_scope: trio.CancelScope | None = None
        self.frames_received = 0
        self.frames_sent = 0

    @property
    def source(self) -> Source:
        """What requests read from this connection are handed over with."""
        return Source(self.transport, self.peer[0], self.peer[1])

    async def handshake(self) -> bool:
        """Whatever must happen before the first message (nothing over TCP; the TLS handshake
        in :class:`~.tls.TlsConnection`); False closes the connection. Checkpoints."""
        await trio.lowlevel.checkpoint()
        return True

    def touch(self) -> None:
        """Push the idle deadline ``idle_timeout`` seconds into the future (no checkpoint)."""
        if self._idle_scope is not None and math.isfinite(self.idle_timeout):
            self._idle_scope.deadline = trio.current_time() + self.idle_timeout

    def try_send(self, data: bytes) -> bool:
        """Queue one complete message for the writer without waiting: True when queued (it is
        written in order after everything queued before it), False when the connection is
        closed or its queue has no room (``send_queue`` bytes). No checkpoint.

        A queued message that can no longer be written (the connection closes first) is
        dropped; whoever waits for an answer to it learns of the close (``on_close``)."""
        if self.closed:
            return False
        return self._write_now(data) or self.queue.offer(data)

    def _write_now(self, data: bytes) -> bool:
        """Plain TCP with nothing queued or being written: write ``data`` to the socket at
        once (what the kernel does not take is queued first, so the message stays whole);
        False (nothing written) when that is not possible now. No checkpoint."""
        fd = self._fd
        if fd is None or not self.queue.idle():
            return False
        try:
            sent = os.write(fd, data)  # the socket is non-blocking (trio's)
        except OSError:  # full (EAGAIN), or broken: the writer meets it and closes
            return False
        if sent < len(data):
            self.queue.rest(data[sent:])
        self.frames_sent += 1
        self.touch()
        return True

    async def send(self, data: bytes) -> bool:
        """Send one complete message through the queue: waits for room, then until the writer
        wrote it; False when the connection is (or becomes) closed first. Checkpoints.

        Messages never interleave (one writer). Cancellation while waiting for room queues
        nothing; once queued, the message is written whole even if the caller is cancelled.
        """
        if self.closed:
            await trio.lowlevel.checkpoint()
            return False
        if self._write_now(data):
            await trio.lowlevel.checkpoint()
            return True
        return await self.queue.put(data)

    async def _write_loop(self, stop: trio.CancelScope) -> None:
        """The writer: write queued messages in order, several joined per write; a write that
        fails or makes no progress for ``idle_timeout`` seconds closes the connection
        (``stop`` ends its reader). Returns once the queue is closed."""
        queue = self.queue
        while True:
            batch = await queue.take(_WRITE_BATCH)
            if not batch:
                return
            data = batch[0][0] if len(batch) == 1 else b"".join(item[0] for item in batch)
            ok = False
            with trio.move_on_after(self.idle_timeout) as stall:
                try:
                    await self.stream.send_all(data)
                    ok = True
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug("%s %s: send failed: %s", self.transport, self.peer, exc)
                else:
                    self.frames_sent += len(batch)
                    self.touch()
            queue.done(batch, ok)
            if not ok:
                if stall.cancelled_caught:
                    log.info(
                        "%s %s: a write made no progress for %.0f s (%d bytes queued); closing",
                        self.transport, self.peer, self.idle_timeout, queue.queued,
                    )  # fmt: skip
                self.closed = True
                queue.close()
                stop.cancel()
                return

    async def run(
        self,
        on_frame: FrameCallback,
        on_framing_error: FramingErrorCallback,
        on_close: Callable[[TcpConnection], None] | None = None,
    ) -> None:
        """Read and dispatch messages until EOF, error, idle timeout or cancellation.

        Each complete message goes to ``on_frame`` (synchronously); its return value, if any, is
        sent back on this connection. Never more than ``max_buffer`` bytes are held: an
        incomplete message that fills them is a framing error (513 Message too large). Always
        closes the stream and calls ``on_close`` before returning (also on cancellation).
        Checkpoints at every receive.
        """
        buffer = bytearray()
        try:
            if not await self.handshake():  # bounded by its own timeout
                return
            with trio.CancelScope() as scope:
                self._idle_scope = scope
                self.touch()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, nursery.cancel_scope)
                    await self._read_loop(buffer, on_frame, on_framing_error)
                    nursery.cancel_scope.cancel()
            if scope.cancelled_caught:
                log.debug(
                    "%s %s: idle for %.0f s, closing", self.transport, self.peer, self.idle_timeout
                )
        finally:
            self._idle_scope = None
            with trio.CancelScope(shield=True):
                await self._abort()
            if on_close is not None:
                on_close(self)

    async def _read_loop(
        self, buffer: bytearray, on_frame: FrameCallback, on_framing_error: FramingErrorCallback
    ) -> None:
        """Read and dispatch until EOF, a read error or a framing error (see :meth:`run`)."""
        while True:
            room = min(_RECEIVE_SIZE, self.max_buffer - len(buffer))
            if room <= 0:  # max_buffer bytes and still no whole message
                exc = SipParseError("Message too large", 513)
                await self._framing_error(buffer, exc, on_framing_error)
                return
            try:
                chunk = await self.stream.receive_some(room)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not chunk:
                return
            buffer += chunk
            pending = len(buffer)
            try:
                frames = parse_stream(buffer)
            except SipParseError as exc:
                await self._framing_error(buffer, exc, on_framing_error)
                return
            if frames or len(buffer) < pending:
                # a whole message (or keep-alive CRLFs) came: the connection is in use. Bytes of
                # a message that does not end do not count, or one byte a second (slowloris)
                # would hold the connection open for ever
                self.touch()
            for frame in frames:
                self.frames_received += 1
                try:
                    answer = on_frame(frame, self)
                except Exception:
                    log.exception("%s %s: error handling a message", self.transport, self.peer)
                    continue
                if answer is not None:
                    await self.send(answer)

    async def _framing_error(
        self, buffer: bytearray, exc: SipParseError, on_framing_error: FramingErrorCallback
    ) -> None:
        """Send the last answer ``on_framing_error`` makes of ``buffer`` (within 1 s)."""
        _FRAMING_LOG.log(log, logging.INFO, trio.current_time(),
                         "%s %s: framing error: %s; closing", self.transport, self.peer, exc.reason,
                         what="framing errors")  # fmt: skip
        answer = on_framing_error(bytes(buffer), exc)
        if answer is not None:
            with trio.move_on_after(1.0):
                await self.send(answer)

    async def _abort(self) -> None:
        self.queue.close()
        if not self.stream_closed:
            self.closed = self.stream_closed = True
            await trio.aclose_forcefully(self.stream)
        else:
            await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the connection now (a running reader sees it and returns). Checkpoints."""
        await self._abort()


async def open_connection(
    host: str,
    port: int,
    *,
    timeout: float,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    send_queue: int = DEFAULT_SEND_QUEUE,
    local_address: str | None = None,
) -> TcpConnection:
    """Connect to ``host:port`` within ``timeout`` seconds (from ``local_address`` when given).

    Raises :class:`OSError` when refused, unreachable or timed out. Checkpoints; cancellation
    abandons the attempt.
    """
    with trio.move_on_after(timeout) as scope:
        stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    if scope.cancelled_caught:
        raise TimeoutError(f"tcp connect to {host}:{port} timed out")
    return TcpConnection(
        stream,
        outgoing=True,
        idle_timeout=idle_timeout,
        max_buffer=max_buffer,
        send_queue=send_queue,
    )


async def bind_listeners(
    transport: str, host: str, port: int, *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """Listening TCP sockets on ``host:port`` (port 0 = ephemeral) for a ``transport:`` listen
    address; with ``reuse_port`` each has ``SO_REUSEPORT``, so the workers of ``serve
    --workers N`` share the port (the kernel spreads the connections over them). Raises
    :class:`OSError` naming the address. Checkpoints (name resolution)."""
    try:
        if not reuse_port:
            return await trio.open_tcp_listeners(port, host=host)
        return await _reuse_port_listeners(host, port)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot bind {transport}:{host}:{port}: {exc.strerror or exc}"
        ) from exc


async def _reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """What :func:`trio.open_tcp_listeners` binds, each socket with ``SO_REUSEPORT`` too."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, sockaddr in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(socket.SOMAXCONN)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


class TcpListener:
    """Bound TCP listening socket(s) for one listen address; its connections get
    ``idle_timeout``, ``max_buffer`` and ``send_queue``. ``exhausted`` counts failed accepts (EMFILE & co.).
    :class:`~.tls.TlsListener` is the same over TLS (:meth:`connection` wraps each stream)."""

    transport = "tcp"

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        idle_timeout: float,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        self.listeners = listeners
        self.idle_timeout = idle_timeout
        self.max_buffer = max_buffer
        self.send_queue = send_queue
        name = listeners[0].socket.getsockname()
        self.address: Address = (name[0], name[1])
        self.exhausted = 0
        self._exhausted_log = LogInterval(EXHAUSTED_LOG_INTERVAL)

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        send_queue: int = DEFAULT_SEND_QUEUE,
        reuse_port: bool = False,
    ) -> TcpListener:
        """Bind and listen on ``host:port`` (port 0 = ephemeral; ``reuse_port``: see
        :func:`bind_listeners`).

        Raises :class:`OSError` naming the address. Checkpoints (name resolution).
        """
        listeners = await bind_listeners("tcp", host, port, reuse_port=reuse_port)
        return cls(listeners, idle_timeout, max_buffer, send_queue)

    def connection(self, stream: trio.SocketStream) -> TcpConnection:
        """The connection an accepted ``stream`` becomes (raises OSError when the peer is
        already gone)."""
        return TcpConnection(
            stream,
            outgoing=False,
            idle_timeout=self.idle_timeout,
            max_buffer=self.max_buffer,
            send_queue=self.send_queue,
        )

    async def serve(self, on_connection: Callable[[TcpConnection], Awaitable[None]]) -> None:
        """Accept connections forever; each runs ``on_connection`` in its own task.

        An accept that fails for lack of resources (EMFILE, ENFILE, ENOMEM, ENOBUFS) is tried
        again after :data:`ACCEPT_RETRY` seconds (the connection waits in the backlog), logged
        at most once per :data:`EXHAUSTED_LOG_INTERVAL` seconds. Runs until cancelled;
        cancellation also cancels every connection task.
        """

        async def handle(stream: trio.SocketStream) -> None:
            try:
                conn = self.connection(stream)
            except OSError:  # peer vanished between accept and getpeername
                await trio.aclose_forcefully(stream)
                return
            await on_connection(conn)

        async with trio.open_nursery() as nursery:
            for listener in self.listeners:
                nursery.start_soon(self._accept_loop, listener, handle, nursery)

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        handle: Callable[[trio.SocketStream], Awaitable[None]],
        nursery: trio.Nursery,
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                self.exhausted += 1
                if self._exhausted_log.due(trio.current_time()):
                    log.error(
                        "%s %s:%d: accept failed: %s (%s); new connections wait (%d failures "
                        "so far; logged at most every %.0f s)",
                        self.transport,
                        self.address[0],
                        self.address[1],
                        errno.errorcode.get(exc.errno, exc.errno),
                        os.strerror(exc.errno),
                        self.exhausted,
                        EXHAUSTED_LOG_INTERVAL,
                    )
                await trio.sleep(ACCEPT_RETRY)
            else:
                nursery.start_soon(handle, stream)

    async def aclose(self) -> None:
        """Close the listening sockets. Checkpoints."""
        for listener in self.listeners:
            await listener.aclose()
