"""Trio transports for SIP: UDP and TCP endpoints driving the pure :mod:`imc_actors.sip` layer.

The public surface is :class:`SipTransport` (server and client transactions, dispatch to a
:data:`Handler`, next-hop selection) and the small records it speaks in.
"""

from .endpoint import (
    ClientResult,
    Handler,
    Hop,
    Reply,
    Responder,
    SipTransport,
    Source,
    StartHandler,
    TransportStatistics,
    parse_hop,
)

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
