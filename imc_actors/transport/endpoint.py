"""``SipTransport``: the Trio worker that drives the pure SIP layer over UDP and TCP.

Server side: every datagram or TCP frame is parsed; a request is matched to its server
transaction (RFC 3261 §17.2.3) so a retransmission is answered from the transaction and never
reaches the handler twice; a new request gets a transaction and one handler task, whose
:class:`Reply` becomes the response kept for retransmissions. At most ``max_transactions``
server transactions live at once: beyond that a new request is answered 503 with
``Retry-After`` at once, statelessly, and never reaches the handler. Responses are matched to
client transactions. Client side: :meth:`SipTransport.send_request` builds a request, picks
the next hop (spec §6) and drives a client transaction to its final result.

A handler may also offer ``start(request, source, respond) -> bool`` (:class:`StartHandler`):
for a request over UDP the transport tries it first, and when it returns True no task is
started; the handler calls ``respond(reply)`` once, later or at once, from the Trio thread.
That saves a task per request on the hot path (a command queued to a room actor that answers
by callback); anything ``start`` declines goes to a handler task as before.

All transaction timers (Timer J of server transactions; Timers E, F and K of client
transactions) are served by one timer task, not a task per transaction: FIFO lanes for the
deadlines that come in order, a heap for the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import ipaddress
import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from imc_actors.config import ListenAddress
from imc_actors.sip import (
    ClientTransaction,
    Request,
    Response,
    ServerTransaction,
    SipParseError,
    aor_key,
    build_request,
    build_response,
    client_key,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    salvage_response,
    server_key,
)

from .tcp import DEFAULT_IDLE_TIMEOUT, TcpConnection, TcpListener, open_connection
from .udp import Address, UdpEndpoint

__all__ = [
    "ClientResult",
    "Handler",
    "Hop",
    "Reply",
    "SipTransport",
    "Source",
    "TransportStatistics",
    "parse_hop",
]

log = logging.getLogger(__name__)

#: Messages larger than this go over TCP when the next hop accepts TCP (RFC 3261 §18.1.1).
TCP_THRESHOLD = 1300
#: How long a hop that refused a TCP connection is sent UDP without trying TCP again.
TCP_RETRY_AFTER = 30.0


# ---------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: ``transport`` is ``udp`` or ``tcp``; the peer's host and port."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler answers: status ``code``, ``reason`` (None = the RFC phrase), extra
    ``headers`` in order, ``body`` and its ``content_type`` (text/plain when a body has none)."""

    code: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str | None = None


Handler = Callable[[Request, Source], Awaitable[Reply]]
#: Sends the final response to one request (given to :meth:`StartHandler.start`).
Responder = Callable[[Reply], None]


class StartHandler(Protocol):
    """A :data:`Handler` that can also take a request without a task of its own."""

    async def __call__(self, request: Request, source: Source) -> Reply: ...

    def start(self, request: Request, source: Source, respond: Responder) -> bool:
        """Take ``request`` and return True, promising one ``respond(reply)`` call (it may come
        before ``start`` returns); or return False having done nothing (the transport then
        runs ``__call__`` in a task). Must not block or checkpoint."""
        ...


@dataclass(frozen=True, slots=True)
class ClientResult:
    """The final outcome of :meth:`SipTransport.send_request`.

    The final response's code and reason, or 408 ``Request Timeout`` when Timer F fired, or 503
    ``Service Unavailable`` when the request could not be sent (unresolvable hop, network
    error, TCP connection lost).
    """

    code: int
    reason: str

    @property
    def ok(self) -> bool:
        """True for a 2xx."""
        return 200 <= self.code < 300


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """A snapshot of a :class:`SipTransport`'s counters (see :meth:`SipTransport.statistics`).

    ``received``: datagrams and TCP frames read; ``sent``: datagrams and frames written;
    ``malformed``: messages that did not parse (``rejected`` of them were answered with a
    salvaged 4xx/5xx, the rest dropped); ``requests``: new requests handed to the handler;
    ``transactions_refused``: new requests answered 503 + ``Retry-After`` without a
    transaction because ``max_transactions`` server transactions were live;
    ``retransmissions_absorbed``: requests answered from (or swallowed by) an existing server
    transaction, plus duplicate final responses absorbed by a client transaction;
    ``handler_errors``: handlers that raised (answered 500); ``acks``: ACKs absorbed;
    ``stray_responses``: responses matching no client transaction; ``client_ok`` /
    ``client_failed``: outcomes of :meth:`send_request` (2xx / anything else);
    ``client_timeouts``: of the failures, Timer F expiries; ``client_retransmissions``: Timer E
    resends; ``send_errors``: datagrams the network refused (or dropped from a full buffer);
    ``server_transactions`` / ``client_transactions`` / ``tcp_connections``: live now.
    """

    received: int
    sent: int
    malformed: int
    rejected: int
    requests: int
    transactions_refused: int
    retransmissions_absorbed: int
    handler_errors: int
    acks: int
    stray_responses: int
    client_ok: int
    client_failed: int
    client_timeouts: int
    client_retransmissions: int
    send_errors: int
    server_transactions: int
    client_transactions: int
    tcp_connections: int


# ---------------------------------------------------------------------------------- internals
class _Sender(Protocol):
    async def send(self, data: bytes) -> bool: ...


class _UdpPeer:
    """Where responses to one UDP request go."""

    __slots__ = ("endpoint", "dest")

    def __init__(self, endpoint: UdpEndpoint, dest: Address) -> None:
        self.endpoint = endpoint
        self.dest = dest

    async def send(self, data: bytes) -> bool:
        return await self.endpoint.send(data, self.dest)


