"""The whole server: conference + SIP transports + registrar + management interfaces, as one
async context manager."""

from __future__ import annotations

import email.utils
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from .actors.delivery import Delivery, DeliveryResult, Hold
from .actors.supervisor import Answer
from .auth import Authenticator
from .conference import (
    INVALID_URI_REASON,
    SHUTDOWN_GRACE,
    Conference,
    IncomingMessage,
    open_conference,
    open_repository,
)
from .config import Config, ListenAddress
from .control.access import AccessGuard
from .control.chat_page import ChatSettings
from .control.fifo import FifoServer
from .control.http import create_app, serve_http
from .control.metrics import ServerMetrics, TimedRepository, share_metrics
from .exits import plain_exits
from .forwarding import (
    FORWARDED_ADMIN,
    FORWARDED_BY,
    FORWARDED_URI,
    Forwarder,
    admin_request,
    from_node,
)
from .handoff import Handoff, take_frame
from .imc import texts
from .imc.effects import Notice
from .registrar import Registrar
from .sip import Request, is_own_call_id, set_parser_limits
from .sip.uri import canonical
from .sipcore import Identity, SipCore, same_aor
from .store.records import BindingExpire
from .store.repository import StoreError
from .transport import ClientResult, Reply, Responder, SipTransport, Source
from .transport.client import TransportStopped
from .transport.limits import FloodLimiter, LogInterval
from .transport.steering import Steering
from .transport.tls import client_context, server_context

log = logging.getLogger("imc_actors.server")

NOTICE_CONTENT_TYPE = "text/plain;charset=UTF-8"
SUPPORTED = ("Supported", "kamailio/imc")


@dataclass
class Server:
    """A running server: its conference, transport and registrar, and the addresses it bound.

    ``metrics`` holds its Prometheus registry; ``http_url`` is the management HTTP listener's
    base URL (``http://host:port``, the real port when ``rpc_listen`` asked for 0) or None when
    ``rpc_listen`` is unset; ``mi_fifo`` the MI FIFO's path or None; ``authenticator`` the
    digest :class:`~imc_actors.auth.Authenticator`, None with ``auth = "off"``.
    """

    config: Config
    conference: Conference
    transport: SipTransport
    registrar: Registrar | None
    metrics: ServerMetrics | None = None
    http_url: str | None = None
    mi_fifo: str | None = None
    authenticator: Authenticator | None = None

    @property
    def addresses(self) -> list[ListenAddress]:
        """The listening sockets with their real ports (useful with port 0)."""
        return list(self.transport.bound)

    @property
    def rpc_url(self) -> str | None:
        """The JSON-RPC endpoint (``<http_url>/RPC``), or None without ``rpc_listen``."""
        return f"{self.http_url}/RPC" if self.http_url else None


class MessageSender:
    """The conference's sender in the server: each notice becomes a SIP MESSAGE (spec §6).

    Calling it sends one notice and waits for the outcome (a
    :data:`~imc_actors.actors.delivery.Sender`); :meth:`start` is the same without waiting,
    for the fan-out's common case (see :meth:`SipTransport.start_request`).
    """

    def __init__(self, transport: SipTransport, config: Config) -> None:
        self.transport = transport
        self._extra = [
            tuple(part.strip() for part in line.split(":", 1)) for line in config.extra_hdrs
        ]

    def _headers(self, notice: Notice, in_reply_to: str) -> list[tuple[str, str]]:
        headers = [
            SUPPORTED,
            *self._extra,
            ("Content-Type", notice.content_type or NOTICE_CONTENT_TYPE),
        ]
        if in_reply_to:
            headers.append(("In-Reply-To", in_reply_to))
        if notice.date is not None:  # a stored notice delivered late: when it was first sent
            headers.append(("Date", email.utils.formatdate(notice.date, usegmt=True)))
        return headers

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        try:
            result = await self.transport.send_request(
                "MESSAGE", notice.to, from_uri=notice.sender, to_uri=notice.to,
                headers=self._headers(notice, in_reply_to), body=notice.body,
            )  # fmt: skip
        except TransportStopped:  # shutting down: a member notice is stored (503), not lost
            return DeliveryResult(503, "Shutting Down")
        return DeliveryResult(result.code, result.reason)

    def start(
        self, notice: Notice, in_reply_to: str, on_done: Callable[[DeliveryResult], None]
    ) -> bool:
        """Send ``notice`` now when the transport can without waiting (then True, and
        ``on_done`` gets the outcome later); False when it must go through :meth:`__call__`."""

        def finished(result: ClientResult) -> None:
            on_done(DeliveryResult(result.code, result.reason))

        return self.transport.start_request(
            "MESSAGE", notice.to, from_uri=notice.sender, to_uri=notice.to,
            headers=self._headers(notice, in_reply_to), body=notice.body, on_result=finished,
        )  # fmt: skip


