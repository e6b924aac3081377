"""The whole server: conference + SIP transports + registrar, as one async context manager."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .actors.delivery import DeliveryResult
from .conference import Conference, IncomingMessage, open_conference
from .config import Config, ListenAddress
from .imc.effects import Notice
from .registrar import Registrar
from .sip import Request
from .sip.uri import canonical
from .sipcore import SipCore
from .transport import Reply, SipTransport, Source

log = logging.getLogger("imc_actors.server")

NOTICE_CONTENT_TYPE = "text/plain;charset=UTF-8"
SUPPORTED = ("Supported", "kamailio/imc")


@dataclass
class Server:
    """A running server: its conference, transport and registrar, and the addresses it bound."""

    config: Config
    conference: Conference
    transport: SipTransport
    registrar: Registrar | None

    @property
    def addresses(self) -> list[ListenAddress]:
        """The listening sockets with their real ports (useful with port 0)."""
        return list(self.transport.bound)


def message_sender(transport: SipTransport, config: Config):
    """Build the conference's sender: each notice becomes a SIP MESSAGE (spec §6)."""
    extra = [tuple(part.strip() for part in line.split(":", 1)) for line in config.extra_hdrs]

    async def send(notice: Notice, in_reply_to: str) -> DeliveryResult:
        headers = [SUPPORTED, *extra, ("Content-Type", notice.content_type or NOTICE_CONTENT_TYPE)]
        if in_reply_to:
            headers.append(("In-Reply-To", in_reply_to))
        result = await transport.send_request(
            "MESSAGE", notice.to, from_uri=notice.sender, to_uri=notice.to,
            headers=headers, body=notice.body,
        )
        return DeliveryResult(result.code, result.reason)

    return send


def sender_of(request: Request, config: Config) -> str:
    """Who sent ``request`` (spec §9): the identity header when configured and trusted, else From."""
    if config.identity_header and config.trusted_sources:
        asserted = request.header(config.identity_header)
        if asserted:
            text = asserted.split(",", 1)[0].strip()
            if "<" in text:
                text = text[text.index("<") + 1 : text.index(">")] if ">" in text else text
            try:
                return canonical(text)
            except ValueError:
                pass
    return canonical(request.from_uri)


def message_handler(conference: Conference, config: Config):
    """The MESSAGE route: SIP request in, conference answer out."""

    async def on_message(request: Request, source: Source) -> Reply:
        try:
            ruri = canonical(request.uri)
            sender = sender_of(request, config)
        except ValueError:
            return Reply(400, "Invalid Request-URI or From")
        msg = IncomingMessage(ruri, sender, request.body, request.header("Content-Type"), request.call_id)
        answer = await conference.handle(msg)
        headers: tuple[tuple[str, str], ...] = ()
        if answer.retry_after is not None:
            headers = (("Retry-After", str(answer.retry_after)),)
        return Reply(answer.code, answer.reason, headers)

    return on_message


@asynccontextmanager
async def open_server(config: Config) -> AsyncIterator[Server]:
    """Bind the configured sockets and serve for the body of the block.

    Raises OSError (naming the address) when a socket cannot be bound. Leaving the block or
    cancellation shuts everything down; acknowledged changes are durable.
    """
    registrar = None
    if config.registrar:
        registrar = Registrar(
            config.served_domains,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            default_expires=config.default_expires,
        )

    def locate(aor: str) -> list[str]:
        return registrar.lookup(aor, trio.current_time()) if registrar is not None else []

    transport = SipTransport(config.listen_addresses, outbound_proxy=config.outbound_proxy, locate=locate)
    async with open_conference(config, sender=message_sender(transport, config)) as conference:
        core = SipCore(config, registrar, message_handler(conference, config))
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run, core)
            server = Server(config, conference, transport, registrar)
            log.info("listening on %s", ", ".join(str(a) for a in server.addresses))
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
