"""Digest authentication of requests, as the UAS (README "Users and passwords").

:class:`Authenticator` answers one question for :class:`~imc_actors.sipcore.SipCore`: who sent
this request? Either an :class:`Authenticated` user (``sip:username@realm``), or the
:class:`~imc_actors.transport.Reply` to send instead: a 401 challenge (two
``WWW-Authenticate``, SHA-256 first, then MD5, RFC 8760 §2), a 403 for a wrong user or
password, a 400 for an ``Authorization`` that cannot be read, a 503 while the database is
down. It never looks at the transport, so it works alike over UDP, TCP, TLS and WebSocket.

The realm is the domain of the user: the To host of a REGISTER, the From host of a MESSAGE
(the first served domain when that host is not one of ours); the user is looked up in the
``subscriber`` table as ``(username, realm)``, as Kamailio's auth_db does.

Bounds (every one a config parameter): nonces are stateless (:class:`~imc_actors.sip.digest.Nonces`)
and live ``nonce_expires`` seconds; replays are caught by
:class:`~imc_actors.sip.digest.NonceCounts` (each count once, in any order within
:data:`~imc_actors.sip.digest.NC_WINDOW`) with ``nonce_counts`` entries at most; user rows
are cached (``auth_cache_size`` entries, ``auth_cache_ttl`` seconds; a failed check reads the
row again at once, so a new password works at once, a deleted user within the TTL).

:meth:`Authenticator.authenticate_now` is the same check without a checkpoint, for the
transport's task-free path: it answers when the user's row is cached, and leaves the rest to
:meth:`Authenticator.authenticate`.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .config import Config
from .sip import Request, canonical_user, split_uri
from .sip.digest import (
    ALGORITHMS,
    Credentials,
    DigestError,
    NonceCounts,
    Nonces,
    challenge,
    expected_response,
    origin_of,
    parse_credentials,
)
from .store.repository import StoreError
from .store.users import Subscriber
from .store.writer import StoreUnavailable
from .transport import Reply
from .transport.limits import FloodLimiter, LogBudget

__all__ = ["AuthStatistics", "Authenticated", "Authenticator", "UserCache", "Verdict", "WRONG_PASSWORD"]

log = logging.getLogger(__name__)

#: The answer to a wrong password or an unknown user (the same, so users cannot be probed).
WRONG_PASSWORD = Reply(403, "Wrong User Or Password")
#: The reason phrase for credentials from a blocked source (they are not checked).
TOO_MANY_GUESSES = "Too Many Wrong Passwords"

LoadUser = Callable[[str, str], Awaitable[Subscriber | None]]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A request whose digest verified: ``uri`` is ``sip:username@realm``."""

    uri: str


@dataclass(frozen=True, slots=True)
class AuthStatistics:
    """Counts since start (metric ``imc_auth_total{result}``): ``accepted`` answers;
    ``challenged`` requests without credentials for us (or with a nonce not ours);
    ``refused`` wrong user or password; ``stale`` old nonces; ``replayed`` nonce-counts seen
    before; ``malformed`` unreadable ``Authorization`` (400); ``busy`` answered 503 because
    ``auth_max_reads`` user lookups were under way; ``blocked`` credentials not checked, their
    source having given too many wrong ones (``auth_fail_rate``, ``auth_fail_burst``). ``nonces`` and ``users`` are the entries
    held now (bounded by ``nonce_counts`` and ``auth_cache_size``)."""

    accepted: int
    challenged: int
    refused: int
    stale: int
    replayed: int
    malformed: int
    nonces: int
    users: int
    busy: int = 0
    blocked: int = 0


#: A failed check reads the user's row again at once (a new password works at once), but at
#: most :data:`RECHECK_BURST` times within :data:`RECHECK_INTERVAL` seconds of the last read:
#: a flood of wrong answers for one user costs a few reads a second, not one each.
RECHECK_INTERVAL = 1.0
RECHECK_BURST = 3


