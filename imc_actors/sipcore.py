"""The SIP request router: the :data:`~imc_actors.transport.Handler` the server gives its transport.

Every new request (retransmissions never get here: the transport answers them from their
transaction, and it absorbs ACKs and CANCELs that match a transaction) is checked and routed in
this order:

0. a MESSAGE forwarded by another node (``X-IMC-Forwarded-By``, issue 13) goes to the message
   handler, which accepts it only from an address that node advertises in the node table
   (403 otherwise; :mod:`imc_actors.forwarding`): the forwarding node settled its identity;
1. ``trusted_sources`` set and the source IP outside every CIDR: 403 (spec §9), unless the
   request is one that digest authentication covers (``auth``: REGISTER, and MESSAGE with
   ``all``): that one is challenged instead;
2. ``Max-Forwards: 0``: 483 Too Many Hops (except OPTIONS, which RFC 3261 §16.3 lets the
   final recipient answer: it is how next-hop liveness is probed); then a ``Require`` of any
   option tag (this server implements no extension a request could depend on): 420 Bad
   Extension with ``Unsupported`` naming them (RFC 3261 §8.2.2.3; not for CANCEL);
3. OPTIONS: 200 with ``Allow``, ``Accept`` and ``Supported``;
4. identity, settled here and nowhere else (README "Users and passwords"): a request that
   ``auth`` covers, from outside ``trusted_sources``, must carry a valid ``Authorization``
   (:class:`~imc_actors.auth.Authenticator`: 401 challenge, 403, 400); then its sender is the
   authenticated user. From a trusted source with ``identity_header`` set, the sender is that
   header (none valid: 403, several: 400). Else it is From;
5. REGISTER: the registrar (405 when it is off); an authenticated REGISTER for another AOR
   than the user's gets ``403 To Is Not The Authenticated User``; a change of bindings is
   committed to the store before the 200 (503 + ``Retry-After`` while the database is down,
   nothing changed), and the registered member's stored notices go out after the 200;
6. MESSAGE: the message handler (the conference), given the :class:`Identity`;
7. CANCEL (one matching no transaction): 481 (RFC 3261 §9.2);
8. anything else: 405 Method Not Allowed with ``Allow``.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from imc_actors.auth import Authenticated, Authenticator
from imc_actors.config import Config
from imc_actors.forwarding import FORWARDED_BY
from imc_actors.registrar import Registrar, Update
from imc_actors.sip import Request, aor_key, canonical, split_addresses
from imc_actors.store.repository import StoreError
from imc_actors.store.writer import StoreUnavailable
from imc_actors.transport import Handler, Reply, Responder, Source
from imc_actors.transport.limits import LogBudget, host_ip

__all__ = ["Identity", "SipCore", "SUPPORTED", "OTHER_AOR", "same_aor"]

log = logging.getLogger(__name__)

#: The option tag clients key on (Kamailio's imc sends it on every MESSAGE).
SUPPORTED = "kamailio/imc"

#: An authenticated REGISTER for an address of record that is not the user's own.
OTHER_AOR = Reply(403, "To Is Not The Authenticated User")
#: A REGISTER for the address of one of the rooms, or of the manager.
ROOM_ADDRESS = Reply(403, "Address Is A Room")


#: Option tags (RFC 3261 §19.2) a request may ``Require`` of this server: none (it implements
#: no SIP extension a request could depend on).
OPTION_TAGS: frozenset[str] = frozenset()


def _unsupported(request: Request) -> list[str]:
    """The option tags of ``request``'s Require headers this server does not implement, each
    once, in order (compared case-insensitively, as RFC 3261 §19.2 asks)."""
    tags: list[str] = []
    for value in request.header_list("Require"):
        for tag in value.split(","):
            tag = tag.strip()
            if tag and tag.lower() not in OPTION_TAGS and tag not in tags:
                tags.append(tag)
    return tags[:16]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a MESSAGE, as :class:`SipCore` settled it: ``uri`` is ``sip:user@host``;
    ``authenticated`` when digest authentication proved it (the From must then name the same
    user), False when a trusted proxy asserted it (``identity_header``)."""

    uri: str
    authenticated: bool


