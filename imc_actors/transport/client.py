"""Client transactions: outgoing requests built, sent, retransmitted and matched to responses.

:meth:`ClientTransactions.send_request` builds a request, asks the :class:`Router` for its
targets (spec §6; several contacts are tried in parallel and the best result wins, RFC 3261
§16.7), picks the way per target (the TCP, TLS or WebSocket connection its contact was
registered over while that is open; else TLS for a ``sips:`` or ``transport=tls`` URI; TCP when
the URI says so, or for a message over :data:`TCP_THRESHOLD` bytes when the hop accepts a
connection; else UDP) and follows each client
transaction (Timers E, F and K on the transport's timer wheel) to its final result.
:meth:`ClientTransactions.start_request` is the task-free variant for the common case (one
IP-literal target over UDP). Responses are matched to their transaction by branch and method;
one that matches none is counted as stray. An ICMP port or host unreachable reported by a UDP
endpoint (:meth:`ClientTransactions.on_unreachable`) ends the UDP transactions to that
destination at once with 503 :data:`UNREACHABLE` instead of Timer F's 408.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import trio

from imc_actors.config import ListenAddress
from imc_actors.sip import (
    ClientTransaction,
    Response,
    build_request,
    client_key,
    new_branch,
    new_call_id,
    new_tag,
)

from .connections import Connections
from .limits import LogBudget
from .records import ClientResult
from .routing import NoRoute, NotRegistered, Router, Target, find_call_id_host, is_ip
from .tcp import TcpConnection
from .timers import LANE_FIRST_E, LANE_K, LANE_TCP_F, TimerWheel
from .udp import Address, UdpEndpoint
from .websocket import WsConnection

__all__ = [
    "TCP_THRESHOLD",
    "TransportStopped",
    "TIMEOUT",
    "UNAVAILABLE",
    "UNREACHABLE",
    "ClientEntry",
    "ClientTransactions",
    "better",
]

#: Lines a second about requests that cannot be sent (no route, no address, this server).
SEND_LOG_LINES = 20


class TransportStopped(RuntimeError):
    """A request was to be sent while the transport is not running (before it starts, or
    once it has stopped: a notice of the last moments of a shutdown)."""

log = logging.getLogger(__name__)

#: Messages larger than this go over TCP when the next hop accepts TCP (RFC 3261 §18.1.1).
TCP_THRESHOLD = 1300
TIMEOUT = ClientResult(408, "Request Timeout", local=True)
UNAVAILABLE = ClientResult(503, "Service Unavailable", local=True)
#: An ICMP port or host unreachable came back for the request's destination (over UDP).
UNREACHABLE = ClientResult(503, "Destination Unreachable", local=True)
#: A user of a domain we serve without a binding (never sent anywhere).
NOT_REGISTERED = ClientResult(480, "Temporarily Unavailable", local=True)
#: The next hop is one of our own sockets (never sent: it would loop).
SELF_TARGET = ClientResult(482, "Loop Detected", local=True)
#: A contact registered over a WebSocket that has closed (no other way to reach it).
WS_CLOSED = ClientResult(480, "Temporarily Unavailable", local=True)
#: A connection a request can go over.
Stream = TcpConnection | WsConnection
#: Via transport names by connection transport.
_VIA_TRANSPORT = {"tcp": "TCP", "tls": "TLS", "ws": "WS"}


class ClientEntry:
    """A client transaction, its way to retransmit, and the waiter for its outcome."""

    __slots__ = ("txn", "scheduled", "done", "result", "udp", "dest", "conn", "callback")

    def __init__(
        self,
        txn: ClientTransaction,
        udp: UdpEndpoint | None,
        dest: Address,
        conn: Stream | None,
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


def better(a: ClientResult, b: ClientResult) -> ClientResult:
    """The better of two branch outcomes (RFC 3261 §16.7, simplified): a 2xx wins, then a 6xx,
    then the lowest class; a response received beats a synthesised 408/503."""

    def rank(r: ClientResult) -> tuple[int, int, int]:
        cls = r.code // 100
        order = 0 if cls == 2 else 1 if cls == 6 else 2
        synthetic = 1 if r in (TIMEOUT, UNAVAILABLE, UNREACHABLE) else 0
        return (order, synthetic, r.code)

    return a if rank(a) <= rank(b) else b


class ClientTransactions:
    """The live client transactions of a transport and the outcome counters.

    ``timers`` is the transport's wheel (Timers E, F, K), ``router`` picks targets and local
    addresses, ``connections`` gives TCP connections. :meth:`open` starts a run, :meth:`close`
    ends it (pending requests get 503). The counters (``ok``, ``failed``, ``timeouts``,
    ``retransmissions``, ``stray``, ``absorbed``, ``sent``: requests written on TCP,
    ``unreachable``: transactions ended by an ICMP error, ``queue_full``: task-free sends
    declined for a full connection send queue) are read by
    :meth:`SipTransport.statistics <imc_actors.transport.SipTransport.statistics>`.
    """

    def __init__(
        self, timers: TimerWheel, router: Router, connections: Connections, mark: str = ""
    ) -> None:
        self._timers = timers
        self._mark = mark  # in every branch and Call-ID made here (see sip.new_mark)
        self._fire = self.on_timer  # one bound method, filed with every entry
        self._router = router
        self._connections = connections
        self._entries: dict[Any, ClientEntry] = {}
        self._nursery: trio.Nursery | None = None
        self._t1, self._t2, self._t4 = 0.5, 4.0, 5.0
        self._bound: Sequence[ListenAddress] = ()
        self._call_id_host_cache: str | None = None
        self.ok = 0
        self.failed = 0
        self.timeouts = 0
        self.retransmissions = 0
        self.stray = 0
        self.absorbed = 0
        self.sent = 0
        self.self_targets = 0
        #: Requests that cannot be sent (no route, a name that does not resolve, this server
        #: itself): a line each while they are few, a count of the rest in a flood.
        self._send_log = LogBudget(SEND_LOG_LINES)
        self.unreachable = 0
        self.queue_full = 0

    def __len__(self) -> int:
        """How many client transactions are live."""
        return len(self._entries)

    def open(
        self,
        nursery: trio.Nursery,
        bound: Sequence[ListenAddress],
        *,
        t1: float,
        t2: float,
        t4: float,
    ) -> None:
        """Start a run: requests may be sent; ``bound`` (filled as sockets are bound) gives
        the host of our Call-IDs."""
        self._nursery = nursery
        self._bound = bound
        self._call_id_host_cache = None
        self._t1, self._t2, self._t4 = t1, t2, t4

    def close(self) -> None:
        """End a run: every pending request gets 503; transactions go."""
        self._nursery = None
        for entry in self._entries.values():
            entry.finish(UNAVAILABLE)
        self._entries.clear()

    def connection_lost(self, conn: Stream) -> None:
        """``conn`` closed: requests sent over it and not yet answered get 503 at once (not
        at Timer F); their transactions are gone, and their timer filings skipped."""
        self._end([key for key, e in self._entries.items() if e.conn is conn], UNAVAILABLE)

    def on_unreachable(self, dest: Address) -> None:
        """An ICMP port or host unreachable says nobody listens at ``dest`` (ip, port); called
        by a UDP endpoint's receive loop, no checkpoint. Every live UDP client transaction to
        ``dest`` still without a final response ends now with 503 :data:`UNREACHABLE` (counted
        in ``unreachable``), not at Timer F; it is gone, and its timer filing is skipped.

        Scans the live transactions: ICMP errors are rare, and each one ends what it finds.
        """
        port = dest[1]
        found = [
            key
            for key, entry in self._entries.items()
            if entry.udp is not None
            and entry.dest[1] == port
            and _same_host(entry.dest[0], dest[0])
        ]
        self.unreachable += self._end(found, UNREACHABLE)

    def _end(self, keys: list[Any], result: ClientResult) -> int:
        """End the transactions of ``keys`` still without a final response with ``result``:
        they leave the table and their timer filings are skipped. How many it ended."""
        entries = self._entries
        ended = 0
        for key in keys:
            entry = entries.get(key)
            if entry is None or entry.result is not None:
                continue  # answered already, or a callback of an earlier one ended it
            del entries[key]
            entry.scheduled = None  # the timer wheel skips a filing no longer scheduled
            ended += 1
            entry.finish(result)
        return ended

    # ------------------------------------------------------------------ sending
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
        """:meth:`SipTransport.send_request <imc_actors.transport.SipTransport.send_request>`."""
        if self._nursery is None:
            raise TransportStopped("SipTransport is not running")
        try:
            targets = await self._targets(request_uri, direct=direct)
        except NotRegistered as exc:
            log.debug("not sending %s to %s: %s", method, request_uri, exc)
            await trio.lowlevel.checkpoint()
            self.failed += 1
            return NOT_REGISTERED
        except ValueError as exc:
            self._send_log.log(log, logging.WARNING, trio.current_time(),
                               "cannot route %s to %s: %s", method, request_uri, exc,
                               what="unsendable requests")  # fmt: skip
            await trio.lowlevel.checkpoint()
            self.failed += 1
            return UNAVAILABLE
        if call_id is None:
            call_id = new_call_id(self._call_id_host(), self._mark)
        from_tag = new_tag()

        async def attempt(target: Target) -> ClientResult:
            return await self._send_to_target(
                target, method, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
                call_id=call_id, headers=headers, body=body, content_type=content_type,
            )  # fmt: skip

        if len(targets) == 1:
            result = await self._send_to_target(
                targets[0], method, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
                call_id=call_id, headers=headers, body=body, content_type=content_type,
            )  # fmt: skip
        else:  # forked: the first 2xx ends it (RFC 3261 §16.7); else the best of all
            results: list[ClientResult] = []

            async def branch(target: Target, cancel: trio.CancelScope) -> None:
                outcome = await attempt(target)
                results.append(outcome)
                if outcome.ok:
                    cancel.cancel()  # a dead contact must not hold the delivery until Timer F

            async with trio.open_nursery() as nursery:
                for target in targets:
                    nursery.start_soon(branch, target, nursery.cancel_scope)
            result = results[0]
            for other in results[1:]:
                result = better(result, other)
        self._count_outcome(method, request_uri, result)
        return result

    async def _targets(self, request_uri: str, *, direct: bool = False) -> list[Target]:
        """The router's targets (``direct``: see ``Router.targets``); a user without a binding
        here is looked for once more with the router's ``find`` (another node may have
        registered it) before NotRegistered."""
        try:
            return self._router.targets(request_uri, direct=direct)
        except NotRegistered as exc:
            find = self._router.find
            if find is None or not await find(exc.aor):
                raise
        return self._router.targets(request_uri, direct=direct)

    def _count_outcome(self, method: str, request_uri: str, result: ClientResult) -> None:
        """Count one outgoing request's final outcome (and log a failure at debug level)."""
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1
            if result is TIMEOUT:
                self.timeouts += 1
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
        """:meth:`SipTransport.start_request <imc_actors.transport.SipTransport.start_request>`."""
        if self._nursery is None:
            return False
        router = self._router
        try:
            targets = router.targets(request_uri)
        except ValueError:
            return False
        # Everything is checked and built before anything is sent: declining after a send
        # would make send_request send it again.
        call_id = call_id or new_call_id(self._call_id_host(), self._mark)
        from_tag = new_tag()
        planned: list[tuple[str, bytes, UdpEndpoint | None, Address, Stream | None]] = []
        room: dict[int, int] = {}  # id(connection) -> bytes this request queues on it
        for target in targets:
            branch = new_branch(self._mark)
            build = _builder(
                method, target.request_uri, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
                call_id=call_id, branch=branch, headers=headers, body=body,
                content_type=content_type,
            )  # fmt: skip
            hop = target.hop
            conn: Stream | None = router.connection(target)  # type: ignore[assignment]
            if conn is None and hop.transport in ("tcp", "tls") and is_ip(hop.host):
                dest = (hop.host, hop.port)
                tls = hop.host if hop.transport == "tls" else None
                conn = None if router.is_self(dest) else self._connections.pooled(dest, tls=tls)
            if conn is not None:  # the registered connection, or an open one to the hop
                data = self._build_for(conn, build)
                size = room[id(conn)] = room.get(id(conn), 0) + len(data)
                if not conn.queue.has_room(size):
                    self.queue_full += 1
                    return False  # full: send_request waits for room
                planned.append((branch, data, None, conn.peer, conn))
                continue
            if hop.transport in ("tcp", "tls", "ws") or not is_ip(hop.host):
                return False  # a new connection or a DNS name: send_request awaits them
            udp = router.udp_for(socket.AF_INET6 if ":" in hop.host else socket.AF_INET)
            dest = (hop.host, hop.port)
            if udp is None or router.is_self(dest):
                return False
            data = build("UDP", router.via_address(udp, dest))
            if hop.transport is None and len(data) > TCP_THRESHOLD:
                return False
            planned.append((branch, data, udp, dest, None))
        if not self._transmit(planned[0]):
            return False

        if len(planned) == 1:

            def finished(result: ClientResult) -> None:
                self._count_outcome(method, request_uri, result)
                on_result(result)

        else:  # forked: the first 2xx is the outcome, else the best once every branch is done
            outcomes: list[ClientResult] = []
            reported = False

            def finished(result: ClientResult) -> None:
                nonlocal reported
                outcomes.append(result)
                if reported:
                    return
                if result.ok or len(outcomes) == len(planned):
                    reported = True
                    best = result
                    for other in outcomes:
                        best = better(best, other)
                    self._count_outcome(method, request_uri, best)
                    on_result(best)

        now = trio.current_time()
        for index, plan in enumerate(planned):
            if index and not self._transmit(plan):
                finished(UNAVAILABLE)
                continue
            branch, data, udp, dest, conn = plan
            reliable = conn is not None
            txn = ClientTransaction(data, reliable, now, t1=self._t1, t2=self._t2, t4=self._t4)
            entry = ClientEntry(txn, udp, dest, conn, finished)
            key = (branch, method)
            self._entries[key] = entry
            self._schedule(key, entry, txn.deadline())  # Timer F only when reliable
        return True

    def _transmit(
        self, plan: tuple[str, bytes, UdpEndpoint | None, Address, Stream | None]
    ) -> bool:
        """Hand one planned request of :meth:`start_request` to its socket without waiting:
        a datagram sent, or a message queued on its connection. False when it was not."""
        _, data, udp, dest, conn = plan
        if conn is not None:
            if not conn.try_send(data):
                return False
            self.sent += 1
            return True
        assert udp is not None
        try:
            udp.sendto(data, dest)  # retries a stale ICMP error once
        except OSError:  # a full buffer, or an error send_request reports in its own way
            return False
        udp.sent += 1
        return True

    def _build_for(self, conn: Stream, build: Builder) -> bytes:
        """The request ``build`` makes for sending over ``conn``: its Via names our listener
        of the connection's transport (TCP, TLS), or a WebSocket's ``.invalid`` host without
        a port (RFC 7118 §5)."""
        if isinstance(conn, TcpConnection):
            family = socket.AF_INET6 if ":" in conn.local[0] else socket.AF_INET
            via: tuple[str, int | None] = self._router.tcp_via(family, conn)
        else:
            via = (conn.via_host, None)
        return build(getattr(conn, "via_transport", None) or _VIA_TRANSPORT[conn.transport], via)

    async def _send_to_target(
        self,
        target: Target,
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
        router = self._router
        branch = new_branch(self._mark)
        build = _builder(
            method, target.request_uri, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
            call_id=call_id, branch=branch, headers=headers, body=body, content_type=content_type,
        )  # fmt: skip
        # RFC 5626 / RFC 7118: over the connection the contact registered on, while it is open
        registered: Stream | None = router.connection(target)  # type: ignore[assignment]
        if registered is not None:
            data = self._build_for(registered, build)
            return await self._run_client(data, (branch, method), None, registered.peer, registered)
        if target.hop.transport == "ws":  # a browser: no other way to reach it
            await trio.lowlevel.checkpoint()
            return WS_CLOSED
        try:
            hop = target.hop
            if is_ip(hop.host):  # no name to resolve: no checkpoint (send_request waits anyway)
                family = socket.AF_INET6 if ":" in hop.host else socket.AF_INET
                dest = (hop.host, hop.port)
            else:
                family, dest = await router.resolve(hop)
        except NoRoute as exc:
            self._send_log.log(log, logging.WARNING, trio.current_time(),
                               "cannot send %s to %s: %s", method, target.request_uri, exc,
                               what="unsendable requests")  # fmt: skip
            return UNAVAILABLE
        if router.is_self(dest):
            self.self_targets += 1
            self._send_log.log(
                log, logging.WARNING, trio.current_time(),
                "not sending %s to %s: %s:%d is this server", method, target.request_uri, *dest,
                what="unsendable requests",
            )  # fmt: skip
            return SELF_TARGET
        udp = router.udp_for(family)
        if target.hop.transport == "tls":  # sips: or transport=tls: TLS or nothing
            conn = await self._connections.get(dest, required=True, tls=target.hop.host)
            if conn is None:
                return UNAVAILABLE
            via = router.tcp_via(family, conn)
            return await self._run_client(build("TLS", via), (branch, method), None, dest, conn)
        data = build("UDP", router.via_address(udp, dest)) if udp is not None else b""
        want_tcp = target.hop.transport == "tcp" or udp is None
        try_tcp = not want_tcp and target.hop.transport is None and len(data) > TCP_THRESHOLD
        if want_tcp or try_tcp:
            conn = await self._connections.get(dest, required=want_tcp)
            if conn is not None:
                via = router.tcp_via(family, conn)
                return await self._run_client(build("TCP", via), (branch, method), None, dest, conn)
            if want_tcp:
                return UNAVAILABLE
            log.debug("%s:%d refuses TCP; sending %d bytes over UDP", dest[0], dest[1], len(data))
        assert udp is not None
        return await self._run_client(data, (branch, method), udp, dest, None)

    async def _run_client(
        self,
        data: bytes,
        key: tuple[str, str],
        udp: UdpEndpoint | None,
        dest: Address,
        conn: Stream | None,
    ) -> ClientResult:
        """Send ``data`` and wait for the client transaction's outcome. ``key`` is what
        :func:`client_key` gives its responses: ``(branch, method)``. Checkpoints."""
        now = trio.current_time()
        txn = ClientTransaction(data, conn is not None, now, t1=self._t1, t2=self._t2, t4=self._t4)
        entry = ClientEntry(txn, udp, dest, conn)
        self._entries[key] = entry
        self._schedule(key, entry, txn.deadline())
        try:
            if conn is not None:
                sent = await conn.send(data)
                if sent:
                    self.sent += 1
            else:
                assert udp is not None
                sent = await udp.send(data, dest)
            if not sent:
                entry.finish(UNAVAILABLE)
            assert entry.done is not None
            await entry.done.wait()
        finally:
            if entry.result is None or entry.result is UNAVAILABLE:
                if self._entries.get(key) is entry:
                    del self._entries[key]
        assert entry.result is not None
        return entry.result

    def _call_id_host(self) -> str:
        if self._call_id_host_cache is not None and self._bound:
            return self._call_id_host_cache
        self._call_id_host_cache = find_call_id_host(self._bound)
        return self._call_id_host_cache

    # ------------------------------------------------------------------ responses and timers
    def on_response(self, response: Response) -> None:
        """Match a response to its client transaction (no checkpoint); a final one ends the
        request's wait, a repeated final one is absorbed, one matching nothing is stray."""
        try:
            key = client_key(response)
        except ValueError:
            key = None
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            self.stray += 1
            log.debug("stray response %d for Call-ID %s", response.code, response.call_id)
            return
        self._settle(key, entry, response.code, response.reason, _challenges(response))

    def on_quick_response(self, branch: str, method: str, code: int, reason: str) -> bool:
        """:meth:`on_response` for a 2xx read by :func:`~imc_actors.sip.parse.quick_response`;
        False (nothing done) when it matches no client transaction: the caller then parses
        it whole and hands it to :meth:`on_response`, which counts and logs a stray."""
        key = (branch, method)
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._settle(key, entry, code, reason, ())
        return True

    def _settle(
        self, key: Any, entry: ClientEntry, code: int, reason: str, challenges: tuple[str, ...]
    ) -> None:
        now = trio.current_time()
        already_final = entry.result is not None
        entry.txn.on_response(code, now, reason)
        if code >= 200:
            if already_final:
                self.absorbed += 1
            else:
                entry.finish(ClientResult(code, reason, challenges))
        if entry.txn.state == "terminated":
            if self._entries.get(key) is entry:
                del self._entries[key]
        else:
            self._schedule(key, entry, entry.txn.deadline())

    def _schedule(self, key: Any, entry: ClientEntry, deadline: float | None) -> None:
        """File ``entry``'s next timer: Timer K, a first Timer E or F over TCP in their lanes
        (each arrives in order), a later Timer E in the heap."""
        txn = entry.txn
        if txn.state == "completed":
            lane: int | None = LANE_K
        elif txn.retransmissions == 0:
            lane = LANE_FIRST_E if not txn.reliable else LANE_TCP_F
        else:
            lane = None
        self._timers.schedule(lane, self._fire, key, entry, deadline)

    def on_timer(self, key: Any, entry: ClientEntry, now: float) -> None:
        """A filing of ``entry`` is due (from the timer task): Timer E resends over UDP, Timer F
        ends the request with 408, Timer K ends the transaction."""
        entries = self._entries
        if entries.get(key) is not entry:
            return
        txn: ClientTransaction = entry.txn
        resend = txn.on_timer(now)  # does nothing before its deadline
        if resend is not None and entry.udp is not None:
            self.retransmissions += 1
            entry.udp.send_nowait(resend, entry.dest)
        if txn.state != "terminated":
            self._schedule(key, entry, txn.deadline())
            return
        del entries[key]
        if entry.result is not None:
            return  # Timer K after a final response: its outcome was reported then
        if txn.timed_out:
            entry.finish(TIMEOUT)
        else:
            entry.finish(ClientResult(txn.final_code or 408, txn.final_reason or "Request Timeout"))


#: ``build(via_transport, (via host, via port or None)) -> bytes``: one request, for one way.
Builder = Callable[[str, tuple[str, "int | None"]], bytes]


def _builder(
    method: str,
    request_uri: str,
    *,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    call_id: str,
    branch: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    content_type: str | None,
) -> Builder:
    """What builds the request of one client transaction once its way (Via) is known."""

    def build(via_transport: str, via: tuple[str, int | None]) -> bytes:
        return build_request(
            method, request_uri, from_uri=from_uri, from_tag=from_tag, to_uri=to_uri,
            call_id=call_id, cseq=1, via_host=via[0], via_port=via[1],
            via_transport=via_transport, branch=branch, headers=headers, body=body,
            content_type=content_type,
        )  # fmt: skip

    return build


def _same_host(a: str, b: str) -> bool:
    """True when IP literals ``a`` and ``b`` name one address (``::1`` and ``0::1`` do)."""
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _challenges(response: Response) -> tuple[str, ...]:
    """The digest challenges of a 401/407 (what a UAC needs to answer it)."""
    if response.code == 401:
        return tuple(response.header_list("WWW-Authenticate"))
    if response.code == 407:
        return tuple(response.header_list("Proxy-Authenticate"))
    return ()