class UserCache:
    """At most ``size`` user rows (or their absence) for ``ttl`` seconds, least recently used
    dropped first; ``load(username, domain)`` reads one from the database, at most
    ``max_reads`` at once (past that :class:`StoreUnavailable`: the reads share the store's
    thread with its commits, and a flood of unknown users must not stall those)."""

    def __init__(
        self, load: LoadUser, size: int, ttl: float, clock: Callable[[], float], max_reads: int = 8
    ) -> None:
        self._load = load
        self.size, self.ttl = size, ttl
        self._clock = clock
        self.max_reads = max_reads
        self.reading = 0
        self.refused = 0
        # (username, domain) -> (row, when read, rereads within RECHECK_INTERVAL of the last)
        self._rows: OrderedDict[tuple[str, str], tuple[Subscriber | None, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def peek(self, username: str, domain: str) -> tuple[Subscriber | None] | None:
        """The cached row (or its absence) in a 1-tuple when it is still fresh; None when only
        the database can answer. Never checkpoints."""
        key = (username, domain)
        cached = self._rows.get(key)
        if cached is None or self._clock() - cached[1] >= self.ttl:
            return None
        self._rows.move_to_end(key)
        return (cached[0],)

    async def get(self, username: str, domain: str, *, fresh: bool = False) -> tuple[Subscriber | None, bool]:
        """``(row, from_cache)``; ``fresh`` reads the database whatever the cache holds,
        up to :data:`RECHECK_BURST` times within :data:`RECHECK_INTERVAL`. Raises StoreError
        (:class:`StoreUnavailable` with ``max_reads`` reads under way). Checkpoints when it
        reads."""
        now = self._clock()
        rereads = 0
        if fresh:
            entry = self._rows.get((username, domain))
            if entry is not None and now - entry[1] < RECHECK_INTERVAL:
                if entry[2] >= RECHECK_BURST:
                    return entry[0], True
                rereads = entry[2] + 1
            cached = None
        else:
            cached = self.peek(username, domain)
        if cached is not None:
            return cached[0], True
        if self.reading >= self.max_reads:
            self.refused += 1
            raise StoreUnavailable(f"{self.reading} user lookups under way (auth_max_reads)", 1)
        self.reading += 1
        try:
            row = await self._load(username, domain)
        finally:
            self.reading -= 1
        if self.ttl > 0:
            key = (username, domain)
            self._rows[key] = (row, now, rereads)
            self._rows.move_to_end(key)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)
        return row, False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`Authenticator.authenticate_now` found, not yet counted: ``result`` is the
    answer :meth:`Authenticator.authenticate` would give. Hand it to
    :meth:`Authenticator.settle` once the request is taken, and drop it otherwise (the
    request's task then authenticates it again, as if this had not happened)."""

    result: Authenticated | Reply
    outcome: str
    used: tuple[str, float, int] | None = None  # (nonce, issued, nc) to record when taken


class Authenticator:
    """Challenge and verify requests (see the module docstring).

    ``secret`` keys the nonces; ``load(username, domain)`` reads a user row (the server's runs
    :meth:`Repository.load_subscriber` in the store's thread); ``clock`` is the wall clock
    (nonces carry their issue time and outlive a restart).
    """

    def __init__(
        self, config: Config, secret: bytes, load: LoadUser, *,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.domains = config.served_domains
        self.nonces = Nonces(secret, config.nonce_expires, origin_of(config.node))
        # the counts of nonces issued before this process started are gone: those are used up
        self.counts = NonceCounts(config.nonce_counts, floor=math.floor(clock() * 1000) / 1000 - 0.001)
        self.users = UserCache(
            load, config.auth_cache_size, config.auth_cache_ttl, clock, config.auth_max_reads
        )
        self.clock = clock
        self.md5_only_agents = tuple(config.md5_only_agents)
        self._refusal_log = LogBudget(1)
        self._block_log = LogBudget(1)
        self._counts = dict.fromkeys(
            ("accepted", "challenged", "refused", "stale", "replayed", "malformed", "blocked"), 0
        )
        #: Wrong answers per source address: a token bucket (``auth_fail_rate`` a second,
        #: ``auth_fail_burst`` at once); a source that spent it is refused for
        #: ``auth_fail_block`` seconds without its answers being checked. None: no bound.
        self.guesses = (
            FloodLimiter(config.auth_fail_rate, config.auth_fail_burst, config.auth_fail_block,
                         max_sources=config.flood_sources)
            if config.auth_fail_rate > 0 else None
        )  # fmt: skip
        #: The clock of :attr:`guesses` and the log budgets (seconds, any origin).
        self.monotonic: Callable[[], float] = time.monotonic

    def statistics(self) -> AuthStatistics:
        """The counters and table sizes now."""
        return AuthStatistics(
            **self._counts, nonces=len(self.counts), users=len(self.users), busy=self.users.refused
        )

    def realm_for(self, request: Request) -> str:
        """The realm of ``request``: its To host (REGISTER) or From host (else), when served."""
        uri = request.to_uri if request.method == "REGISTER" else request.from_uri
        try:
            host = split_uri(uri)[1].lower()
        except ValueError:
            host = ""
        return host if host in self.domains else self.domains[0]

    def challenge(self, request: Request, realm: str, *, stale: bool = False,
                  algorithms: tuple[str, ...] = ALGORITHMS) -> Reply:  # fmt: skip
        """The 401: one ``WWW-Authenticate`` per algorithm, one fresh nonce for all; MD5 alone
        to a User-Agent naming one of ``md5_only_agents`` (clients that read only the first
        challenge and cannot do SHA-256: JsSIP 3, sipsak, SIPp)."""
        agent = request.header("User-Agent") or ""
        if any(name in agent for name in self.md5_only_agents):
            algorithms = ("MD5",)
        nonce = self.nonces.make(self.clock())
        headers = tuple(
            ("WWW-Authenticate", challenge(realm, nonce, algorithm, stale=stale))
            for algorithm in algorithms
        )
        return Reply(401, "Unauthorized", headers=headers)

    async def authenticate(self, request: Request, source: str | None = None) -> Authenticated | Reply:
        """Who sent ``request`` (from the address ``source``, when known), or the answer to
        send instead. Checkpoints."""
        verdict = self._precheck(request, source)
        if isinstance(verdict, Verdict):
            await trio.lowlevel.checkpoint()
        else:
            credentials, realm, issued = verdict
            try:
                verified = await self._verify(credentials, request.method, realm)
            except StoreUnavailable as exc:
                return Reply(503, "Service Unavailable", headers=(("Retry-After", str(exc.retry_after)),))
            except StoreError as exc:
                log.error("reading user %s@%s failed: %s", credentials.username, realm, exc)
                return Reply(500, "Server Internal Error")
            verdict = self._conclude(request, credentials, realm, issued, verified, source)
        self.settle(verdict)
        return verdict.result

    def authenticate_now(self, request: Request, source: str | None = None) -> Verdict | None:
        """:meth:`authenticate` without a checkpoint, when it needs no database read: the
        answer, not counted yet (see :class:`Verdict`); None when the user's row is not in
        the cache, or the cached row refuses the answer (:meth:`authenticate` reads it
        again). So a user's requests sent back to back are taken in the order they came,
        while its row is cached."""
        verdict = self._precheck(request, source)
        if isinstance(verdict, Verdict):
            return verdict
        credentials, realm, issued = verdict
        cached = self.users.peek(credentials.username, realm)
        if cached is None or _check(cached[0], credentials, request.method, realm) is not True:
            return None
        return self._conclude(request, credentials, realm, issued, True, source)

    def settle(self, verdict: Verdict) -> None:
        """Count ``verdict`` and, when it authenticated, record its nonce-count as used."""
        if verdict.used is not None:
            self.counts.record(*verdict.used)
        self._counts[verdict.outcome] += 1

    def _precheck(self, request: Request, source: str | None) -> Verdict | tuple[Credentials, str, float]:
        """The answer when the request's own text (or its source's wrong answers) settles it;
        else its credentials, realm and nonce issue time, for the user's row to verify."""
        realm = self.realm_for(request)
        credentials, error = _ours(request, realm)
        if credentials is None:
            if error is not None:
                return Verdict(Reply(400, error), "malformed")
            return Verdict(self.challenge(request, realm), "challenged")
        if source is not None and self.guesses is not None:
            left = self.guesses.blocked_for(source, self.monotonic())
            if left > 0:  # Retry-After: when it may answer again (a person reads it too)
                return Verdict(Reply(403, TOO_MANY_GUESSES, headers=(("Retry-After", str(math.ceil(left))),)), "blocked")
        issued = self.nonces.issued(credentials.nonce)
        if issued is None:  # not our nonce (another secret, or made up)
            return Verdict(self.challenge(request, realm), "challenged")
        if not _same_uri(credentials.uri, request.uri, self.domains):
            return Verdict(Reply(400, "Digest URI Differs From Request-URI"), "malformed")
        return credentials, realm, issued

    def _conclude(
        self, request: Request, credentials: Credentials, realm: str, issued: float,
        verified: bool | None, source: str | None = None,
    ) -> Verdict:  # fmt: skip
        if verified is None:  # the row has no hash for this algorithm: offer what it has
            return Verdict(self.challenge(request, realm, algorithms=("MD5",)), "challenged")
        if not verified:
            self._log_refusal(request, credentials, realm, "wrong user or password", source)
            if source is not None and self.guesses is not None:
                self._guessed(source)
            return Verdict(WRONG_PASSWORD, "refused")
        if self.nonces.is_stale(issued, self.clock()) or not self.nonces.made_here(credentials.nonce):
            # too old, or another worker's or node's: it remembers that nonce's counts, not we
            return Verdict(self.challenge(request, realm, stale=True), "stale")
        if self.counts.forgotten(credentials.nonce, issued):
            # issued before a restart (or its counts dropped for room): a client answering
            # its last challenge, as after any restart, is told to answer afresh; no replay
            return Verdict(self.challenge(request, realm, stale=True), "stale")
        if not self.counts.fresh(credentials.nonce, issued, credentials.nc):
            why = f"nonce-count {credentials.nc_text} used before (a replay?)"
            self._log_refusal(request, credentials, realm, why, source)
            return Verdict(self.challenge(request, realm, stale=True), "replayed")
        uri = f"sip:{canonical_user(credentials.username)}@{realm}"
        return Verdict(Authenticated(uri), "accepted", (credentials.nonce, issued, credentials.nc))

    def _guessed(self, source: str) -> None:
        """One wrong answer from ``source``: spent from its budget; the one past
        ``auth_fail_burst`` (and the refill since) blocks it for ``auth_fail_block`` seconds,
        logged once a second at most: the line names the address, for a firewall or
        fail2ban to act on. A right answer spends nothing, so a user who mistyped up to the
        burst still gets in."""
        assert self.guesses is not None
        now = self.monotonic()
        blocks = self.guesses.blocked
        self.guesses.allow(source, now)
        if self.guesses.blocked > blocks:
            self._block_log.log(
                log, logging.WARNING, now,
                "digest answers from %s refused for %g s: more than %d wrong passwords",
                source, self.guesses.block, self.guesses.burst, what="sources",
            )  # fmt: skip

    def _log_refusal(
        self, request: Request, credentials: Credentials, realm: str, why: str, source: str | None
    ) -> None:
        """One INFO line per second at most (a flood would write one per request), naming the
        method, the source address and the user as sent, quoted and cut (it is the client's
        text: no control characters in the log), and how many refusals the quiet second held."""
        self._refusal_log.log(
            log, logging.INFO, self.monotonic(), "%s from %s: digest for %r at %s refused: %s",
            request.method, source or "?", credentials.username[:64], realm, why, what="refusals",
        )  # fmt: skip

    async def _verify(self, credentials: Credentials, method: str, realm: str) -> bool | None:
        """True when the response is right, False when not (or no such user), None when the
        user's row cannot answer this algorithm. A miss on a cached row reads it again."""
        row, cached = await self.users.get(credentials.username, realm)
        result = _check(row, credentials, method, realm)
        if result is not True and cached:
            row, _ = await self.users.get(credentials.username, realm, fresh=True)
            result = _check(row, credentials, method, realm)
        return result


def _check(row: Subscriber | None, credentials: Credentials, method: str, realm: str) -> bool | None:
    if row is None:
        return False
    secret = row.ha1_for(credentials.algorithm, realm)
    if secret is None:
        return None if credentials.algorithm != "MD5" else False
    expected = expected_response(
        credentials.algorithm, secret, method, credentials.uri, credentials.nonce,
        credentials.nc_text, credentials.cnonce,
    )  # fmt: skip
    return hmac.compare_digest(expected, credentials.response)


def _ours(request: Request, realm: str) -> tuple[Credentials | None, str | None]:
    """The ``Authorization`` for ``realm`` (others may be for proxies), or the reason the
    first one that could not be read was refused."""
    error = None
    for value in request.header_list("Authorization"):
        try:
            credentials = parse_credentials(value)
        except DigestError as exc:
            error = error or str(exc)
            continue
        if credentials.realm.lower() == realm:
            return credentials, None
    return None, error


def _same_uri(digest_uri: str, request_uri: str, domains: list[str]) -> bool:
    """True when the digest ``uri`` names the Request-URI (RFC 7616 §3.4.6), or is the bare
    ``sip:<served domain>`` (SIPp answers every challenge with ``sip:<server>:<port>``).
    Scheme case, port and parameters are not compared: clients differ there."""
    if digest_uri == request_uri:
        return True
    key = _uri_key(digest_uri)
    return key == _uri_key(request_uri) or key in domains


def _uri_key(uri: str) -> str:
    text = uri.strip().lower()
    text = text.partition(":")[2] if text.startswith(("sip:", "sips:")) else text
    text = text.split(";", 1)[0].split("?", 1)[0]
    user, at, host = text.rpartition("@")
    if host.startswith("["):
        host = host.partition("]")[0] + "]"
    else:
        host = host.partition(":")[0]
    return f"{user}{at}{host}"