class SipCore:
    """Route requests to the registrar and the message handler; answer the rest itself.

    ``config`` supplies ``trusted_sources``; ``registrar`` is None when ``registrar = false``;
    ``message_handler`` answers MESSAGE requests; ``clock`` gives the registrar's ``now``.
    ``commit`` makes a REGISTER's binding changes durable before its 200 (None: bindings in
    memory only); ``on_registered(aor)`` is called once the 200 to a REGISTER that added or
    refreshed a binding is sent (the server delivers the member's stored notices then).
    ``on_binding(source, aor, contacts, clear)`` hears every accepted change of bindings
    before its 200 (``contacts`` as ``(uri, seconds)``; the server gives it to
    :meth:`SipTransport.bind_contacts <imc_actors.transport.SipTransport.bind_contacts>`, so
    a contact registered over a WebSocket is reached over that connection).
    ``authenticator`` checks digest credentials where ``auth`` asks for them (the server
    makes one unless ``auth = "off"``; None: nothing is challenged).
    """

    def __init__(
        self,
        config: Config,
        registrar: Registrar | None,
        message_handler: Handler,
        *,
        clock: Callable[[], float] = trio.current_time,
        commit: Callable[[Sequence[Any]], Awaitable[None]] | None = None,
        on_registered: Callable[[str], None] | None = None,
        on_binding: Callable[[Source, str, Sequence[tuple[str, int]], bool], None] | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.registrar = registrar
        self.message_handler = message_handler
        self.clock = clock
        self.commit = commit
        self.on_registered = on_registered
        self.on_binding = on_binding
        self._aor_locks: dict[str, trio.Lock] = {}
        self._refusal_log = LogBudget(1)  # a flood from an untrusted source: a line a second
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in config.trusted_sources]
        self.authenticator = authenticator
        #: ``is_room("user@host")``: that address is a room's or the manager's, so no user
        #: may REGISTER it (403 Address Is A Room). Set by the server; None: not checked.
        self.is_room: Callable[[str], bool] | None = None
        #: In a cluster, the same asked of the database before a REGISTER's bindings are
        #: committed (rooms of other nodes and workers); None: ``is_room`` only.
        self.is_room_in_cluster: Callable[[str], Awaitable[bool]] | None = None
        self._auth_methods = {"off": (), "register": ("REGISTER",), "all": ("REGISTER", "MESSAGE")}[
            config.auth_mode
        ]
        self._identity_header = config.identity_header if config.trusted_sources else None
        methods = ["MESSAGE", "OPTIONS"] + (["REGISTER"] if registrar is not None else [])
        self.allow = ", ".join(methods)

    def is_trusted(self, host: str) -> bool:
        """True when no ``trusted_sources`` are set, or ``host`` is inside one of them."""
        if not self._trusted:
            return True
        ip = host_ip(host)
        return ip is not None and any(ip in network for network in self._trusted)

    def challenges(self, method: str, source: Source) -> bool:
        """True when a ``method`` request from ``source`` must be authenticated: ``auth``
        covers the method and the source is not in ``trusted_sources``."""
        if self.authenticator is None or method not in self._auth_methods:
            return False
        return not (self._trusted and self.is_trusted(source.host))

    def asserted(self, request: Request, source: Source) -> Identity | Reply | None:
        """The ``identity_header`` identity of a request from a trusted source (a
        :class:`Reply` when it has none that is valid, 403, or several, 400); None when
        ``identity_header`` does not apply (then From is the sender)."""
        name = self._identity_header
        if name is None or not self.is_trusted(source.host):
            return None
        values = [a for value in request.header_list(name) for a in split_addresses(value)]
        if len(values) > 1:
            return Reply(400, f"Several {name} Values")
        try:
            return Identity(canonical(values[0]), False) if values else Reply(403, f"No Valid {name}")
        except ValueError:
            return Reply(403, f"No Valid {name}")

    def _foreign_register(self, request: Request) -> bool:
        """A REGISTER whose To names no user or a domain not served: the registrar answers it
        404 without a challenge (a password for a realm we do not serve could not help, and
        the right one used to get 403 To Is Not The Authenticated User)."""
        if request.method != "REGISTER" or self.registrar is None:
            return False
        return self.registrar.aor_of(request.to_uri) is None

    def _room_address(self, request: Request) -> Reply | None:
        """403 for a REGISTER of a room's address (or the manager's): a user there could
        never be told apart from the room (``is_room``; None: not checked)."""
        if self.is_room is None:
            return None
        try:
            aor = aor_key(request.to_uri)
        except ValueError:
            return None  # the registrar answers that one
        return ROOM_ADDRESS if self.is_room(aor) else None

    def start(self, request: Request, source: Source, respond: Responder) -> bool:
        """The transport's task-free path (:class:`~imc_actors.transport.StartHandler`):
        REGISTER is answered at once, a MESSAGE goes to the message handler's own ``start``
        when it has one (one that must be authenticated too, when the user's row is cached).
        Everything else, and every request that would be refused here (untrusted source,
        ``Max-Forwards: 0``), is declined and takes :meth:`__call__`."""
        method = request.method
        if method != "MESSAGE" and method != "REGISTER":
            return False
        if request.max_forwards == 0 or request.header("Require") is not None:
            return False
        if self.challenges(method, source):
            if method == "MESSAGE" and request.header(FORWARDED_BY) is None:
                return self._start_authenticated(request, source, respond)
            return False  # a REGISTER's change is committed first: a task does that
        if not self.is_trusted(source.host):
            return False
        if method == "REGISTER":
            if self.registrar is None:
                return False
            refused = self._room_address(request)
            if refused is not None:
                respond(refused)
                return True
            planned = self.registrar.plan(request, self.clock())
            if isinstance(planned, Update):
                if self.commit is not None:
                    return False  # the change must be committed first: a task does that
                reply = self.registrar.apply(planned, self.clock())
                planned = self._registered(planned, reply, source)
            respond(planned)
            return True
        start = getattr(self.message_handler, "start", None)
        if start is None:
            return False
        identity = self.asserted(request, source)
        if isinstance(identity, Reply):
            respond(identity)
            return True
        if identity is None:
            return bool(start(request, source, respond))
        return bool(start(request, source, respond, identity=identity))

    def _start_authenticated(self, request: Request, source: Source, respond: Responder) -> bool:
        """:meth:`start` for a MESSAGE that must be authenticated: taken when the user's row
        is cached (so a user's back-to-back MESSAGEs reach the room in the order they came);
        else declined, and :meth:`__call__` authenticates it in a task, as if this had not
        looked (its nonce-count is recorded only once the request is taken)."""
        start = getattr(self.message_handler, "start", None)
        assert self.authenticator is not None
        verdict = self.authenticator.authenticate_now(request, source.host) if start is not None else None
        if verdict is None:
            return False
        if not isinstance(verdict.result, Authenticated):
            self.authenticator.settle(verdict)
            respond(verdict.result)
            return True
        if not start(request, source, respond, identity=Identity(verdict.result.uri, True)):
            return False
        self.authenticator.settle(verdict)
        return True

    async def __call__(self, request: Request, source: Source) -> Reply:
        """Answer one request (see the module docstring for the order of checks).

        Checkpoints (directly, or inside the message handler). Cancellation propagates from the
        message handler; the other branches do not block.
        """
        method = request.method
        if method == "MESSAGE" and request.max_forwards != 0 and request.header(FORWARDED_BY) is not None:
            # another node's (issue 13): the handler checks the source against the node table
            # and takes the identity the forwarding node settled (it authenticated the sender)
            return await self.message_handler(request, source)
        challenge = self.challenges(method, source) and not self._foreign_register(request)
        if not challenge and not self.is_trusted(source.host):
            self._refusal_log.log(log, logging.INFO, trio.current_time(),
                                  "%s from untrusted source %s: 403", method, source.host,
                                  what="refusals")  # fmt: skip
            await trio.lowlevel.checkpoint()
            return Reply(403, "Forbidden")
        if request.max_forwards == 0 and method != "OPTIONS":
            await trio.lowlevel.checkpoint()
            return Reply(483, "Too Many Hops")
        if method != "CANCEL" and (unsupported := _unsupported(request)):
            # RFC 3261 §8.2.2.3: an extension the request requires and this server lacks
            await trio.lowlevel.checkpoint()
            return Reply(420, "Bad Extension", headers=(("Unsupported", ", ".join(unsupported)),))
        identity: Identity | Reply | None = None
        if challenge:
            assert self.authenticator is not None
            result = await self.authenticator.authenticate(request, source.host)
            if not isinstance(result, Authenticated):
                return result
            identity = Identity(result.uri, True)
        elif method == "MESSAGE":
            identity = self.asserted(request, source)
            if isinstance(identity, Reply):
                await trio.lowlevel.checkpoint()
                return identity
        if method == "MESSAGE":
            if identity is None:
                return await self.message_handler(request, source)
            return await self.message_handler(request, source, identity=identity)  # type: ignore[call-arg]
        if identity is not None and method == "REGISTER" and not same_aor(request.to_uri, identity.uri):
            self._refusal_log.log(log, logging.INFO, trio.current_time(),
                                  "REGISTER for %r by %s: 403", request.to_uri[:128], identity.uri,
                                  what="refusals")  # fmt: skip
            return OTHER_AOR
        await trio.lowlevel.checkpoint()
        if method == "OPTIONS":
            return Reply(
                200,
                "OK",
                headers=(
                    ("Allow", self.allow),
                    ("Accept", "text/plain"),
                    ("Supported", SUPPORTED),
                ),
            )
        if method == "REGISTER" and self.registrar is not None:
            refused = self._room_address(request)
            if refused is not None:
                return refused
            return await self._register(self.registrar, request, source)
        if method == "CANCEL":
            return Reply(481, "Call/Transaction Does Not Exist")
        return Reply(405, "Method Not Allowed", headers=(("Allow", self.allow),))

    async def _register(self, registrar: Registrar, request: Request, source: Source) -> Reply:
        """Plan, commit, apply: one AOR's REGISTERs are handled one at a time, so each plan
        sees the bindings the previous one left."""
        planned = registrar.plan(request, self.clock())
        if not isinstance(planned, Update) or self.commit is None:
            return planned if isinstance(planned, Reply) else self._registered(planned, registrar.apply(planned, self.clock()), source)
        aor = planned.aor
        lock = self._aor_locks.get(aor)
        if lock is None:
            lock = self._aor_locks[aor] = trio.Lock()
        try:
            async with lock:
                planned = registrar.plan(request, self.clock())  # again, under the lock
                if not isinstance(planned, Update):
                    return planned
                try:
                    if self.is_room_in_cluster is not None and await self.is_room_in_cluster(aor):
                        return ROOM_ADDRESS
                    await self.commit(planned.writes(time.time()))
                except StoreUnavailable as exc:  # a stopped store (shutdown, Ctrl-C) too
                    return Reply(503, "Service Unavailable", headers=(("Retry-After", str(exc.retry_after)),))
                except StoreError as exc:
                    log.error("REGISTER for %s not stored: %s", planned.aor, exc)
                    return Reply(500, "Server Internal Error")
                return self._registered(planned, registrar.apply(planned, self.clock()), source)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._aor_locks.pop(aor, None)

    def _registered(self, update: Update, reply: Reply, source: Source) -> Reply:
        """``reply`` with the member's stored notices sent after it (when a binding is live);
        ``on_binding`` hears of the change first."""
        if self.on_binding is not None:
            contacts = [(uri, seconds) for _, uri, seconds in update.changes]
            self.on_binding(source, update.aor, contacts, update.clear)
        if self.on_registered is None or update.clear or not any(seconds for _, _, seconds in update.changes):
            return reply
        hook, aor = self.on_registered, update.aor
        return Reply(reply.code, reply.reason, reply.headers, reply.body, reply.content_type, after=lambda: hook(aor))


def same_aor(uri: str, user: str) -> bool:
    """True when ``uri`` names the address of record ``user`` (``user@host``, case-insensitive,
    escapes decoded, spec §1); False when either is no SIP URI with a user."""
    try:
        return aor_key(uri) == aor_key(user)
    except ValueError:
        return False