def message_sender(transport: SipTransport, config: Config) -> MessageSender:
    """Build the conference's sender: each notice becomes a SIP MESSAGE (spec §6)."""
    return MessageSender(transport, config)


def sender_of(request: Request, identity: Identity | None = None) -> str:
    """Who sent ``request``: the identity :class:`~imc_actors.sipcore.SipCore` settled
    (authenticated user, or a trusted proxy's ``identity_header``), else From. Raises
    ValueError when From is no SIP URI with a user."""
    return identity.uri if identity is not None else canonical(request.from_uri)


LOOP = Reply(482, "Loop Detected")
#: Seconds the node table read to check a forwarded MESSAGE is used for: a request that does
#: not match it reads it again, at most this often (a flood of forged X-IMC-Forwarded-By
#: headers costs one read a second, not one each on the store's thread).
NODES_REFRESH = 1.0
NOT_FORWARDED = Reply(403, "Not Forwarded By A Known Node")
#: An authenticated MESSAGE whose From names another user (a ``***`` notice says so too).
OTHER_SENDER_REASON = "From Is Not The Authenticated User"


class MessageHandler:
    """The MESSAGE route: SIP request in, conference answer out.

    Awaited, it handles one request (:meth:`Conference.handle`); :meth:`start` is the
    transport's task-free path (:meth:`Conference.start`). The notices a MESSAGE causes are
    held until its final response has been sent (:meth:`Conference.hold`).

    A MESSAGE that is one of our own coming back (From one of our rooms or the manager, or
    In-Reply-To a Call-ID this server made) gets 482 Loop Detected and causes nothing: a
    room's notice that some proxy routes back to us must never start a notice in return.
    """

    def __init__(
        self, conference: Conference, config: Config, *, mark: str = "",
        flood: FloodLimiter | None = None,
    ) -> None:  # fmt: skip
        self.conference = conference
        #: The transport's per-source budget (``flood_rate``), charged a request for each
        #: page of a reply beyond the first (None: nothing charged).
        self.flood = flood
        self.config = config
        self.mark = mark  # the transport's mark in the Call-IDs it makes (see sip.new_mark)
        self._nodes: list[Any] | None = None  # the node table as last read, and when
        self._nodes_at = -math.inf
        self._nodes_lock = trio.Lock()
        self._refusal_log = LogInterval(1.0)

    def is_own(self, request: Request) -> bool:
        """True for a MESSAGE that this server (one of its rooms, or the manager) sent."""
        in_reply_to = request.header("In-Reply-To")
        if in_reply_to and is_own_call_id(in_reply_to, self.mark):
            return True
        try:
            sender = canonical(request.from_uri)
        except ValueError:
            return False
        return self.conference.is_room_address(sender.partition(":")[2])

    def _incoming(self, request: Request, identity: Identity | None) -> IncomingMessage | None:
        try:
            ruri = canonical(request.uri)
            sender = sender_of(request, identity)
        except ValueError:
            return None
        return IncomingMessage(
            ruri, sender, request.body, request.header("Content-Type"), request.call_id
        )

    async def __call__(
        self, request: Request, source: Source, *, identity: Identity | None = None
    ) -> Reply:
        """Answer one MESSAGE; ``identity`` is its sender as SipCore settled it (None: From).
        An authenticated sender whose From names someone else gets 403 and a notice."""
        if self.is_own(request):
            await trio.lowlevel.checkpoint()
            return LOOP
        if request.header(FORWARDED_BY) is not None:
            return await self._from_node(request, source)
        msg = self._incoming(request, identity)
        if msg is None:
            await trio.lowlevel.checkpoint()
            return Reply(400, INVALID_URI_REASON)
        hold = self.conference.hold()
        if (
            identity is not None
            and identity.authenticated
            and not same_aor(request.from_uri, msg.sender)
        ):
            try:
                posing = canonical(request.from_uri)
            except ValueError:
                posing = request.from_uri
            text = texts.NOT_THE_AUTHENTICATED_USER.format(user=msg.sender, sender=posing)
            try:
                answer = await self.conference.refuse(msg, 403, text, hold=hold)
            except BaseException:
                hold.release()
                raise
            return Reply(answer.code, OTHER_SENDER_REASON, after=hold.release)
        return await self._handle(msg, hold, source)

    async def _handle(self, msg: IncomingMessage, hold: Hold, source: Source | None = None) -> Reply:
        """``msg`` handled by the conference; ``hold`` is released after the reply is sent
        (at once when handling fails). ``source``: charged for the pages of the reply."""
        try:
            answer = await self.conference.handle(msg, hold=hold)
        except BaseException:
            hold.release()
            raise
        self._charge(source, answer)
        return _reply_of(answer, hold)

    def _charge(self, source: Source | None, answer: Answer) -> None:
        """A command whose reply came in several pages (``#rooms``, ``#members``, ``#history``,
        ``#bans``) costs its source's ``flood_rate`` budget a request per page: one source
        cannot make the server send pages many times faster than it may send requests."""
        if source is not None and answer.replies > 1 and self.flood is not None:
            self.flood.spend(source.host, answer.replies - 1, trio.current_time())

    async def _from_node(self, request: Request, source: Source) -> Reply:
        """A MESSAGE another node forwarded (issue 13): accepted only from an address that
        node advertises in the node table; then it is the original sender's (From), for the
        original Request-URI (``X-IMC-Request-URI``), and is never forwarded again."""
        node = request.header(FORWARDED_BY) or ""
        if not self._may_forward(node):
            await trio.lowlevel.checkpoint()
            return self._not_forwarded(node, source)
        if not self._forwarded_by_node(node, source):
            try:
                known = await self._read_nodes(node, source)
            except (StoreError, AttributeError) as exc:
                log.warning("checking a MESSAGE forwarded by %r failed: %s", node, exc)
                return Reply(503, None, (("Retry-After", "1"),))
            if not known:
                return self._not_forwarded(node, source)
        action = request.header(FORWARDED_ADMIN)
        if action is not None:
            return await self._admin_from_node(request, action)
        msg = self._forwarded(request, node)
        if msg is None:
            return Reply(400, INVALID_URI_REASON)
        return await self._handle(msg, self.conference.hold())

    async def _admin_from_node(self, request: Request, action: str) -> Reply:
        """A management action another node handed over (``X-IMC-Admin``): carried out here
        as this node's own management interface would, never handed on again; the answer's
        ``***`` text, if any, is the reason phrase."""
        parsed = admin_request(request.body)
        room_uri = request.header(FORWARDED_URI) or ""
        if parsed is None or action not in ("destroy", "kick", "ban"):
            await trio.lowlevel.checkpoint()
            return Reply(400, "Bad Management Action")
        user, reason = parsed
        try:
            answer = await self.conference.administer(room_uri, action, user, reason, forwarded=True)
        except ValueError:  # no room URI
            return Reply(400, INVALID_URI_REASON)
        text = (answer.body or b"").decode("utf-8", "replace")
        phrase = texts.shown(text) if answer.code >= 300 and text.startswith("*** ") else None
        return Reply(answer.code, phrase, _reply_of(answer).headers)

    def _may_forward(self, node: str) -> bool:
        """False when no node may forward to this server: it has no ``node`` of its own, or
        ``node`` names this one."""
        return self.config.node is not None and node != self.config.node

    def _forwarded_by_node(self, node: str, source: Source) -> bool:
        """True when the node table as last read says ``source`` is ``node``'s."""
        return self._nodes is not None and from_node(self._nodes, node, source)

    async def _read_nodes(self, node: str, source: Source) -> bool:
        """Read the node table again (at most every :data:`NODES_REFRESH` seconds, one
        reader at a time) and check ``source`` against it. Raises StoreError."""
        async with self._nodes_lock:
            if trio.current_time() - self._nodes_at >= NODES_REFRESH:
                store = self.conference.store
                self._nodes = await store.read(lambda repository: repository.nodes()) if store else []
                self._nodes_at = trio.current_time()
        return self._forwarded_by_node(node, source)

    def _not_forwarded(self, node: str, source: Source) -> Reply:
        if self._refusal_log.due(trio.current_time()):
            log.warning("MESSAGE claiming to be forwarded by node %r from %s:%d refused",
                        node[:64], source.host, source.port)  # fmt: skip
        return NOT_FORWARDED

    def _forwarded(self, request: Request, node: str) -> IncomingMessage | None:
        """The conference's view of a forwarded MESSAGE: the original Request-URI and
        sender; None when they cannot be read."""
        try:
            ruri = canonical(request.header(FORWARDED_URI) or request.uri)
            sender = canonical(request.from_uri)
        except ValueError:
            return None
        return IncomingMessage(
            ruri, sender, request.body, request.header("Content-Type"), request.call_id,
            forwarded_by=node,
        )  # fmt: skip

    def start(
        self, request: Request, source: Source, respond: Responder, *,
        identity: Identity | None = None,
    ) -> bool:  # fmt: skip
        if self.is_own(request):
            respond(LOOP)
            return True
        node = request.header(FORWARDED_BY)
        if node is not None:
            # another node's: taken as it comes (in order) when the node table as last read
            # names its source; else a task reads the table again (or refuses it)
            if not self._may_forward(node) or not self._forwarded_by_node(node, source):
                return False
            if request.header(FORWARDED_ADMIN) is not None:
                return False  # a management action: a task carries it out
            forwarded = self._forwarded(request, node)
            return forwarded is not None and self._start(forwarded, respond, None)
        msg = self._incoming(request, identity)
        if msg is None:
            return False
        if identity is not None and identity.authenticated and not same_aor(request.from_uri, msg.sender):
            return False  # refused with a notice: a task does that
        return self._start(msg, respond, source)

    def _start(self, msg: IncomingMessage, respond: Responder, source: Source | None) -> bool:
        """:meth:`Conference.start` for ``msg``, its notices held until the reply is sent;
        ``source`` (None: another node's forwarding) is charged for the reply's pages."""
        hold = self.conference.hold()

        def answered(answer: Answer) -> None:
            self._charge(source, answer)
            respond(_reply_of(answer, hold))

        return self.conference.start(msg, answered, hold=hold)