class _ServerEntry:
    """A server transaction plus the deadline it is filed under in the timer heap."""

    __slots__ = ("txn", "scheduled")

    def __init__(self, txn: ServerTransaction) -> None:
        self.txn = txn
        self.scheduled: float | None = None


class _ClientEntry:
    """A client transaction, its way to retransmit, and the waiter for its outcome."""

    __slots__ = ("txn", "scheduled", "done", "result", "udp", "dest", "conn", "callback")

    def __init__(
        self,
        txn: ClientTransaction,
        udp: UdpEndpoint | None,
        dest: Address,
        conn: TcpConnection | None,
        callback: Callable[[ClientResult], None] | None = None,
    ) -> None:
        self.txn = txn
        self.scheduled: float | None = None
        # Waited on by send_request; a request started with a callback has nobody waiting.
        self.done: trio.Event | None = trio.Event() if callback is None else None
        self.result: ClientResult | None = None
        self.udp = udp
        self.dest = dest
        self.conn = conn
        self.callback = callback

    def finish(self, result: ClientResult) -> None:
        if self.result is None:
            self.result = result
            if self.callback is not None:
                try:
                    self.callback(result)
                except Exception:  # called from the receive loop or the timers: never kill them
                    log.exception("client transaction callback raised")
            else:
                assert self.done is not None
                self.done.set()


@dataclass(frozen=True, slots=True)
class Hop:
    """A next hop from :func:`parse_hop`: ``host`` as written (IP literal or DNS name, IPv6
    without brackets), ``port``, ``transport`` 'udp', 'tcp' or None (chosen by message size)."""

    host: str
    port: int
    transport: str | None


@dataclass(frozen=True, slots=True)
class _Target:
    """One destination of an outgoing request: its Request-URI and next hop."""

    request_uri: str
    hop: Hop


class _NoRoute(Exception):
    """The request cannot be sent to this target (answered 503)."""


_SERVER = 0
_CLIENT = 1
_TIMER_LANES = 4  # FIFO timer lanes: J, K, first E, F over TCP (see SipTransport._schedule)
_TIMER_TICK = 0.005  # seconds: timers due within one tick fire together
_TIMEOUT = ClientResult(408, "Request Timeout")
_UNAVAILABLE = ClientResult(503, "Service Unavailable")
#: Retry-After (seconds) of the 503 a new request gets while ``max_transactions`` are live.
_REFUSED_RETRY_AFTER = (("Retry-After", "1"),)
#: The "limit reached" warning is logged at most once per this many seconds.
_REFUSED_LOG_INTERVAL = 1.0
_WILDCARD = ("0.0.0.0", "::", "")


@functools.lru_cache(maxsize=4096)
def parse_hop(uri: str) -> Hop:
    """Host, port and transport of a SIP URI (``sip:user@host:port;transport=tcp``) or a plain
    ``host[:port]``. The port defaults to 5060. Raises ValueError when there is no host, or for
    ``sips:`` (TLS is not supported, and sending a sips URI in the clear is not allowed)."""
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    scheme, colon, rest = text.partition(":")
    lowered = scheme.lower()
    if colon and lowered == "sips":
        raise ValueError(f"sips URI not supported: {uri!r}")
    if colon and lowered == "sip":
        text = rest
    text = text.partition("?")[0]
    at = text.rfind("@")
    if at >= 0:
        text = text[at + 1 :]
    hostport, _, params = text.partition(";")
    transport: str | None = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            value = value.strip().lower()
            if value not in ("udp", "tcp"):
                raise ValueError(f"unsupported transport {value!r} in {uri!r}")
            transport = value
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host, port_text = hostport, ""
    host = host.strip()
    if not host:
        raise ValueError(f"no host in {uri!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {uri!r}")
        port = int(port_text)
    else:
        port = 5060
    return Hop(host, port, transport)


ViaFix = tuple[bytes, bytes] | None


def _via_fix(req: Request, source: Source) -> tuple[ViaFix, bool]:
    """How responses to ``req`` must rewrite their top Via line, and whether it has rport.

    RFC 3261 §18.2.1: add ``received=<source IP>`` when the sent-by host differs from it;
    RFC 3581: with ``rport``, add ``received`` and fill in ``rport=<source port>``. Returns
    ``((old line, new line), has_rport)`` for :func:`_patch_via`, or ``(None, has_rport)`` when
    the Via stays as it is. (Patching the built bytes is much cheaper than copying the Request.)
    """
    value = next((v for name, v in req.headers if name == "Via"), None)
    if value is None:
        return None, False
    top, comma, rest = value.partition(",")
    sent, semi, params = top.partition(";")
    has_rport = False
    kept: list[str] = []
    if semi:
        for param in params.split(";"):
            pname = param.partition("=")[0].strip().lower()
            if pname == "rport":
                has_rport = True
            elif pname != "received":
                kept.append(param.strip())
    if has_rport:
        kept.append(f"received={source.host}")
        kept.append(f"rport={source.port}")
    else:
        sent_host = req.via_sent_by
        if sent_host.startswith("["):
            sent_host = sent_host[1:].partition("]")[0]
        elif sent_host.count(":") == 1:
            sent_host = sent_host.partition(":")[0]
        if sent_host == source.host.lower():
            return None, False
        kept.append(f"received={source.host}")
    new_value = ";".join([sent.rstrip(), *kept]) + comma + rest
    return (f"\r\nVia: {value}\r\n".encode(), f"\r\nVia: {new_value}\r\n".encode()), has_rport


def _patch_via(data: bytes, fix: ViaFix) -> bytes:
    """Apply a :func:`_via_fix` to response bytes from :func:`build_response`."""
    if fix is None:
        return data
    return data.replace(fix[0], fix[1], 1)


