"""Helpers shared by the end-to-end tests: the test user agent and an in-process SIP server."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from imc_actors.config import Config, ListenAddress
from imc_actors.registrar import Registrar
from imc_actors.sip import Request, Response, parse
from imc_actors.sipcore import SipCore
from imc_actors.transport import Handler, Reply, SipTransport, Source

from .ua import SipTimeout, TestUA

__all__ = [
    "CoreServer",
    "RecordingHandler",
    "SipTimeout",
    "TestUA",
    "free_port",
    "response_of",
    "silent_udp",
    "start_core",
]


def response_of(data: bytes) -> Response:
    """Parse ``data`` and check that it is a response (what a test UA got back)."""
    message = parse(data)
    assert isinstance(message, Response)
    return message


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port number free right now for ``kind`` on ``host`` (bind to 0, read, close): nobody
    listens there, so over UDP the kernel answers what is sent there with ICMP port
    unreachable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def silent_udp(host: str = "127.0.0.1") -> socket.socket:
    """A bound UDP socket that is never read: what is sent there goes unanswered and, unlike a
    closed port's, draws no ICMP error, so a request to it runs into Timer F. Use as a
    context manager (``with silent_udp() as hole: port = hole.getsockname()[1]``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@dataclass
class RecordingHandler:
    """A placeholder MESSAGE handler: records each call and answers ``code`` (202 by default).

    ``calls`` holds ``(request, source)`` in arrival order.
    """

    code: int = 202
    calls: list[tuple[Request, Source]] = field(default_factory=list)

    async def __call__(self, request: Request, source: Source) -> Reply:
        self.calls.append((request, source))
        await trio.lowlevel.checkpoint()
        return Reply(self.code)


@dataclass
class CoreServer:
    """A running SipTransport + SipCore (+ Registrar) inside a test's nursery."""

    transport: SipTransport
    core: SipCore
    registrar: Registrar | None
    messages: Handler
    config: Config

    def address(self, transport: str = "udp") -> tuple[str, int]:
        """``(host, port)`` of the first bound address of ``transport``."""
        for bound in self.transport.bound:
            if bound.transport == transport:
                return bound.host, bound.port
        raise LookupError(f"no {transport} listener")


async def start_core(
    nursery: trio.Nursery,
    *,
    listen: Sequence[str] = ("udp:127.0.0.1:0", "tcp:127.0.0.1:0"),
    messages: Handler | None = None,
    registrar: bool = True,
    domains: Sequence[str] = ("example.org",),
    transport_options: dict[str, object] | None = None,
    **config_changes: object,
) -> CoreServer:
    """Start a SipTransport routing through SipCore in ``nursery`` and return it once bound.

    ``messages`` answers MESSAGE (a :class:`RecordingHandler` answering 202 by default);
    ``config_changes`` go to :class:`Config` (e.g. ``trusted_sources=[...]``).
    """
    config = Config(listen=list(listen), domains=list(domains), **config_changes)  # type: ignore[arg-type]
    config.validate()
    reg = (
        Registrar(
            config.served_domains,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            default_expires=config.default_expires,
        )
        if registrar
        else None
    )
    handler = messages if messages is not None else RecordingHandler()
    core = SipCore(config, reg, handler)
    transport = SipTransport(
        [ListenAddress.parse(text) for text in listen],
        outbound_proxy=config.outbound_proxy,
        locate=(lambda aor: reg.lookup(aor, trio.current_time())) if reg else None,
        **transport_options or {},  # type: ignore[arg-type]
    )
    await nursery.start(transport.run, core)
    return CoreServer(transport, core, reg, handler, config)