def _reply_of(answer: Answer, hold: Hold | None = None) -> Reply:
    headers: tuple[tuple[str, str], ...] = ()
    if answer.retry_after is not None:
        headers = (("Retry-After", str(answer.retry_after)),)
    return Reply(
        answer.code, answer.reason, headers, after=hold.release if hold is not None else None
    )


#: Seconds between sweeps of expired rows in the bindings table.
BINDING_SWEEP = 3600.0


async def _sweep_bindings(commit: Callable[[list[Any]], Awaitable[None]]) -> None:
    """Delete expired bindings from the table every ``BINDING_SWEEP`` seconds (memory is swept
    by the registrar itself; a restart drops expired rows too)."""
    while True:
        await trio.sleep(BINDING_SWEEP)
        try:
            await commit([BindingExpire(time.time())])
        except StoreError as exc:
            log.warning("sweeping expired bindings failed: %s", exc)


def _wake_and_adopt(delivery: Delivery, aor: str) -> None:
    """A REGISTER for ``aor`` was answered on this node (config ``node``): deliver what this
    node keeps for it, and what a node that died stored for it (``Delivery.adopt``)."""
    delivery.wake(aor)
    delivery.adopt(aor)


def _wake_everywhere(wake: Callable[..., None], steering: Steering, aor: str) -> None:
    """A REGISTER for ``aor`` was answered here: deliver what this worker and the others
    keep for it."""
    wake(aor, here=True)
    steering.wake_all(aor)