def _via_port(req: Request) -> int:
    sent_by = req.via_sent_by
    if sent_by.startswith("["):
        tail = sent_by.partition("]")[2]
        port_text = tail.removeprefix(":")
    elif sent_by.count(":") == 1:
        port_text = sent_by.partition(":")[2]
    else:
        port_text = ""
    return int(port_text) if port_text.isdigit() else 5060


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _better(a: ClientResult, b: ClientResult) -> ClientResult:
    """The better of two branch outcomes (RFC 3261 §16.7, simplified): a 2xx wins, then a 6xx,
    then the lowest class; a response received beats a synthesised 408/503."""

    def rank(r: ClientResult) -> tuple[int, int, int]:
        cls = r.code // 100
        order = 0 if cls == 2 else 1 if cls == 6 else 2
        synthetic = 1 if r in (_TIMEOUT, _UNAVAILABLE) else 0
        return (order, synthetic, r.code)

    return a if rank(a) <= rank(b) else b


# ---------------------------------------------------------------------------------- transport
class SipTransport:
    """SIP over UDP and TCP for the server: server and client transactions, dispatch, next hop.

    ``listen``: the addresses to bind (port 0 = ephemeral; :attr:`bound` has the real ones).
    ``outbound_proxy``: a SIP URI or ``host[:port]`` every outgoing request is sent to.
    ``locate(aor)``: registered contact URIs of an AOR (``user@host``), [] when none; used to
    retarget outgoing requests (spec §6). ``max_datagram``: largest UDP datagram accepted.
    ``t1``/``t2``/``t4``: RFC 3261 timer values (tests shorten them). ``tcp_idle_timeout``:
    seconds after which an idle TCP connection is closed. ``connect_timeout``: limit for
    opening an outgoing TCP connection. ``max_transactions``: most server transactions alive
    at once (each lives until Timer J after its final response); a new request beyond it is
    answered 503 with ``Retry-After: 1`` without a transaction or a handler call.
    """

    def __init__(
        self,
        listen: Sequence[ListenAddress],
        *,
        outbound_proxy: str | None = None,
        locate: Callable[[str], list[str]] | None = None,
        max_datagram: int = 65535,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        tcp_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = 5.0,
        max_transactions: int = 100_000,
    ) -> None:
        if max_transactions < 1:
            raise ValueError(f"max_transactions must be positive, got {max_transactions}")
        self.listen = list(listen)
        self.outbound_proxy = outbound_proxy
        self._proxy_hop = parse_hop(outbound_proxy) if outbound_proxy else None
        self.locate = locate
        self.max_datagram = max_datagram
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.tcp_idle_timeout = tcp_idle_timeout
        self.connect_timeout = connect_timeout
        self.max_transactions = max_transactions
        self.bound: list[ListenAddress] = []

        self._handler: Handler | None = None
        self._start_handler: Callable[[Request, Source, Responder], bool] | None = None
        self._nursery: trio.Nursery | None = None
        self._udp: list[UdpEndpoint] = []
        self._tcp: list[TcpListener] = []
        self._connections: set[TcpConnection] = set()
        self._tcp_out: dict[Address, TcpConnection] = {}
        self._tcp_connecting: dict[Address, trio.Event] = {}
        self._tcp_refused_until: dict[Address, float] = {}
        self._local_ip_cache: dict[str, str] = {}

        self._server: dict[Any, _ServerEntry] = {}
        self._client: dict[Any, _ClientEntry] = {}
        # Timer filings: (deadline, seq, kind, key, entry). Most deadlines are "now + a
        # constant" (Timer J, K, a client's first Timer E, F over TCP), so each kind arrives
        # in order and goes to a FIFO lane of its own (O(1), no heap); the rest (E's doubling
        # retransmission intervals, anything out of order) go to the heap.
        self._timers: list[tuple[float, int, int, Any, Any]] = []
        self._lanes: tuple[deque[tuple[float, int, int, Any, Any]], ...] = tuple(
            deque() for _ in range(_TIMER_LANES)
        )
        self._timer_seq = 0
        self._timer_wake = trio.Event()
        self._sleep_until = -math.inf

        self._received = 0
        self._sent = 0
        self._malformed = 0
        self._rejected = 0
        self._requests = 0
        self._refused = 0
        self._refused_logged_at = -math.inf
        self._absorbed = 0
        self._handler_errors = 0
        self._acks = 0
        self._stray = 0
        self._client_ok = 0
        self._client_failed = 0
        self._client_timeouts = 0
        self._client_retransmissions = 0
        self._call_id_host_cache: str | None = None
        self._send_errors = 0

    # ------------------------------------------------------------------ lifecycle
    async def run(
        self,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[SipTransport] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind every listen address, report ``started(self)``, then serve until cancelled.

        A bind failure raises :class:`OSError` naming the address before ``started()`` (with
        ``nursery.start`` the caller sees it directly). Each new request runs ``handler`` in its
        own task inside this method's nursery. On cancellation every socket is closed, handler
        tasks are cancelled, and pending :meth:`send_request` calls return 503.
        """
        if self._nursery is not None:
            raise RuntimeError("SipTransport is already running")
        self._handler = handler
        self._start_handler = getattr(handler, "start", None)
        self._call_id_host_cache = None
        self.bound = []
        try:
            for address in self.listen:
                if address.transport == "udp":
                    endpoint = UdpEndpoint.bind(
                        address.host, address.port, max_datagram=self.max_datagram
                    )
                    self._udp.append(endpoint)
                    port = endpoint.address[1]
                else:
                    listener = await TcpListener.bind(
                        address.host, address.port, idle_timeout=self.tcp_idle_timeout
                    )
                    self._tcp.append(listener)
                    port = listener.address[1]
                self.bound.append(ListenAddress(address.transport, address.host, port))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer_loop)
                for endpoint in self._udp:
                    nursery.start_soon(self._serve_udp, endpoint)
                for listener in self._tcp:
                    nursery.start_soon(listener.serve, self._serve_tcp_connection)
                log.info("SIP transport listening on %s", ", ".join(map(str, self.bound)))
                task_status.started(self)
        finally:
            self._nursery = None
            for entry in self._client.values():
                entry.finish(_UNAVAILABLE)
            for endpoint in self._udp:
                endpoint.close()
            with trio.CancelScope(shield=True):
                for listener in self._tcp:
                    await listener.aclose()
                for conn in list(self._connections):
                    await conn.aclose()
            for endpoint in self._udp:
                self._sent += endpoint.sent
                self._received += endpoint.received
                self._send_errors += endpoint.send_errors
            self._udp.clear()
            self._tcp.clear()
            self._server.clear()
            self._client.clear()
            self._timers.clear()
            for lane in self._lanes:
                lane.clear()
            self._tcp_out.clear()
            self._sleep_until = -math.inf

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters (no checkpoint)."""
        return TransportStatistics(
            received=self._received + sum(e.received for e in self._udp),
            sent=self._sent + sum(e.sent for e in self._udp),
            malformed=self._malformed,
            rejected=self._rejected,
            requests=self._requests,
            transactions_refused=self._refused,
            retransmissions_absorbed=self._absorbed,
            handler_errors=self._handler_errors,
            acks=self._acks,
            stray_responses=self._stray,
            client_ok=self._client_ok,
            client_failed=self._client_failed,
            client_timeouts=self._client_timeouts,
            client_retransmissions=self._client_retransmissions,
            send_errors=self._send_errors + sum(e.send_errors for e in self._udp),
            server_transactions=len(self._server),
            client_transactions=len(self._client),
            tcp_connections=len(self._connections),
        )

    # ------------------------------------------------------------------ server side: UDP
    async def _serve_udp(self, endpoint: UdpEndpoint) -> None:
        def on_datagram(data: bytes, addr: Address) -> tuple[bytes, Address] | None:
            return self._on_datagram(endpoint, data, addr)

        await endpoint.serve(on_datagram)

    def _on_datagram(
        self, endpoint: UdpEndpoint, data: bytes, addr: Address
    ) -> tuple[bytes, Address] | None:
        """Handle one datagram synchronously; return an immediate answer and where to send it."""
        try:
            message = parse(data)
        except SipParseError as exc:
            answer = self._malformed_answer(data, exc, addr)
            return None if answer is None else (answer, addr)
        if isinstance(message, Response):
            self._on_response(message)
            return None
        source = Source("udp", addr[0], addr[1])
        if message.method == "ACK":
            self._acks += 1
            return None
        fix, rport = _via_fix(message, source)
        dest = addr if rport else (addr[0], _via_port(message))
        answer = self._on_request(message, fix, source, _UdpPeer(endpoint, dest))
        return None if answer is None else (answer, dest)

    def _malformed_answer(self, data: bytes, exc: SipParseError, peer: Address) -> bytes | None:
        self._malformed += 1
        answer = salvage_response(data, exc.code, exc.reason)
        log.debug(
            "malformed message from %s: %s (%s)",
            peer,
            exc.reason,
            "answered" if answer else "dropped",
        )
        if answer is not None:
            self._rejected += 1
        return answer

    # ------------------------------------------------------------------ server side: TCP
    async def _serve_tcp_connection(self, conn: TcpConnection) -> None:
        self._connections.add(conn)
        await conn.run(self._on_frame, self._on_framing_error, self._on_tcp_closed)

    def _on_frame(self, data: bytes, conn: TcpConnection) -> bytes | None:
        self._received += 1
        try:
            message = parse(data)
        except SipParseError as exc:
            answer = self._malformed_answer(data, exc, conn.peer)
            if answer is not None:
                self._sent += 1
            return answer
        if isinstance(message, Response):
            self._on_response(message)
            return None
        if message.method == "ACK":
            self._acks += 1
            return None
        source = Source("tcp", conn.peer[0], conn.peer[1])
        fix, _ = _via_fix(message, source)
        answer = self._on_request(message, fix, source, conn)
        if answer is not None:
            self._sent += 1
        return answer

    def _on_framing_error(self, data: bytes, exc: SipParseError) -> bytes | None:
        self._received += 1
        answer = self._malformed_answer(data, exc, ("tcp stream", 0))
        if answer is not None:
            self._sent += 1
        return answer

    def _on_tcp_closed(self, conn: TcpConnection) -> None:
        self._connections.discard(conn)
        for addr, known in list(self._tcp_out.items()):
            if known is conn:
                del self._tcp_out[addr]
        for entry in self._client.values():
            if entry.conn is conn and entry.result is None:
                entry.finish(_UNAVAILABLE)

    # ------------------------------------------------------------------ server transactions
    def _on_request(
        self, request: Request, fix: ViaFix, source: Source, sender: _Sender
    ) -> bytes | None:
        """Match ``request`` to a server transaction (no checkpoint).

        A retransmission returns the transaction's last response (None while the handler still
        works); a new request gets a transaction and a handler task, or, while
        ``max_transactions`` transactions are live, an immediate stateless 503 with
        ``Retry-After`` (returned, like every answer sent at once). ``fix`` is the
        received/rport rewrite of the top Via that responses get.
        """
        now = trio.current_time()
        key = server_key(request)
        entry = self._server.get(key)
        if entry is not None:
            self._absorbed += 1
            return entry.txn.on_retransmission(now)
        if len(self._server) >= self.max_transactions:
            return self._refuse(request, fix, now)
        # Timer J runs 64*T1 on TCP too (RFC 3261 says 0 there): a request repeated over a new
        # connection, or over UDP after TCP, is still answered from the transaction, so a chat
        # line is never relayed twice (spec §5).
        entry = _ServerEntry(ServerTransaction(False, now, t1=self.t1))
        self._server[key] = entry
        if request.method == "CANCEL" and self._cancel_matches(request):
            # RFC 3261 §9.2: a CANCEL matching a (non-INVITE) transaction gets 200 and has no
            # effect on it; an unmatched CANCEL goes to the handler (481).
            data = _patch_via(build_response(request, 200, to_tag=new_tag()), fix)
            self._respond(key, entry, data, 200)
            return data
        self._requests += 1
        if self._start_handler is not None and type(sender) is _UdpPeer:
            if self._start(request, fix, source, key, entry, sender):
                return None
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_request, request, fix, source, key, entry, sender)
        return None

    def _refuse(self, request: Request, fix: ViaFix, now: float) -> bytes:
        """The stateless 503 + ``Retry-After`` for a new request beyond ``max_transactions``
        (no transaction, no handler: a retransmission is refused again, or served once there
        is room). Logged at most once per second."""
        self._refused += 1
        if now - self._refused_logged_at >= _REFUSED_LOG_INTERVAL:
            self._refused_logged_at = now
            log.warning("server transaction limit %d reached: answering 503", self.max_transactions)
        data = build_response(request, 503, to_tag=new_tag(), headers=_REFUSED_RETRY_AFTER)
        return _patch_via(data, fix)

    def _start(
        self,
        request: Request,
        fix: ViaFix,
        source: Source,
        key: Any,
        entry: _ServerEntry,
        peer: _UdpPeer,
    ) -> bool:
        """Offer a UDP request to the handler's ``start`` (no task); False when it declines."""

        def respond(reply: Reply) -> None:
            if self._nursery is None or entry.txn.state not in ("trying", "proceeding"):
                return  # the transport has stopped, or this request was answered already
            data, code = self._response_bytes(request, reply)
            data = _patch_via(data, fix)
            self._respond(key, entry, data, code)
            peer.endpoint.send_nowait(data, peer.dest)  # a lost datagram: the client resends

        assert self._start_handler is not None
        try:
            return self._start_handler(request, source, respond)
        except Exception:
            self._handler_errors += 1
            log.exception("handler failed for %s %s from %s", request.method, request.uri, source)
            respond(Reply(500))
            return True

    def _cancel_matches(self, cancel: Request) -> bool:
        for method in (
            "MESSAGE",
            "OPTIONS",
            "REGISTER",
            "INVITE",
            "SUBSCRIBE",
            "NOTIFY",
            "PUBLISH",
            "INFO",
            "REFER",
            "UPDATE",
            "BYE",
            "PRACK",
        ):
            original = dataclasses.replace(cancel, method=method, cseq_method=method)
            if server_key(original) in self._server:
                return True
        return False

    async def _serve_request(
        self,
        request: Request,
        fix: ViaFix,
        source: Source,
        key: Any,
        entry: _ServerEntry,
        sender: _Sender,
    ) -> None:
        """One request's task: run the handler, build and send its response.

        A handler that raises is logged and answered 500. Cancellation (shutdown) abandons the
        request without an answer.
        """
        assert self._handler is not None
        try:
            reply = await self._handler(request, source)
        except Exception:
            self._handler_errors += 1
            log.exception("handler failed for %s %s from %s", request.method, request.uri, source)
            reply = Reply(500)
        data, code = self._response_bytes(request, reply)
        data = _patch_via(data, fix)
        self._respond(key, entry, data, code)
        if await sender.send(data) and isinstance(sender, TcpConnection):
            self._sent += 1

    def _response_bytes(self, request: Request, reply: Reply) -> tuple[bytes, int]:
        """The response ``reply`` describes (500 when it is not a :class:`Reply` or cannot be
        built), and its status code."""
        try:
            if not isinstance(reply, Reply):
                raise TypeError(f"handler returned {reply!r}, not a Reply")
            data = build_response(
                request,
                reply.code,
                reply.reason,
                to_tag=new_tag(),
                headers=reply.headers,
                body=reply.body,
                content_type=reply.content_type,
            )
            return data, reply.code
        except Exception:
            self._handler_errors += 1
            log.exception("bad reply %r to %s %s", reply, request.method, request.uri)
            return build_response(request, 500, to_tag=new_tag()), 500

    def _respond(self, key: Any, entry: _ServerEntry, data: bytes, code: int) -> None:
        """Record the final response in the transaction and file its Timer J."""
        now = trio.current_time()
        entry.txn.respond(data, code, now)
        if entry.txn.state == "terminated":
            if self._server.get(key) is entry:
                del self._server[key]
            return
        self._schedule(_SERVER, key, entry, entry.txn.deadline())

    # ------------------------------------------------------------------ responses
    def _on_response(self, response: Response) -> None:
        try:
            key = client_key(response)
        except ValueError:
            key = None
        entry = self._client.get(key) if key is not None else None
        if entry is None:
            self._stray += 1
            log.debug("stray response %d for Call-ID %s", response.code, response.call_id)
            return
        now = trio.current_time()
        already_final = entry.result is not None
        entry.txn.on_response(response.code, now, response.reason)
        if response.code >= 200:
            if already_final:
                self._absorbed += 1
            else:
                entry.finish(ClientResult(response.code, response.reason))
        if entry.txn.state == "terminated":
            if self._client.get(key) is entry:
                del self._client[key]
        else:
            self._schedule(_CLIENT, key, entry, entry.txn.deadline())

    # ------------------------------------------------------------------ timers
    def _schedule(
        self, kind: int, key: Any, entry: _ServerEntry | _ClientEntry, deadline: float | None
    ) -> None:
        """File ``entry`` under ``deadline`` unless an earlier wake-up is already filed."""
        if deadline is None:
            return
        if entry.scheduled is not None and entry.scheduled <= deadline:
            return
        entry.scheduled = deadline
        self._timer_seq += 1
        filing = (deadline, self._timer_seq, kind, key, entry)
        txn = entry.txn
        if kind == _SERVER:
            lane = self._lanes[0]  # Timer J
        elif txn.state == "completed":
            lane = self._lanes[1]  # Timer K
        elif txn.retransmissions == 0:
            lane = self._lanes[2 if not txn.reliable else 3]  # first Timer E; F over TCP
        else:
            lane = None
        if lane is not None and (not lane or lane[-1][0] <= deadline):
            lane.append(filing)
        else:
            heapq.heappush(self._timers, filing)
        if deadline + _TIMER_TICK < self._sleep_until:
            self._sleep_until = -math.inf
            self._timer_wake.set()

    async def _timer_loop(self) -> None:
        """The one timer task: fire due timers, sleep until the next deadline or a wake-up.

        Wakes at most once per ``_TIMER_TICK``: under load deadlines are a fraction of a
        millisecond apart, and each timed wake-up costs Trio a cancel scope and a Cancelled
        exception, so timers fire in batches, at most a tick late (RFC 3261's are 500 ms and
        more). Checkpoints every round; runs until cancelled.
        """
        while True:
            now = trio.current_time()
            self._fire_timers(now)
            self._sleep_until = max(self._next_deadline(), now + _TIMER_TICK)
            self._timer_wake = trio.Event()
            with trio.move_on_at(self._sleep_until):
                await self._timer_wake.wait()

    def _next_deadline(self) -> float:
        soonest = self._timers[0][0] if self._timers else math.inf
        for lane in self._lanes:
            if lane and lane[0][0] < soonest:
                soonest = lane[0][0]
        return soonest

    def _due(self, now: float) -> Iterator[tuple[float, int, int, Any, Any]]:
        """Take the filings due at ``now`` off the heap and the lanes."""
        heap = self._timers
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)
        for lane in self._lanes:
            while lane and lane[0][0] <= now:
                yield lane.popleft()

    def _fire_timers(self, now: float) -> None:
        servers = self._server
        clients = self._client
        for deadline, _, kind, key, entry in self._due(now):
            if entry.scheduled != deadline:
                continue  # superseded by an earlier filing
            entry.scheduled = None
            if kind == _SERVER:
                if servers.get(key) is not entry:
                    continue
                txn = entry.txn
                txn.on_timer(now)  # does nothing before its deadline
                if txn.state == "terminated":
                    del servers[key]
                else:
                    self._schedule(kind, key, entry, txn.deadline())
                continue
            if clients.get(key) is not entry:
                continue
            ctxn: ClientTransaction = entry.txn
            resend = ctxn.on_timer(now)  # does nothing before its deadline
            if resend is not None and entry.udp is not None:
                self._client_retransmissions += 1
                entry.udp.send_nowait(resend, entry.dest)
            if ctxn.state != "terminated":
                self._schedule(kind, key, entry, ctxn.deadline())
                continue
            del clients[key]
            if entry.result is not None:
                continue  # Timer K after a final response: its outcome was reported then
            if ctxn.timed_out:
                entry.finish(_TIMEOUT)
            else:
                entry.finish(
                    ClientResult(ctxn.final_code or 408, ctxn.final_reason or "Request Timeout")
                )

    # ------------------------------------------------------------------ client side
    async def send_request(
        self,
        method: str,
        request_uri: str,
        *,
        from_uri: str,
        to_uri: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        call_id: str | None = None,
    ) -> ClientResult:
        """Send a new out-of-dialog request and wait for its final outcome.

        Builds the request (own Via with a fresh branch and rport, ``From: <from_uri>;tag=``
        random, ``To: <to_uri>``, a new Call-ID unless given, ``CSeq: 1 <method>``,
        ``Max-Forwards: 70``, ``headers`` in order, Content-Type, Content-Length) and sends it
        to the next hop (spec §6): ``outbound_proxy``; else every contact ``locate`` returns
        for the Request-URI's AOR, in parallel, each as Request-URI (RFC 3261 retargeting;
        the best result wins, RFC 3261 §16.7); else the Request-URI's host (IP literal or DNS
        name, port 5060 by default). UDP with retransmissions (Timer E) up to Timer F; TCP
        when the URI says ``transport=tcp``, or when the message exceeds 1300 bytes and the hop
        accepts a TCP connection (else UDP).

        Returns the final response's code and reason; 408 on Timer F; 503 when the hop cannot
        be resolved or reached. Never raises for network problems (RuntimeError when the
        transport is not running). Checkpoints; cancellation
        abandons the transaction (nothing more is sent).
        """
        if self._nursery is None:
            raise RuntimeError("SipTransport is not running")
        try:
            targets = self._targets(request_uri)
        except ValueError as exc:
            log.warning("cannot route %s to %s: %s", method, request_uri, exc)
            await trio.lowlevel.checkpoint()
            self._client_failed += 1
            return _UNAVAILABLE
        if call_id is None:
            call_id = new_call_id(self._call_id_host())
        from_tag = new_tag()

        async def attempt(target: _Target) -> ClientResult:
            return await self._send_to_target(
                target, method, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
                call_id=call_id, headers=headers, body=body, content_type=content_type,
            )  # fmt: skip

        if len(targets) == 1:
            result = await self._send_to_target(
                targets[0], method, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
                call_id=call_id, headers=headers, body=body, content_type=content_type,
            )  # fmt: skip
        else:
            results: list[ClientResult] = []

            async def branch(target: _Target) -> None:
                results.append(await attempt(target))

            async with trio.open_nursery() as nursery:
                for target in targets:
                    nursery.start_soon(branch, target)
            result = results[0]
            for other in results[1:]:
                result = _better(result, other)
        self._count_outcome(method, request_uri, result)
        return result

    def _count_outcome(self, method: str, request_uri: str, result: ClientResult) -> None:
        """Count one outgoing request's final outcome (and log a failure at debug level)."""
        if result.ok:
            self._client_ok += 1
        else:
            self._client_failed += 1
            if result is _TIMEOUT:
                self._client_timeouts += 1
            log.debug("%s to %s failed: %d %s", method, request_uri, result.code, result.reason)

    def start_request(
        self,
        method: str,
        request_uri: str,
        *,
        from_uri: str,
        to_uri: str,
        on_result: Callable[[ClientResult], None],
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        call_id: str | None = None,
    ) -> bool:
        """:meth:`send_request` without a task: send now, call ``on_result`` with the outcome.

        Only for the common case that needs no waiting: one target, an IP-literal next hop
        reached over UDP (no ``transport=tcp``, small enough to stay off TCP), and a socket
        that takes the datagram at once. Then the request is built, sent and its client
        transaction filed exactly as :meth:`send_request` would, and True is returned;
        ``on_result(ClientResult)`` is called later, once, from the transport (when the final
        response, Timer F or shutdown ends the transaction); it must not block or raise. In every
        other case nothing is sent and False is returned: use :meth:`send_request`.
        Never checkpoints.
        """
        if self._nursery is None:
            return False
        try:
            targets = self._targets(request_uri)
        except ValueError:
            return False
        if len(targets) != 1:
            return False
        target = targets[0]
        hop = target.hop
        if hop.transport == "tcp" or not _is_ip(hop.host):
            return False
        udp = self._udp_for(socket.AF_INET6 if ":" in hop.host else socket.AF_INET)
        if udp is None:
            return False
        dest = (hop.host, hop.port)
        branch = new_branch()
        via_host, via_port = self._via_address(udp, dest)
        data = build_request(
            method, target.request_uri, from_uri=from_uri, from_tag=new_tag(), to_uri=to_uri,
            call_id=call_id or new_call_id(self._call_id_host()), cseq=1, via_host=via_host,
            via_port=via_port, via_transport="UDP", branch=branch, headers=headers, body=body,
            content_type=content_type,
        )  # fmt: skip
        if hop.transport is None and len(data) > TCP_THRESHOLD:
            return False
        try:
            udp.sock.sendto(data, dest)
        except OSError:  # a full buffer, or an error send_request reports in its own way
            return False
        udp.sent += 1

        def finished(result: ClientResult) -> None:
            self._count_outcome(method, request_uri, result)
            on_result(result)

        txn = ClientTransaction(data, False, trio.current_time(), t1=self.t1, t2=self.t2, t4=self.t4)
        entry = _ClientEntry(txn, udp, dest, None, finished)
        key = (branch, method)
        self._client[key] = entry
        self._schedule(_CLIENT, key, entry, txn.deadline())
        return True

    def _targets(self, request_uri: str) -> list[_Target]:
        """Destinations for a request to ``request_uri`` (spec §6). Raises ValueError."""
        if self._proxy_hop is not None:
            return [_Target(request_uri, self._proxy_hop)]
        if self.locate is not None:
            try:
                aor = aor_key(request_uri)
            except ValueError:
                aor = None
            contacts = self.locate(aor) if aor else []
            targets: list[_Target] = []
            for contact in contacts:
                try:
                    targets.append(_Target(contact, parse_hop(contact)))
                except ValueError as exc:
                    log.warning("unusable contact %r for %s: %s", contact, aor, exc)
            if targets:
                return targets
        return [_Target(request_uri, parse_hop(request_uri))]

    async def _resolve(self, hop: Hop) -> tuple[int, Address]:
        """(address family, (ip, port)) of ``hop``; IP literals as is, names via getaddrinfo.

        Raises :class:`_NoRoute`. Checkpoints.
        """
        host = hop.host
        if _is_ip(host):
            await trio.lowlevel.checkpoint()
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, hop.port)
        try:
            infos = await trio.socket.getaddrinfo(host, hop.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise _NoRoute(f"cannot resolve {host}: {exc}") from None
        families = {e.family for e in self._udp} or {socket.AF_INET, socket.AF_INET6}
        for family, _, _, _, sockaddr in infos:
            if family in families:
                return family, (str(sockaddr[0]), int(sockaddr[1]))
        if infos:
            family, _, _, _, sockaddr = infos[0]
            return family, (str(sockaddr[0]), int(sockaddr[1]))
        raise _NoRoute(f"no address for {host}")

    async def _send_to_target(
        self,
        target: _Target,
        method: str,
        *,
        from_uri: str,
        from_tag: str,
        to_uri: str,
        call_id: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        content_type: str | None,
    ) -> ClientResult:
        """Build, send and follow one client transaction to ``target``. Checkpoints."""
        try:
            hop = target.hop
            if _is_ip(hop.host):  # no name to resolve: no checkpoint (send_request waits anyway)
                family = socket.AF_INET6 if ":" in hop.host else socket.AF_INET
                dest = (hop.host, hop.port)
            else:
                family, dest = await self._resolve(hop)
        except _NoRoute as exc:
            log.warning("cannot send %s to %s: %s", method, target.request_uri, exc)
            return _UNAVAILABLE
        branch = new_branch()
        udp = self._udp_for(family)

        def build(via_transport: str, via: Address) -> bytes:
            return build_request(
                method, target.request_uri, from_uri=from_uri, from_tag=from_tag,
                to_uri=to_uri, call_id=call_id, cseq=1, via_host=via[0], via_port=via[1],
                via_transport=via_transport, branch=branch, headers=headers, body=body,
                content_type=content_type,
            )  # fmt: skip

        data = build("UDP", self._via_address(udp, dest)) if udp is not None else b""
        want_tcp = target.hop.transport == "tcp" or udp is None
        try_tcp = not want_tcp and target.hop.transport is None and len(data) > TCP_THRESHOLD
        if want_tcp or try_tcp:
            conn = await self._tcp_connection(dest, required=want_tcp)
            if conn is not None:
                via = self._tcp_via(family, conn)
                return await self._run_client(build("TCP", via), (branch, method), None, dest, conn)
            if want_tcp:
                return _UNAVAILABLE
            log.debug("%s:%d refuses TCP; sending %d bytes over UDP", dest[0], dest[1], len(data))
        assert udp is not None
        return await self._run_client(data, (branch, method), udp, dest, None)

    async def _run_client(
        self,
        data: bytes,
        key: tuple[str, str],
        udp: UdpEndpoint | None,
        dest: Address,
        conn: TcpConnection | None,
    ) -> ClientResult:
        """Send ``data`` and wait for the client transaction's outcome. ``key`` is what
        :func:`client_key` gives its responses: ``(branch, method)``. Checkpoints."""
        now = trio.current_time()
        txn = ClientTransaction(data, conn is not None, now, t1=self.t1, t2=self.t2, t4=self.t4)
        entry = _ClientEntry(txn, udp, dest, conn)
        self._client[key] = entry
        self._schedule(_CLIENT, key, entry, txn.deadline())
        try:
            if conn is not None:
                sent = await conn.send(data)
                if sent:
                    self._sent += 1
            else:
                assert udp is not None
                sent = await udp.send(data, dest)
            if not sent:
                entry.finish(_UNAVAILABLE)
            assert entry.done is not None
            await entry.done.wait()
        finally:
            if entry.result is None or entry.result is _UNAVAILABLE:
                if self._client.get(key) is entry:
                    del self._client[key]
        assert entry.result is not None
        return entry.result

    def _udp_for(self, family: int) -> UdpEndpoint | None:
        for endpoint in self._udp:
            if endpoint.family == family:
                return endpoint
        return None

    def _via_address(self, endpoint: UdpEndpoint, dest: Address) -> Address:
        host, port = endpoint.address
        if host in _WILDCARD:
            host = self._local_ip_towards(endpoint.family, dest[0])
        return host, port

    def _tcp_via(self, family: int, conn: TcpConnection) -> Address:
        for listener in self._tcp:
            if listener.listeners[0].socket.family == family:
                host, port = listener.address
                if host in _WILDCARD:
                    host = conn.local[0]
                return host, port
        return conn.local

    def _local_ip_towards(self, family: int, ip: str) -> str:
        """The local address the kernel would use to reach ``ip`` (no packet is sent)."""
        cached = self._local_ip_cache.get(ip)
        if cached is None:
            probe = socket.socket(family, socket.SOCK_DGRAM)
            try:
                probe.connect((ip, 9))
                cached = probe.getsockname()[0]
            except OSError:
                cached = "127.0.0.1" if family == socket.AF_INET else "::1"
            finally:
                probe.close()
            self._local_ip_cache[ip] = cached
        return cached

    def _call_id_host(self) -> str:
        if self._call_id_host_cache is not None and self.bound:
            return self._call_id_host_cache
        self._call_id_host_cache = self._find_call_id_host()
        return self._call_id_host_cache

    def _find_call_id_host(self) -> str:
        for address in self.bound:
            if address.host not in _WILDCARD:
                return address.host
        return socket.gethostname()

    async def _tcp_connection(self, dest: Address, *, required: bool) -> TcpConnection | None:
        """A connection to ``dest``: the open one, or a new one (its reader started).

        None when the hop refuses or does not answer in ``connect_timeout``; a hop that refused
        is not tried again for 30 s unless ``required``. Checkpoints.
        """
        conn = self._tcp_out.get(dest)
        if conn is not None and not conn.closed:
            await trio.lowlevel.checkpoint()
            return conn
        now = trio.current_time()
        if not required and self._tcp_refused_until.get(dest, -math.inf) > now:
            await trio.lowlevel.checkpoint()
            return None
        pending = self._tcp_connecting.get(dest)
        if pending is not None:
            await pending.wait()
            conn = self._tcp_out.get(dest)
            return conn if conn is not None and not conn.closed else None
        done = self._tcp_connecting[dest] = trio.Event()
        try:
            conn = await open_connection(
                dest[0], dest[1], timeout=self.connect_timeout, idle_timeout=self.tcp_idle_timeout
            )
        except OSError as exc:
            log.debug("tcp connect to %s:%d failed: %s", dest[0], dest[1], exc)
            self._tcp_refused_until[dest] = trio.current_time() + TCP_RETRY_AFTER
            return None
        finally:
            del self._tcp_connecting[dest]
            done.set()
        self._tcp_refused_until.pop(dest, None)
        self._tcp_out[dest] = conn
        self._connections.add(conn)
        assert self._nursery is not None
        self._nursery.start_soon(
            conn.run, self._on_frame, self._on_framing_error, self._on_tcp_closed
        )
        return conn
