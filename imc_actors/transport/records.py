"""The records :class:`~imc_actors.transport.SipTransport` speaks in.

What a handler is given (:class:`Source`) and answers (:class:`Reply`), the handler shapes
(:data:`Handler`, :class:`StartHandler` and its :data:`Responder`), the outcome of an outgoing
request (:class:`ClientResult`) and the counters snapshot (:class:`TransportStatistics`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from imc_actors.sip import Request

__all__ = [
    "ClientResult",
    "Handler",
    "Reply",
    "Responder",
    "Source",
    "StartHandler",
    "TransportStatistics",
]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: ``transport`` is ``udp``, ``tcp``, ``tls`` or ``ws``; the
    peer's host and port (for ``tcp``, ``tls`` and ``ws``, they name the connection)."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler answers: status ``code``, ``reason`` (None = the RFC phrase), extra
    ``headers`` in order, ``body`` and its ``content_type`` (text/plain when a body has none).
    ``after`` is called once the response has been handed to the socket (the server releases
    the notices a request caused then, so the answer is on the wire first); a hook that
    raises is logged."""

    code: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str | None = None
    after: Callable[[], None] | None = None


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
    error, TCP connection lost), or 503 ``Destination Unreachable`` when an ICMP port or host
    unreachable came back for its UDP destination. ``challenges`` holds the
    ``WWW-Authenticate`` (401) or ``Proxy-Authenticate`` (407) values of a final response that
    asks for digest credentials, in order (empty otherwise). ``local``: made here, not by
    the next hop (a timeout, an unreachable or unknown destination): nobody answered.
    """

    code: int
    reason: str
    challenges: tuple[str, ...] = ()
    local: bool = field(default=False, compare=False)

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
    ``server_transactions`` / ``client_transactions`` / ``tcp_connections`` /
    ``ws_connections``: live now;
    ``loops``: requests refused 482 because they carried one of our own Via branches;
    ``self_targets``: outgoing requests not sent because their next hop was this server;
    ``dns_timeouts``: outgoing requests not sent because their next hop's name got no answer
    within ``dns_timeout``;
    ``merged``: requests refused 482 as merged (RFC 3261 §8.2.2.2: the same Call-ID, CSeq and
    From tag as a live transaction, on another branch);
    ``client_unreachable``: client transactions over UDP ended 503 by an ICMP port or host
    unreachable (before Timer F; also counted in ``client_failed`` unless another fork won); ``throttled``: new requests answered
    503 + ``Retry-After`` because their source was over its flood budget; ``vias_refused``:
    requests refused 483 for carrying more than ``max_vias`` Via header fields;
    ``transaction_bytes``: bytes of responses the live server transactions keep now;
    ``tcp_refused``: accepted TCP connections closed at once (``tcp_max_connections`` or
    ``tcp_max_per_ip`` reached); ``tcp_outgoing_refused``: outgoing TCP/TLS connections not
    opened because ``tcp_max_outgoing`` were open or opening; ``tcp_accept_failures``: accepts that failed for lack of
    file descriptors or memory (retried); ``tls_connections``: TLS connections live now (also
    in ``tcp_connections``); ``tls_handshake_failures``: accepted TLS connections closed
    because their handshake failed or took too long; ``send_queued``: bytes waiting in the
    send queues of the TCP, TLS and WebSocket connections now (``tcp_send_queue`` each);
    ``send_queue_full``: task-free sends declined because a connection's queue was full (each
    went the awaited way instead). ``steered``: datagrams passed to their room's home worker
    (``serve --workers N``, :mod:`.steering`); ``steered_in``: datagrams another worker passed
    here; ``steer_fallbacks``: datagrams handled here because the home worker's relay socket
    was gone or full.
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
    loops: int = 0
    self_targets: int = 0
    dns_timeouts: int = 0
    merged: int = 0
    client_unreachable: int = 0
    throttled: int = 0
    vias_refused: int = 0
    transaction_bytes: int = 0
    tcp_refused: int = 0
    tcp_outgoing_refused: int = 0
    tcp_accept_failures: int = 0
    send_queued: int = 0
    send_queue_full: int = 0
    ws_connections: int = 0
    tls_connections: int = 0
    tls_handshake_failures: int = 0
    steered: int = 0
    steered_in: int = 0
    steer_fallbacks: int = 0