async def _follow_bindings(
    read: Callable[[Callable[[Any], Any]], Awaitable[Any]],
    registrar: Registrar,
    wake: Callable[[str], None],
    period: float,
) -> None:
    """With several nodes (issue 13): every ``period`` seconds, add the bindings the other
    nodes wrote since the last look to this node's registrar, and send what is stored for
    their members, so a room's owner reaches members registered with any node. (A binding
    another node removed stays here until it expires.)"""
    since = time.time()
    while True:
        await trio.sleep(period)
        wall = time.time()
        try:
            bindings = await read(partial(_load_bindings, now=wall, since=since))
        except StoreError as exc:
            log.warning("reading the other nodes' bindings failed: %s", exc)
            continue
        since = wall
        # its own REGISTERs come back too: those woke a member that had just failed, for
        # one more attempt at the contact it had just failed at
        news = {binding.aor for binding in bindings if not registrar.knows(binding)}
        registrar.restore(bindings, trio.current_time(), wall)
        for aor in news:
            wake(aor)


def _load_bindings(repository: Any, *, now: float, **which: Any) -> Any:
    """``repository.load_bindings`` in the store's thread (``which``: ``since=`` or ``aor=``)."""
    return repository.load_bindings(now, **which)


async def _find_binding(
    read: Callable[[Callable[[Any], Any]], Awaitable[Any]], registrar: Registrar, aor: str
) -> bool:
    """With several nodes (issue 13): a member this node has no binding for may have
    registered with another node since :func:`_follow_bindings` last looked. Its rows in the
    bindings table, read now, are added to the registrar; True when there were any (the
    notice is then sent at once instead of being stored until the next look)."""
    wall = time.time()
    try:
        bindings = await read(partial(_load_bindings, now=wall, aor=aor))
    except StoreError as exc:
        log.warning("looking up the bindings of %s failed: %s", aor, exc)
        return False
    return registrar.restore(bindings, trio.current_time(), wall) > 0


