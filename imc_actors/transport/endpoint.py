"""``SipTransport``: the Trio worker that binds the SIP sockets and wires the transport's parts.

:class:`SipTransport` binds every listen address (UDP endpoints, TCP and WebSocket
listeners), parses each datagram, TCP frame or WebSocket message (malformed ones get the 400 :func:`~imc_actors.sip.salvage_response`
salvages, ACKs are absorbed), and hands requests and responses to the part whose job they
are; it also runs the one timer task and keeps the receive-side counters. The parts, each in
a module of its own with the state it owns:

- :mod:`.records`: the records it speaks in (:class:`Source`, :class:`Reply`,
  :data:`Handler`, :class:`StartHandler`, :class:`ClientResult`, :class:`TransportStatistics`);
- :mod:`.server`: server transactions (matching, the ``max_transactions`` refusal, CANCEL,
  handler tasks and the task-free ``start`` path);
- :mod:`.client`: client transactions (:meth:`SipTransport.send_request`,
  :meth:`SipTransport.start_request`, response matching, outcome counting);
- :mod:`.timers`: the timer wheel serving every transaction's timers (Timer J of server
  transactions; Timers E, F and K of client transactions) from one task;
- :mod:`.routing`: next hops (:class:`Hop`, :func:`parse_hop`, targets, DNS) and our own
  addresses in Via, and the Via rewrite of responses;
- :mod:`.connections`: the TCP and TLS connection pool (reuse, refused hops, readers, the
  caps on accepted connections);
- :mod:`.tls`: SIP over TLS (``tls:`` listeners, handshakes, the server and client contexts);
- :mod:`.bindings`: the contacts registered over each TCP, TLS and WebSocket connection
  (:meth:`SipTransport.bind_contacts`), which requests to them are sent over;
- :mod:`.limits`: the per-source flood budget and the once-per-interval warnings.
- :mod:`.websocket`: SIP over WebSocket (RFC 7118).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from imc_actors.config import ListenAddress
from imc_actors.sip import Response, SipParseError, new_mark, parse, salvage_response
from imc_actors.sip.parse import quick_response

from .bindings import ConnectionBindings
from .client import TCP_THRESHOLD, ClientTransactions, better
from .connections import TCP_RETRY_AFTER, Connections
from .limits import FloodLimiter
from .records import (
    ClientResult,
    Handler,
    Reply,
    Responder,
    Source,
    StartHandler,
    TransportStatistics,
)
from .routing import (
    Hop,
    NoRoute,
    Router,
    Target,
    ViaFix,
    is_ip,
    parse_hop,
    patch_via,
    via_fix,
    via_port,
)
from .sendqueue import DEFAULT_SEND_QUEUE
from .server import ServerTransactions, UdpPeer
from .steering import Steering
from .tcp import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BUFFER, TcpConnection, TcpListener
from .timers import LANES, TimerWheel
from .tls import TlsListener
from .udp import Address, UdpEndpoint
from .websocket import WsConnection, WsListener

__all__ = [
    "TCP_RETRY_AFTER",
    "TCP_THRESHOLD",
    "ClientResult",
    "Handler",
    "Hop",
    "Reply",
    "Responder",
    "SipTransport",
    "Source",
    "StartHandler",
    "TransportStatistics",
    "ViaFix",
    "parse_hop",
]

log = logging.getLogger(__name__)

#: Ports tried for the private UDP and TCP pair of a worker (see ``SipTransport``).
PRIVATE_BIND_TRIES = 20

# The names these had when they lived here, for code that imports them from this module.
_Target = Target
_NoRoute = NoRoute
_is_ip = is_ip
_via_fix = via_fix
_patch_via = patch_via
_via_port = via_port
_better = better


class SipTransport:
    """SIP over UDP, TCP, TLS and WebSocket for the server: server and client transactions,
    dispatch, next hop.

    ``listen``: the addresses to bind (port 0 = ephemeral; :attr:`bound` has the real ones).
    ``outbound_proxy``: a SIP URI or ``host[:port]`` every outgoing request is sent to.
    ``locate(aor)``: registered contact URIs of an AOR (``user@host``), [] when none; used to
    retarget outgoing requests (spec §6). ``max_datagram``: largest UDP datagram accepted.
    ``t1``/``t2``/``t4``: RFC 3261 timer values (tests shorten them). ``tcp_idle_timeout``:
    seconds after which an idle TCP connection is closed (an idle WebSocket is pinged then, and
    closed when it does not answer). ``connect_timeout``: limit for
    opening an outgoing TCP connection. ``dns_timeout``: most seconds a DNS name of a next
    hop may take to resolve (then the request fails as unreachable); ``dns_lookups_max``:
    most lookups in their threads at once (a name server that does not answer holds at most
    that many threads; a lookup waiting for a free one counts against its ``dns_timeout``). ``max_transactions``: most server transactions alive
    at once (each lives until Timer J after its final response); a new request beyond it is
    answered 503 with ``Retry-After: 1`` without a transaction or a handler call; so is one
    while the responses kept by live transactions reach ``max_transaction_bytes``.
    ``max_vias``: most Via header fields a request may carry (more: 483).
    ``tcp_max_connections`` / ``tcp_max_per_ip``: most accepted TCP connections live at once,
    in all and from one address (beyond: closed at once); ``tcp_max_outgoing``: most outgoing
    TCP/TLS connections open or opening (beyond: none is opened, the request goes over UDP
    when it may, else fails as to a hop that refused); ``tcp_max_buffer``: most bytes held
    for one incomplete TCP message; ``tcp_send_queue``: most bytes queued for sending on one
    TCP, TLS or WebSocket connection (see :mod:`.sendqueue`). ``flood_rate`` (0 = off), ``flood_burst``,
    ``flood_block``, ``flood_sources``: each source IP's budget of new requests (see
    :class:`~.limits.FloodLimiter`); addresses in ``flood_exempt`` (CIDRs) have none.
    ``tls_server``: the context ``tls:`` listen addresses accept with (required when there is
    one; :func:`~.tls.server_context`); ``tls_client``: the one outgoing TLS connections verify
    their peer with (default: :func:`~.tls.client_context`, the system's trusted CAs). TLS
    connections count against the ``tcp_*`` limits like TCP ones.

    For the workers of ``serve --workers N`` (:mod:`imc_actors.workers`): ``reuse_port`` binds
    every listen address with ``SO_REUSEPORT``, so N processes share the ports; and
    ``private_host`` binds a UDP and a TCP socket of this process alone on that host, on one
    ephemeral port, *first* (:attr:`private`, also first in :attr:`bound`): the requests this
    transport sends go out from them, with their port in Via, so the responses and whatever
    another worker sends to this one (forwarding) reach this process and not whichever worker
    the kernel picks on a shared port. ``steering`` (:class:`~.steering.Steering`) passes a
    request received on a shared UDP port to its room's home worker, and handles the ones the
    other workers pass here.
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
        dns_timeout: float = 5.0,
        dns_lookups_max: int = 16,
        max_transactions: int = 100_000,
        local_domains: Sequence[str] = (),
        max_transaction_bytes: int = 256 * 1024 * 1024,
        max_vias: int = 16,
        tcp_max_connections: int = 2048,
        tcp_max_per_ip: int = 256,
        tcp_max_outgoing: int = 2048,
        tcp_max_buffer: int = DEFAULT_MAX_BUFFER,
        tcp_send_queue: int = DEFAULT_SEND_QUEUE,
        flood_rate: float = 0.0,
        flood_burst: int = 1,
        flood_block: float = 0.0,
        flood_sources: int = 65536,
        flood_exempt: Sequence[str] = (),
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        private_host: str | None = None,
        steering: Steering | None = None,
    ) -> None:
        if max_transactions < 1:
            raise ValueError(f"max_transactions must be positive, got {max_transactions}")
        self.max_transaction_bytes = max_transaction_bytes
        self.max_vias = max_vias
        self.tcp_max_connections = tcp_max_connections
        self.tcp_max_per_ip = tcp_max_per_ip
        self.tcp_max_outgoing = tcp_max_outgoing
        self.tcp_max_buffer = tcp_max_buffer
        self.tcp_send_queue = tcp_send_queue
        #: The per-source budget of new requests, None when ``flood_rate`` is 0.
        self.flood: FloodLimiter | None = None
        if flood_rate > 0:
            self.flood = FloodLimiter(
                flood_rate, flood_burst, flood_block, exempt=flood_exempt, max_sources=flood_sources
            )
        self.listen = list(listen)
        secure = [a.transport for a in self.listen if a.transport in ("tls", "wss")]
        if tls_server is None and secure:
            raise ValueError(f"a {secure[0]}: listen address needs tls_server (a certificate and key)")
        self.tls_server = tls_server
        self.outbound_proxy = outbound_proxy
        self.max_datagram = max_datagram
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.tcp_idle_timeout = tcp_idle_timeout
        self.connect_timeout = connect_timeout
        self.max_transactions = max_transactions
        self.bound: list[ListenAddress] = []
        self.reuse_port = reuse_port
        self.private_host = private_host
        #: The addresses bound for ``private_host`` (UDP, then TCP on the same port), or [].
        self.private: list[ListenAddress] = []
        self.steering = steering
        #: The UDP endpoints of the listen addresses (not the private one), in their order:
        #: what a steered datagram names (its index here is the same in every worker).
        self._shared_udp: list[UdpEndpoint] = []
        #: In every Via branch and Call-ID this transport makes: its own requests coming back
        #: are recognised (482 Loop Detected; see :func:`imc_actors.sip.new_mark`).
        self.mark = new_mark()

        self._nursery: trio.Nursery | None = None
        # Filled by run() and cleared when it ends; the router reads the same lists.
        self._udp: list[UdpEndpoint] = []
        self._tcp: list[TcpListener] = []
        self._ws: list[WsListener] = []
        # every TCP, TLS and WebSocket connection, and the contacts registered over each
        self._bindings = ConnectionBindings()
        self._timers = TimerWheel(LANES)
        self._router = Router(
            self._udp,
            self._tcp,
            parse_hop(outbound_proxy) if outbound_proxy else None,
            locate,
            local_domains=local_domains,
            bindings=self._bindings,
            dns_timeout=dns_timeout,
            dns_lookups_max=dns_lookups_max,
        )
        self._connections = Connections(
            self._on_frame,
            self._on_framing_error,
            self._on_tcp_closed,
            registry=self._bindings,
            tls_client=tls_client,
        )
        self._servers = ServerTransactions(self._timers, self.mark)
        self._clients = ClientTransactions(self._timers, self._router, self._connections, self.mark)

        self._received = 0
        self._sent = 0
        self._malformed = 0
        self._rejected = 0
        self._acks = 0
        self._send_errors = 0
        self._tls_failures = 0

    @property
    def locate(self) -> Callable[[str], list[str]] | None:
        """The ``locate(aor)`` outgoing requests are retargeted with (may be replaced)."""
        return self._router.locate

    @locate.setter
    def locate(self, locate: Callable[[str], list[str]] | None) -> None:
        self._router.locate = locate

    def is_self(self, host: str, port: int) -> bool:
        """True when ``host`` (an IP address) and ``port`` are one of this transport's own
        listening sockets (while it runs): what is sent there comes straight back."""
        return _is_ip(host) and self._router.is_self((host, port))

    @property
    def find_binding(self) -> Callable[[str], Awaitable[bool]] | None:
        """``await find_binding(aor)``: asked when ``locate`` has no contact for a user of a
        local domain, before that user counts as unreachable; True when it found bindings
        (``locate`` returns them now). None (the default): no second look."""
        return self._router.find

    @find_binding.setter
    def find_binding(self, find: Callable[[str], Awaitable[bool]] | None) -> None:
        self._router.find = find

    @property
    def _serve_request(self) -> Callable[..., object]:
        """The coroutine a request's handler task runs (it lives in :class:`ServerTransactions`);
        replaceable, so a test can watch which requests get a task."""
        return self._servers._serve_request

    @_serve_request.setter
    def _serve_request(self, serve: Callable[..., object]) -> None:
        self._servers._serve_request = serve  # type: ignore[method-assign]

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
        self.bound = []
        self.private = []
        try:
            if self.private_host is not None:
                await self._bind_private(self.private_host)
            shared = self.reuse_port
            for address in self.listen:
                if address.transport == "udp":
                    endpoint = UdpEndpoint.bind(
                        address.host, address.port, max_datagram=self.max_datagram,
                        reuse_port=shared,
                    )  # fmt: skip
                    self._udp.append(endpoint)
                    self._shared_udp.append(endpoint)
                    port = endpoint.address[1]
                elif address.transport == "tls":
                    assert self.tls_server is not None
                    secure = await TlsListener.bind_tls(
                        address.host,
                        address.port,
                        context=self.tls_server,
                        idle_timeout=self.tcp_idle_timeout,
                        max_buffer=self.tcp_max_buffer,
                        send_queue=self.tcp_send_queue,
                        reuse_port=shared,
                    )
                    self._tcp.append(secure)
                    port = secure.address[1]
                elif address.transport in ("ws", "wss"):
                    websocket = await WsListener.bind(
                        address.host,
                        address.port,
                        idle_timeout=self.tcp_idle_timeout,
                        ssl_context=self.tls_server if address.transport == "wss" else None,
                        send_queue=self.tcp_send_queue,
                        reuse_port=shared,
                    )
                    self._ws.append(websocket)
                    port = websocket.address[1]
                else:
                    listener = await TcpListener.bind(
                        address.host,
                        address.port,
                        idle_timeout=self.tcp_idle_timeout,
                        max_buffer=self.tcp_max_buffer,
                        send_queue=self.tcp_send_queue,
                        reuse_port=shared,
                    )
                    self._tcp.append(listener)
                    port = listener.address[1]
                self.bound.append(ListenAddress(address.transport, address.host, port))
            if self.steering is not None:
                self.steering.open()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._servers.open(
                    nursery,
                    handler,
                    t1=self.t1,
                    max_transactions=self.max_transactions,
                    max_bytes=self.max_transaction_bytes,
                    max_vias=self.max_vias,
                    flood=self.flood,
                )
                self._clients.open(nursery, self.bound, t1=self.t1, t2=self.t2, t4=self.t4)
                self._connections.open(
                    nursery,
                    connect_timeout=self.connect_timeout,
                    idle_timeout=self.tcp_idle_timeout,
                    max_buffer=self.tcp_max_buffer,
                    max_accepted=self.tcp_max_connections,
                    max_per_ip=self.tcp_max_per_ip,
                    max_outgoing=self.tcp_max_outgoing,
                    send_queue=self.tcp_send_queue,
                    local_hosts=[a.host for a in self.bound if a.transport == "tcp"],
                )
                nursery.start_soon(self._timer_loop)
                for endpoint in self._udp:
                    nursery.start_soon(self._serve_udp, endpoint)
                if self.steering is not None:
                    nursery.start_soon(self.steering.serve, self._on_steered, self._send_steered)
                for listener in self._tcp:
                    nursery.start_soon(listener.serve, self._connections.serve)
                for websocket in self._ws:
                    nursery.start_soon(
                        partial(
                            websocket.serve,
                            self._serve_ws,
                            admit=self._connections.admit,  # one budget with TCP and TLS
                            release=self._connections.release,
                        )
                    )
                log.info("SIP transport listening on %s", ", ".join(map(str, self.bound)))
                task_status.started(self)
        finally:
            self._nursery = None
            self._servers.close()
            self._clients.close()
            for endpoint in self._udp:
                endpoint.close()
            with trio.CancelScope(shield=True):
                for listener in self._tcp:
                    await listener.aclose()
                for websocket in self._ws:
                    await websocket.aclose()
                await self._connections.aclose()
            self._tls_failures += sum(
                getattr(listener, "handshake_failures", 0) for listener in [*self._tcp, *self._ws]
            )
            for endpoint in self._udp:
                self._sent += endpoint.sent
                self._received += endpoint.received
                self._send_errors += endpoint.send_errors
            if self.steering is not None:
                self.steering.close()
            self._udp.clear()
            self._shared_udp.clear()
            self._tcp.clear()
            self._ws.clear()
            self._timers.clear()

    async def _bind_private(self, host: str) -> None:
        """Bind ``udp:host:P`` and ``tcp:host:P`` for one free port P (a few tries: another
        program may hold the TCP port of the UDP one the kernel picked). Raises OSError."""
        for attempt in range(PRIVATE_BIND_TRIES):
            endpoint = UdpEndpoint.bind(host, 0, max_datagram=self.max_datagram)
            port = endpoint.address[1]
            try:
                listener = await TcpListener.bind(
                    host, port, idle_timeout=self.tcp_idle_timeout, max_buffer=self.tcp_max_buffer
                )
            except OSError:
                endpoint.close()
                if attempt == PRIVATE_BIND_TRIES - 1:
                    raise
                continue
            self._udp.append(endpoint)
            self._tcp.append(listener)
            self.private = [ListenAddress("udp", host, port), ListenAddress("tcp", host, port)]
            self.bound.extend(self.private)
            return

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters (no checkpoint)."""
        servers = self._servers
        clients = self._clients
        return TransportStatistics(
            received=self._received + sum(e.received for e in self._udp),
            sent=self._sent + servers.sent + clients.sent + sum(e.sent for e in self._udp),
            malformed=self._malformed,
            rejected=self._rejected,
            requests=servers.requests,
            transactions_refused=servers.refused,
            retransmissions_absorbed=servers.absorbed + clients.absorbed,
            handler_errors=servers.handler_errors,
            acks=self._acks,
            stray_responses=clients.stray,
            client_ok=clients.ok,
            client_failed=clients.failed,
            client_timeouts=clients.timeouts,
            client_retransmissions=clients.retransmissions,
            send_errors=self._send_errors + sum(e.send_errors for e in self._udp),
            server_transactions=len(servers),
            client_transactions=len(clients),
            tcp_connections=len(self._connections),
            ws_connections=self._bindings.count("ws"),
            tls_connections=self._bindings.count("tls"),
            tls_handshake_failures=self._tls_failures
            + sum(getattr(listener, "handshake_failures", 0) for listener in [*self._tcp, *self._ws]),
            loops=servers.loops,
            self_targets=clients.self_targets,
            dns_timeouts=self._router.dns_timeouts,
            merged=servers.merged,
            client_unreachable=clients.unreachable,
            throttled=self.flood.throttled if self.flood is not None else 0,
            vias_refused=servers.vias_refused,
            transaction_bytes=servers.kept_bytes,
            tcp_refused=self._connections.refused,
            tcp_outgoing_refused=self._connections.outgoing_refused,
            tcp_accept_failures=sum(listener.exhausted for listener in self._tcp),
            send_queued=self._bindings.queued(),
            send_queue_full=clients.queue_full,
            steered=self.steering.relayed if self.steering is not None else 0,
            steered_in=self.steering.received if self.steering is not None else 0,
            steer_fallbacks=self.steering.fallbacks if self.steering is not None else 0,
        )

    # ------------------------------------------------------------------ receiving: UDP
    async def _serve_udp(self, endpoint: UdpEndpoint) -> None:
        steering = self.steering
        shared = self._shared_udp.index(endpoint) if endpoint in self._shared_udp else -1

        def on_datagram(data: bytes, addr: Address) -> tuple[bytes, Address] | None:
            return self._on_datagram(endpoint, data, addr)

        def on_shared(data: bytes, addr: Address) -> tuple[bytes, Address] | None:
            assert steering is not None
            home = steering.target(data)
            if home is not None and steering.relay(home, shared, addr, data):
                return None  # its home worker handles (and answers) it
            return self._on_datagram(endpoint, data, addr)

        callback = on_shared if steering is not None and shared >= 0 else on_datagram
        await endpoint.serve(callback, self._clients.on_unreachable)

    def _on_steered(self, index: int, data: bytes, addr: Address) -> tuple[bytes, Address] | None:
        """A datagram another worker received on shared endpoint ``index`` and passed here:
        handled as if this worker had received it there (never passed on again)."""
        if not 0 <= index < len(self._shared_udp):
            return None
        return self._on_datagram(self._shared_udp[index], data, addr)

    def _send_steered(self, index: int, data: bytes, dest: Address) -> None:
        self._shared_udp[index].send_nowait(data, dest)

    def _on_datagram(
        self, endpoint: UdpEndpoint, data: bytes, addr: Address
    ) -> tuple[bytes, Address] | None:
        """Handle one datagram synchronously; return an immediate answer and where to send it."""
        if data.startswith(b"SIP/2.0 2") and self._quick_2xx(data):
            return None
        try:
            message = parse(data)
        except SipParseError as exc:
            answer = self._malformed_answer(data, exc, addr)
            return None if answer is None else (answer, addr)
        if isinstance(message, Response):
            self._clients.on_response(message)
            return None
        source = Source("udp", addr[0], addr[1])
        if message.method == "ACK":
            self._acks += 1
            return None
        fix, rport = via_fix(message, source)
        dest = addr if rport else (addr[0], via_port(message))
        answer = self._servers.on_request(message, fix, source, UdpPeer(endpoint, dest))
        return None if answer is None else (answer, dest)

    def _quick_2xx(self, data: bytes) -> bool:
        """True when ``data`` was a 2xx to one of our client transactions, read and handled
        without a full parse (:func:`~imc_actors.sip.parse.quick_response`)."""
        quick = quick_response(data)
        if quick is None:
            return False
        code, reason, branch, method = quick
        return self._clients.on_quick_response(branch, method, code, reason)

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

    # ------------------------------------------------------------------ receiving: TCP, WS
    def _on_frame(self, data: bytes, conn: TcpConnection | WsConnection) -> bytes | None:
        """One message from a TCP connection or a WebSocket: parsed, then handed over like a
        datagram; the answer to send back at once on ``conn``, if any."""
        self._received += 1
        if data.startswith(b"SIP/2.0 2") and self._quick_2xx(data):
            return None
        try:
            message = parse(data)
        except SipParseError as exc:
            answer = self._malformed_answer(data, exc, conn.peer)
            if answer is not None:
                self._sent += 1
            return answer
        if isinstance(message, Response):
            self._clients.on_response(message)
            return None
        if message.method == "ACK":
            self._acks += 1
            return None
        source = conn.source
        fix, _ = via_fix(message, source)
        answer = self._servers.on_request(message, fix, source, conn)
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
        self._connections.closed(conn)
        self._clients.connection_lost(conn)

    async def _serve_ws(self, conn: WsConnection) -> None:
        """Read one accepted WebSocket until it ends; then what was sent over it and not yet
        answered gets 503, and the contacts registered over it are unreachable."""
        self._bindings.opened(conn)
        try:
            await conn.run(self._on_frame)
        finally:
            self._bindings.closed(conn)
            self._clients.connection_lost(conn)

    def bind_contacts(
        self, source: Source, aor: str, contacts: Sequence[tuple[str, int]], clear: bool
    ) -> None:
        """What an accepted REGISTER for ``aor`` (``user@host``, lower case) from ``source``
        changed: ``contacts`` as ``(contact URI as registered, seconds)`` (0 removed it);
        ``clear`` removed them all. Contacts registered over a TCP, TLS or WebSocket
        connection are reached over that connection while it is open (RFC 5626, RFC 7118);
        once it has closed, a WebSocket contact gets 480 at once and a TCP or TLS one a new
        connection to the address it names. No checkpoint."""
        self._bindings.bind(source, aor, contacts, clear, trio.current_time())

    # ------------------------------------------------------------------ timers
    async def _timer_loop(self) -> None:
        """The one timer task: fire due timers, sleep until the next deadline or a wake-up
        (at most once per :data:`~imc_actors.transport.timers.TICK`). Checkpoints every round;
        runs until cancelled."""
        timers = self._timers
        while True:
            now = trio.current_time()
            self._fire_timers(now)
            await timers.sleep(now)

    def _fire_timers(self, now: float) -> None:
        for _, _, fire, key, entry in self._timers.due(now):
            fire(key, entry, now)

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
        direct: bool = False,
    ) -> ClientResult:
        """Send a new out-of-dialog request and wait for its final outcome.

        Builds the request (own Via with a fresh branch and rport, ``From: <from_uri>;tag=``
        random, ``To: <to_uri>``, a new Call-ID unless given, ``CSeq: 1 <method>``,
        ``Max-Forwards: 70``, ``headers`` in order, Content-Type, Content-Length) and sends it
        to the next hop (spec §6): ``outbound_proxy``; else every contact ``locate`` returns
        for the Request-URI's AOR, in parallel, each as Request-URI (RFC 3261 retargeting;
        the best result wins, RFC 3261 §16.7); else the Request-URI's host (IP literal or DNS
        name, port 5060 by default). With ``direct`` always the last: the Request-URI's
        host, never the proxy (a node forwarding to another node). UDP with retransmissions (Timer E) up to Timer F; TCP
        when the URI says ``transport=tcp``, or when the message exceeds 1300 bytes and the hop
        accepts a TCP connection (else UDP).

        Returns the final response's code and reason; 408 on Timer F; 503 when the hop cannot
        be resolved or reached (``503 Destination Unreachable`` as soon as an ICMP port or host
        unreachable comes back for a UDP destination, Linux only). Never raises for network
        problems (RuntimeError when the transport is not running). Checkpoints; cancellation
        abandons the transaction (nothing more is sent).
        """
        return await self._clients.send_request(
            method, request_uri, from_uri=from_uri, to_uri=to_uri, headers=headers, body=body,
            content_type=content_type, call_id=call_id, direct=direct,
        )  # fmt: skip

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
        response, an ICMP unreachable, Timer F or shutdown ends the transaction); it must not
        block or raise. In every other case nothing is sent and False is returned: use
        :meth:`send_request`.
        Never checkpoints.
        """
        return self._clients.start_request(
            method, request_uri, from_uri=from_uri, to_uri=to_uri, on_result=on_result,
            headers=headers, body=body, content_type=content_type, call_id=call_id,
        )  # fmt: skip
