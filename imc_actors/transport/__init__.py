"""Trio transports for SIP: UDP, TCP, TLS and WebSocket endpoints driving the pure :mod:`imc_actors.sip`
layer.

The public surface is :class:`SipTransport` (server and client transactions, dispatch to a
:data:`Handler`, next-hop selection) and the small records it speaks in. Inside, one module
per job: ``endpoint`` (SipTransport: sockets, parsing, wiring), ``server`` and ``client``
(the two sides' transactions), ``timers``, ``routing``, ``connections`` (TCP pool),
``records``, ``bindings`` (the contacts registered over each connection), and the socket
layers ``udp``, ``tcp``, ``tls`` and ``websocket`` (RFC 7118).
"""

from .endpoint import SipTransport
from .records import (
    ClientResult,
    Handler,
    Reply,
    Responder,
    Source,
    StartHandler,
    TransportStatistics,
)
from .routing import Hop, parse_hop

__all__ = [
    "ClientResult",
    "Handler",
    "Hop",
    "Reply",
    "Responder",
    "SipTransport",
    "Source",
    "StartHandler",
    "TransportStatistics",
    "parse_hop",
]