def message_handler(
    conference: Conference, config: Config, *, mark: str = "", flood: FloodLimiter | None = None
) -> MessageHandler:
    """The MESSAGE route: SIP request in, conference answer out (``mark``, ``flood``: see
    :class:`MessageHandler`)."""
    return MessageHandler(conference, config, mark=mark, flood=flood)


def tls_contexts(config: Config) -> dict[str, ssl.SSLContext | None]:
    """The transport's TLS contexts from ``tls_cert``/``tls_key`` (our listeners; None
    without them) and ``tls_ca``/``tls_verify`` (outgoing connections)."""
    server = (
        server_context(config.tls_cert, config.tls_key)
        if config.tls_cert and config.tls_key
        else None
    )
    return {"tls_server": server, "tls_client": client_context(config.tls_ca, config.tls_verify)}


async def _authenticator(config: Config, store: Any) -> Authenticator | None:
    """The digest authenticator (None with ``auth = "off"``): the nonce secret is read from
    ``secret_table`` (made on first start), user rows through the store's thread."""
    if config.auth_mode == "off":
        return None
    if store is None or not hasattr(store, "read"):
        raise StoreError(
            f"auth = {config.auth_mode!r} needs the database (users and the nonce secret)"
        )
    secret = await store.read(lambda repository: repository.load_secret())

    async def load(username: str, domain: str) -> Any:
        return await store.read(lambda repository: repository.load_subscriber(username, domain))

    return Authenticator(config, secret, load)


