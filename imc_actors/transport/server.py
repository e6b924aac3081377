"""Server transactions: incoming requests matched, answered once, retransmissions absorbed.

A request is matched to its server transaction (RFC 3261 §17.2.3) so a retransmission is
answered from the transaction and never reaches the handler twice; a new request gets a
transaction and one handler task, whose :class:`Reply` becomes the response kept for
retransmissions. At most ``max_transactions`` server transactions live at once, keeping at
most ``max_transaction_bytes`` of responses between them: beyond either a new request is
answered 503 with ``Retry-After`` at once, statelessly, and never reaches the handler. So is a
new request from a source over its flood budget (:class:`~.limits.FloodLimiter`). A request
with more than ``max_vias`` Via header fields gets 483 before anything else (its answer would
copy them all, and be kept). A CANCEL matching a live transaction gets 200 (RFC 3261 §9.2).

A handler may also offer ``start(request, source, respond) -> bool`` (:class:`StartHandler`):
for a request over UDP :class:`ServerTransactions` tries it first, and when it returns True no
task is started; the handler calls ``respond(reply)`` once, later or at once, from the Trio
thread. That saves a task per request on the hot path (a command queued to a room actor that
answers by callback); anything ``start`` declines goes to a handler task as before.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import trio

from imc_actors.sip import (
    Request,
    ServerTransaction,
    build_response,
    is_own_branch,
    new_tag,
    server_key,
)

from .limits import FloodLimiter, LogInterval
from .records import Handler, Reply, Responder, Source
from .routing import ViaFix, patch_via
from .timers import LANE_J, TimerWheel
from .udp import Address, UdpEndpoint

__all__ = ["ServerEntry", "ServerTransactions", "Sender", "UdpPeer"]

log = logging.getLogger(__name__)

#: Retry-After (seconds) of the 503 a new request gets while ``max_transactions`` are live.
REFUSED_RETRY_AFTER = (("Retry-After", "1"),)
#: The "limit reached" warnings are logged at most once per this many seconds.
REFUSED_LOG_INTERVAL = 1.0
#: Reason phrase of the 483 a request with more than ``max_vias`` Via header fields gets.
TOO_MANY_VIAS = "Too Many Hops (Via)"
#: Methods a CANCEL may target (RFC 3261 §9.2 matching ignores the method otherwise).
_CANCELLABLE = (
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
)


class Sender(Protocol):
    """Where the responses to one request go: a :class:`UdpPeer`, a TCP connection or a
    WebSocket. ``try_send`` sends (or queues, in order) without waiting: False when it
    could not."""

    async def send(self, data: bytes) -> bool: ...

    def try_send(self, data: bytes) -> bool: ...


class UdpPeer:
    """Where responses to one UDP request go."""

    __slots__ = ("endpoint", "dest")

    def __init__(self, endpoint: UdpEndpoint, dest: Address) -> None:
        self.endpoint = endpoint
        self.dest = dest

    async def send(self, data: bytes) -> bool:
        return await self.endpoint.send(data, self.dest)

    def try_send(self, data: bytes) -> bool:
        return self.endpoint.send_nowait(data, self.dest)  # a lost datagram: the client resends


class ServerEntry:
    """A server transaction plus the deadline it is filed under in the timer wheel."""

    __slots__ = ("txn", "scheduled", "merge", "kept")

    def __init__(self, txn: ServerTransaction) -> None:
        self.txn = txn
        self.scheduled: float | None = None
        self.merge: tuple[Any, ...] | None = None  # its key in ServerTransactions._merge
        self.kept = 0  # bytes of the response it keeps for retransmissions


class ServerTransactions:
    """The live server transactions of a transport and the handler they dispatch to.

    ``timers`` is the transport's wheel (Timer J). :meth:`open` starts a run, :meth:`close`
    ends it. ``kept_bytes`` is the size of the responses the live transactions keep. The
    counters (``requests``, ``refused``, ``vias_refused``, ``absorbed``, ``handler_errors``
    and ``sent``, the responses written or queued on TCP and WebSocket) are read by
    :meth:`SipTransport.statistics <imc_actors.transport.SipTransport.statistics>`.
    """

    def __init__(self, timers: TimerWheel, mark: str = "") -> None:
        self._timers = timers
        self._mark = mark  # in every branch our client side makes: a request carrying it looped
        self._fire = self.on_timer  # one bound method, filed with every entry
        self._entries: dict[Any, ServerEntry] = {}
        # (Call-ID, CSeq, method, From tag, R-URI, body) of live out-of-dialog transactions -> key
        self._merge: dict[tuple[Any, ...], Any] = {}
        self._nursery: trio.Nursery | None = None
        self._handler: Handler | None = None
        self._start_handler: Callable[[Request, Source, Responder], bool] | None = None
        self._t1 = 0.5
        self._max_transactions = 100_000
        self._max_bytes = 256 * 1024 * 1024
        self._max_vias = 16
        self._flood: FloodLimiter | None = None
        self._refused_log = LogInterval(REFUSED_LOG_INTERVAL)
        self._bytes_log = LogInterval(REFUSED_LOG_INTERVAL)
        self._flood_log = LogInterval(REFUSED_LOG_INTERVAL)
        self.kept_bytes = 0
        self.requests = 0
        self.vias_refused = 0
        self.loops = 0
        self.merged = 0
        self.refused = 0
        self.absorbed = 0
        self.handler_errors = 0
        self.sent = 0

    def __len__(self) -> int:
        """How many server transactions are live."""
        return len(self._entries)

    def open(
        self,
        nursery: trio.Nursery,
        handler: Handler,
        *,
        t1: float,
        max_transactions: int,
        max_bytes: int = 256 * 1024 * 1024,
        max_vias: int = 16,
        flood: FloodLimiter | None = None,
    ) -> None:
        """Start a run: handler tasks go to ``nursery``; ``handler.start`` is used if it has one.
        ``max_bytes``: most bytes of responses kept by live transactions; ``max_vias``: most
        Via header fields a request may carry; ``flood``: the per-source budget, or None."""
        self._nursery = nursery
        self._handler = handler
        self._start_handler = getattr(handler, "start", None)
        self._t1 = t1
        self._max_transactions = max_transactions
        self._max_bytes = max_bytes
        self._max_vias = max_vias
        self._flood = flood

    def close(self) -> None:
        """End a run: ``respond`` callbacks still outstanding do nothing; transactions go."""
        self._nursery = None
        self._entries.clear()
        self._merge.clear()
        self.kept_bytes = 0

    def on_request(
        self, request: Request, fix: ViaFix, source: Source, sender: Sender
    ) -> bytes | None:
        """Match ``request`` to a server transaction (no checkpoint).

        A request with more than ``max_vias`` Via header fields gets a stateless 483 first. A
        retransmission returns the transaction's last response (None while the handler still
        works); a new request gets a transaction and goes to the handler's ``start`` (when it
        has one and takes it) or a handler task, or, while
        ``max_transactions`` transactions are live or their kept responses reach
        ``max_bytes``, or while its source is over its flood budget, an immediate stateless
        503 with ``Retry-After`` (returned, like every answer sent at once). ``fix`` is the
        received/rport rewrite of the top Via that responses get.
        """
        vias, looped = self._vias(request)
        if vias > self._max_vias:
            self.vias_refused += 1
            return patch_via(build_response(request, 483, TOO_MANY_VIAS, to_tag=new_tag()), fix)
        now = trio.current_time()
        key = server_key(request)
        entry = self._entries.get(key)
        if entry is not None:
            self.absorbed += 1
            return entry.txn.on_retransmission(now)
        if self._flood is not None:
            blocked = self._flood.allow(source.host, now)
            if blocked:
                return self._throttle(request, fix, source, blocked, now)
        if looped:
            # One of our own requests came back (a proxy routed it to us): 482, statelessly,
            # and it reaches no handler, so it can cause nothing (RFC 3261 §16.3 step 4).
            self.loops += 1
            return patch_via(build_response(request, 482, to_tag=new_tag()), fix)
        # RFC 3261 §8.2.2.2 matches on From tag, Call-ID and CSeq alone; the Request-URI and
        # body are added so that clients that reuse one CSeq for different requests (SIPp
        # scenarios do) are not refused: a real merged copy is identical in both.
        merge = (
            request.call_id,
            request.cseq,
            request.method,
            request.from_tag,
            request.uri,
            hash(request.body),
        )
        if request.to_tag is None and merge in self._merge:
            # The same request on another branch: it forked and came back to us by two paths
            # (RFC 3261 §8.2.2.2). Answered once; the copy gets 482 and is not relayed again.
            self.merged += 1
            return patch_via(
                build_response(request, 482, "Loop Detected (merged request)", to_tag=new_tag()),
                fix,
            )
        if len(self._entries) >= self._max_transactions:
            return self._refuse(request, fix, now)
        if self.kept_bytes >= self._max_bytes:
            return self._refuse(request, fix, now, memory=True)
        # Timer J runs 64*T1 on TCP too (RFC 3261 says 0 there): a request repeated over a new
        # connection, or over UDP after TCP, is still answered from the transaction, so a chat
        # line is never relayed twice (spec §5).
        entry = ServerEntry(ServerTransaction(False, now, t1=self._t1))
        self._entries[key] = entry
        # its response counts from now (what it echoes: the Vias, From, To, Call-ID, CSeq),
        # so a burst of requests admitted together cannot overshoot max_bytes once answered
        entry.kept = _echoed_size(request)
        self.kept_bytes += entry.kept
        if request.to_tag is None and request.method != "CANCEL":
            entry.merge = merge
            self._merge[merge] = key
        if request.method == "CANCEL" and self._cancel_matches(request):
            # RFC 3261 §9.2: a CANCEL matching a (non-INVITE) transaction gets 200 and has no
            # effect on it; an unmatched CANCEL goes to the handler (481).
            data = patch_via(build_response(request, 200, to_tag=new_tag()), fix)
            self._respond(key, entry, data, 200)
            return data
        self.requests += 1
        if self._start_handler is not None:
            if self._start(request, fix, source, key, entry, sender):
                return None
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_request, request, fix, source, key, entry, sender)
        return None

    def _vias(self, request: Request) -> tuple[int, bool]:
        """How many Via header fields ``request`` has (each of a comma-separated list counted),
        and whether one holds a branch our client side made (it looped)."""
        mark = self._mark
        count = 0
        looped = False
        for name, value in request.headers:
            if name == "Via":
                count += 1 + value.count(",")
                if mark and not looped:
                    looped = is_own_branch(value, mark)
        return count, looped

    def _refuse(self, request: Request, fix: ViaFix, now: float, *, memory: bool = False) -> bytes:
        """The stateless 503 + ``Retry-After`` for a new request beyond ``max_transactions``,
        or (``memory``) once the kept responses reach ``max_bytes`` (no transaction, no
        handler: a retransmission is refused again, or served once there is room). Logged at
        most once per second."""
        self.refused += 1
        if memory:
            if self._bytes_log.due(now):
                log.warning(
                    "server transaction memory limit %d bytes reached: answering 503",
                    self._max_bytes,
                )
        elif self._refused_log.due(now):
            log.warning(
                "server transaction limit %d reached: answering 503", self._max_transactions
            )
        data = build_response(request, 503, to_tag=new_tag(), headers=REFUSED_RETRY_AFTER)
        return patch_via(data, fix)

    def _throttle(
        self, request: Request, fix: ViaFix, source: Source, blocked: float, now: float
    ) -> bytes:
        """The stateless 503 + ``Retry-After`` (the seconds its source stays blocked) for a new
        request from a source over its flood budget. Logged at most once per second."""
        if self._flood_log.due(now):
            assert self._flood is not None
            log.warning(
                "source %s over flood_rate %g/s (burst %d): throttled for %.0f s",
                source.host,
                self._flood.rate,
                self._flood.burst,
                blocked,
            )
        retry = (("Retry-After", str(max(1, math.ceil(blocked)))),)
        data = build_response(request, 503, to_tag=new_tag(), headers=retry)
        return patch_via(data, fix)

    def _start(
        self,
        request: Request,
        fix: ViaFix,
        source: Source,
        key: Any,
        entry: ServerEntry,
        peer: Sender,
    ) -> bool:
        """Offer a request to the handler's ``start`` (no task); False when it declines.

        Over a connection too: requests read from one connection are taken in the order they
        came (a batch of handler tasks runs in either order). The response is queued on the
        connection at once; when its queue is full, a task waits for room."""

        def respond(reply: Reply) -> None:
            nursery = self._nursery
            if nursery is None or entry.txn.state not in ("trying", "proceeding"):
                return  # the transport has stopped, or this request was answered already
            data, code = self._response_bytes(request, reply)
            data = patch_via(data, fix)
            self._respond(key, entry, data, code)
            if type(peer) is UdpPeer:
                peer.try_send(data)
            elif peer.try_send(data):
                self.sent += 1
            elif not getattr(peer, "closed", False):
                nursery.start_soon(self._send_later, peer, data, reply)
                return
            _after(reply)

        assert self._start_handler is not None
        try:
            return self._start_handler(request, source, respond)
        except Exception:
            self.handler_errors += 1
            log.exception("handler failed for %s %s from %s", request.method, request.uri, source)
            respond(Reply(500))
            return True

    async def _send_later(self, sender: Sender, data: bytes, reply: Reply) -> None:
        """A started request's response whose connection queue was full: sent once there is
        room (the connection's writer bounds the wait)."""
        try:
            if await sender.send(data):
                self.sent += 1
        finally:
            _after(reply)

    def _cancel_matches(self, cancel: Request) -> bool:
        for method in _CANCELLABLE:
            original = dataclasses.replace(cancel, method=method, cseq_method=method)
            if server_key(original) in self._entries:
                return True
        return False

    async def _serve_request(
        self,
        request: Request,
        fix: ViaFix,
        source: Source,
        key: Any,
        entry: ServerEntry,
        sender: Sender,
    ) -> None:
        """One request's task: run the handler, build and send its response.

        A handler that raises is logged and answered 500. Cancellation (shutdown) abandons the
        request without an answer.
        """
        assert self._handler is not None
        try:
            reply = await self._handler(request, source)
        except Exception:
            self.handler_errors += 1
            log.exception("handler failed for %s %s from %s", request.method, request.uri, source)
            reply = Reply(500)
        data, code = self._response_bytes(request, reply)
        data = patch_via(data, fix)
        self._respond(key, entry, data, code)
        try:
            if await sender.send(data) and not isinstance(sender, UdpPeer):
                self.sent += 1
        finally:
            _after(reply)

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
            self.handler_errors += 1
            log.exception("bad reply %r to %s %s", reply, request.method, request.uri)
            return build_response(request, 500, to_tag=new_tag()), 500

    def _respond(self, key: Any, entry: ServerEntry, data: bytes, code: int) -> None:
        """Record the final response in the transaction and file its Timer J."""
        now = trio.current_time()
        entry.txn.respond(data, code, now)
        if entry.txn.state == "terminated":
            self._forget(key, entry)
            return
        if self._entries.get(key) is entry:  # still live: it keeps these bytes until Timer J
            self.kept_bytes += len(data) - entry.kept
            entry.kept = len(data)
        self._timers.schedule(LANE_J, self._fire, key, entry, entry.txn.deadline())

    def _forget(self, key: Any, entry: ServerEntry) -> None:
        """Drop an ended transaction (and its merge key)."""
        if self._entries.get(key) is entry:
            del self._entries[key]
            self.kept_bytes -= entry.kept
            entry.kept = 0
        if entry.merge is not None and self._merge.get(entry.merge) == key:
            del self._merge[entry.merge]

    def on_timer(self, key: Any, entry: ServerEntry, now: float) -> None:
        """A filing of ``entry`` is due (from the timer task): Timer J ends the transaction."""
        entries = self._entries
        if entries.get(key) is not entry:
            return
        txn = entry.txn
        txn.on_timer(now)  # does nothing before its deadline
        if txn.state == "terminated":
            self._forget(key, entry)
        else:
            self._timers.schedule(LANE_J, self._fire, key, entry, txn.deadline())


#: The headers a response copies from its request (RFC 3261 §8.2.6.2).
_ECHOED = frozenset(("Via", "From", "To", "Call-ID", "CSeq"))


def _echoed_size(request: Request) -> int:
    """About the size of the response to ``request`` before it is built: the headers it
    copies, plus a status line and Content-Length."""
    return 128 + sum(len(name) + len(value) + 4 for name, value in request.headers if name in _ECHOED)


def _after(reply: object) -> None:
    """Run a :class:`Reply`'s ``after`` hook once its response is sent (logged if it raises)."""
    after = getattr(reply, "after", None)
    if after is not None:
        try:
            after()
        except Exception:
            log.exception("after-response hook %r raised", after)