@plain_exits
@asynccontextmanager
async def open_server(
    config: Config,
    *,
    shared_ports: bool = False,
    private_host: str | None = None,
    steering: Steering | None = None,
    node_free: bool = False,
) -> AsyncIterator[Server]:
    """Bind the configured sockets and serve for the body of the block.

    Raises OSError (naming the address) when a socket cannot be bound. Leaving the block or
    cancellation shuts everything down; acknowledged changes are durable. A KeyboardInterrupt
    or SystemExit leaves it as itself, not inside exception groups (:mod:`imc_actors.exits`).

    The management interfaces start after the SIP transport: the HTTP listener (JSON-RPC,
    ``/metrics``, status page) when ``rpc_listen`` is set, the MI FIFO when ``mi_fifo`` is.

    A worker of ``serve --workers N`` (:mod:`imc_actors.workers`) passes ``shared_ports``
    (the listen addresses are bound with ``SO_REUSEPORT``) and ``private_host`` (its own UDP
    and TCP address there, which it sends from and advertises first; see
    :class:`~imc_actors.transport.SipTransport`), and ``steering``: each room's home worker,
    which takes the room's lease at startup and gets its requests from the other workers
    (:mod:`imc_actors.transport.steering`), and ``node_free`` when it is started again after
    its predecessor died (see :func:`~imc_actors.conference.open_conference`).

    The ``sip_max_*`` settings become the SIP parser's limits for the whole process while the
    server runs (:func:`~imc_actors.sip.set_parser_limits`); the previous ones are restored
    when it stops.
    """
    previous_limits = set_parser_limits(config.parser_limits)
    try:
        async with _open_server(
            config,
            shared_ports=shared_ports,
            private_host=private_host,
            steering=steering,
            node_free=node_free,
        ) as server:
            yield server
    finally:
        set_parser_limits(previous_limits)


@asynccontextmanager
async def _open_server(
    config: Config,
    *,
    shared_ports: bool,
    private_host: str | None,
    steering: Steering | None,
    node_free: bool,
) -> AsyncIterator[Server]:
    registrar = None
    if config.registrar:
        registrar = Registrar(
            config.served_domains,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            default_expires=config.default_expires,
            max_contacts=config.max_contacts,
            max_aors=config.max_aors,
        )

    def locate(aor: str) -> list[str]:
        return registrar.lookup(aor, trio.current_time()) if registrar is not None else []

    transport = SipTransport(
        config.listen_addresses,
        outbound_proxy=config.outbound_proxy,
        locate=locate,
        max_transactions=config.max_transactions,
        max_transaction_bytes=config.max_transaction_bytes,
        max_vias=config.max_vias,
        tcp_idle_timeout=config.tcp_idle_timeout,
        dns_timeout=config.dns_timeout,
        dns_lookups_max=config.dns_lookups_max,
        tcp_max_connections=config.tcp_max_connections,
        tcp_max_outgoing=config.tcp_max_outgoing,
        tcp_max_per_ip=config.tcp_max_per_ip,
        tcp_max_buffer=config.tcp_max_buffer,
        tcp_send_queue=config.tcp_send_queue,
        flood_rate=config.flood_rate,
        flood_burst=config.flood_burst,
        flood_block=config.flood_block,
        flood_sources=config.flood_sources,
        # proxies in trusted_sources carry many users' requests: no per-source budget
        flood_exempt=config.trusted_sources,
        # our users are found through the registrar only: no binding means unreachable here
        local_domains=config.served_domains if registrar is not None else (),
        reuse_port=shared_ports,
        private_host=private_host,
        steering=steering,
        **tls_contexts(config),
    )
    if registrar is not None:  # a Contact that is this server itself is refused (400)
        registrar.is_self = transport.is_self
    metrics = ServerMetrics.for_config(config)
    repository = await trio.to_thread.run_sync(open_repository, config)
    repository = TimedRepository(repository, metrics.observe_commit)
    sender = message_sender(transport, config)
    home = steering.home_node if steering is not None and steering.nodes else None
    handoff = Handoff(steering) if steering is not None else None  # imc_actors.handoff
    async with open_conference(
        config, sender=sender, repository=repository, home=home, handoff=handoff,
        node_free=node_free,
    ) as conference:  # fmt: skip
        metrics.conference, metrics.transport, metrics.registrar = conference, transport, registrar
        store = conference.store
        if registrar is not None and store is not None and hasattr(repository, "load_bindings"):
            wall = time.time()
            bindings = await store.read(lambda r: r.load_bindings(wall))
            restored = registrar.restore(bindings, trio.current_time(), wall)
            if restored:
                log.info("restored %d registrar bindings", restored)
            commit = store.commit
        else:
            commit = None
        sweep = commit
        authenticator = await _authenticator(config, store)
        registered = conference.delivery.wake
        if steering is not None:  # the other workers deliver to the member too (issue 13)
            steering.on_wake = partial(conference.delivery.wake, here=True)
            steering.on_notices = partial(take_frame, conference.delivery)
            registered = partial(_wake_everywhere, conference.delivery.wake, steering)
        elif conference.leases is not None:  # nodes share the pending table
            registered = partial(_wake_and_adopt, conference.delivery)
        core = SipCore(
            config, registrar, message_handler(conference, config, mark=transport.mark, flood=transport.flood),
            commit=commit, on_registered=registered,
            on_binding=transport.bind_contacts, authenticator=authenticator,
        )  # fmt: skip
        if registrar is not None:  # a parked member is retried only while it has a binding
            conference.delivery.reachable = lambda key: bool(
                registrar.lookup(key, trio.current_time())
            )
            # rooms and users share the domain's addresses: no room takes a registered
            # user's, no user registers a room's or the manager's
            conference.is_user = conference.delivery.reachable
            core.is_room = conference.is_room_address
            if conference.cluster is not None:  # and the rooms of the other nodes and workers
                core.is_room_in_cluster = conference.is_room_in_cluster
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run, metrics.instrument(core))
            if sweep is not None:
                nursery.start_soon(_sweep_bindings, sweep)
            if sweep is not None and conference.leases is not None and registrar is not None:
                nursery.start_soon(
                    _follow_bindings, store.read, registrar, partial(conference.delivery.wake, here=True),
                    config.lease_ttl / 3,
                )  # fmt: skip
                transport.find_binding = partial(_find_binding, store.read, registrar)
            server = Server(config, conference, transport, registrar, metrics)
            server.authenticator = metrics.authenticator = authenticator
            if conference.leases is not None:  # where other nodes reach this one (issue 13)
                await conference.leases.advertise([str(address) for address in server.addresses])
                assert config.node is not None
                conference.forward = Forwarder(transport, config.node, config.lease_ttl)
            log.debug("serving on %s", ", ".join(str(a) for a in server.addresses))
            if config.rpc_listen is not None:
                app = create_app(
                    conference, metrics, ChatSettings.of(config, server.addresses),
                    max_requests=config.rpc_max_requests, body_timeout=config.rpc_body_timeout,
                )  # fmt: skip
                guarded = AccessGuard(  # Host, Origin, Content-Type and rpc_token checks
                    app, token=config.rpc_token, hosts=config.rpc_hosts,
                    metrics_public=config.metrics_public,
                )  # fmt: skip
                server.http_url = await nursery.start(serve_http, guarded, config.rpc_listen)
            if config.mi_fifo is not None:
                fifo = FifoServer(conference, config.mi_fifo, config.reply_dir)
                server.mi_fifo = await nursery.start(fifo.run)
                metrics.fifo = fifo
            if conference.leases is not None and config.metrics_share_interval > 0:
                # every node's /metrics shows the whole cluster (issue 13 item 3)
                await nursery.start(share_metrics, metrics, store, config.metrics_share_interval)
            try:
                yield server
                # a clean stop: what is queued or in flight for members still goes out while
                # the transport runs (once it stops, each would fail 503 and be stored for a
                # member who is there, to arrive late and out of order)
                with trio.move_on_after(SHUTDOWN_GRACE):
                    await conference.delivery.drain()
            finally:
                nursery.cancel_scope.cancel()
