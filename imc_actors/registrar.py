"""The built-in registrar (spec §7, RFC 3261 §10.3): bindings address-of-record -> contacts.

Pure and synchronous: every method takes the current time ``now`` (any monotonic clock, in
seconds; the server passes ``trio.current_time()``), so tests drive expiry with plain numbers.
It never blocks and never raises for a bad request: :meth:`Registrar.register` turns every
problem into the SIP answer RFC 3261 asks for.

Durable bindings (usrloc's ``db_mode`` write-through): :meth:`Registrar.plan` decides what a
REGISTER changes without changing anything; the caller makes :meth:`Update.writes` durable (the
``imc_location`` table), then :meth:`Registrar.apply` changes the bindings in memory and gives
the 200. At startup :meth:`Registrar.restore` loads what the table holds, so a restart keeps
every member reachable. :meth:`Registrar.register` does plan and apply at once (no storage).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from imc_actors.sip import Request, aor_key, build_response, split_addresses, split_outside
from imc_actors.sip.uri import parse_sip_uri
from imc_actors.store.models import MAX_CONTACT, MAX_LENGTH
from imc_actors.store.records import Binding, BindingClear, BindingDelete, BindingSet, StoreWrite
from imc_actors.transport import Reply
from imc_actors.transport.limits import LogBudget
from imc_actors.transport.routing import parse_hop

log = logging.getLogger("imc_actors.registrar")

__all__ = ["MAX_ANSWER", "Registrar", "Update", "answer_fits", "parse_contacts"]

# RFC 3261 §20.19: a malformed Expires value SHOULD be treated as 3600.
_MALFORMED_EXPIRES = 3600
# RFC 3261 §20.19: delta-seconds are at most 2**32-1 (ten digits); larger values count as that.
_MAX_DELTA = 2**32 - 1
_MAX_DELTA_DIGITS = len(str(_MAX_DELTA))

#: Largest REGISTER answer, in bytes. The 200 lists every binding of the AOR and must travel
#: back as one UDP datagram (at most 65,507 bytes over IPv4); the rest of that is left for the
#: ``received``/``rport`` the transport adds to the top Via.
MAX_ANSWER = 65_000
# Upper bound on the bytes of a 200's own lines (status line, To tag, Content-Length).
_ANSWER_FRAME = 100
# How often (in ``now`` seconds) register() sweeps expired bindings of every AOR.
_SWEEP_INTERVAL = 60.0


@dataclass(slots=True)
class _Binding:
    """One contact of an AOR: ``uri`` as registered, expiry time, and the request that set it."""

    uri: str
    expires_at: float
    call_id: str
    cseq: int
    order: int  # rising counter: larger = registered or refreshed more recently


def parse_contacts(value: str) -> list[tuple[str, dict[str, str | None]]]:
    """Split one Contact header value into ``(uri, params)`` pairs.

    Handles comma-separated lists, display names (quoted or not), ``<uri>`` with URI parameters
    kept inside the URI, and bare URIs (whose ``;params`` are header parameters, RFC 3261
    §20.10). Parameter names are lower-cased; a parameter without ``=`` maps to None. The wildcard
    comes back as ``("*", {})``. Empty elements are skipped.
    """
    result: list[tuple[str, dict[str, str | None]]] = []
    for element in split_addresses(value):
        if element == "*":
            result.append(("*", {}))
            continue
        lt = _find_outside_quotes(element, "<")
        if lt >= 0:
            gt = element.find(">", lt)
            if gt < 0:
                uri, rest = element[lt + 1 :].strip(), ""
            else:
                uri, rest = element[lt + 1 : gt].strip(), element[gt + 1 :]
        else:
            uri, _, rest = element.partition(";")
            uri, rest = uri.strip(), ";" + rest if rest else ""
        params: dict[str, str | None] = {}
        for part in split_outside(rest, ";"):
            part = part.strip()
            if not part:
                continue
            name, eq, val = part.partition("=")
            params[name.strip().lower()] = val.strip() if eq else None
        result.append((uri, params))
    return result


def unusable_contact(uri: str) -> str | None:
    """Why nothing could ever be delivered to the Contact ``uri`` (so it is not registered:
    400; an ``outbound_proxy`` like it is refused at startup), or None. A SIP or SIPS URI with
    a host (a valid IP address of one host, not 0.0.0.0, ``::``, multicast or broadcast, when
    it is one in form; a name DNS can look up when it is a name), a port in 1-65535 and a
    transport this server speaks."""
    try:
        parsed = parse_sip_uri(uri)
    except ValueError:
        return f"not a SIP URI: {uri[:80]!r}"
    try:
        parse_hop(uri)
    except ValueError as exc:
        return f"cannot send to {uri[:80]!r}: {str(exc)[:120]}"
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        return f"bad port in {uri[:80]!r}"
    host = parsed.host or ""
    if host.replace(".", "").isdigit() or host.startswith("["):
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return f"bad address {host[:80]!r} in {uri[:80]!r}"
        if address.is_unspecified or address.is_multicast or host == "255.255.255.255":
            return f"cannot send to {uri[:80]!r}: {host} is no one host's address"
    else:  # a DNS name: labels of 1-63 characters, 253 in all
        try:
            fits = len(host.rstrip(".").encode("idna")) <= 253
        except UnicodeError:
            fits = False
        if not fits:
            return f"bad host name {host[:80]!r} in {uri[:80]!r}"
    return None


def _find_outside_quotes(text: str, ch: str) -> int:
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1


def answer_fits(request: Request, contacts: Iterable[str], limit: int = MAX_ANSWER) -> bool:
    """Whether the 200 to REGISTER ``request`` listing the bindings ``contacts`` (URIs) fits in
    ``limit`` bytes. Pure. Every ``expires`` is counted at its widest (ten digits).

    For the usual request this is a sum over characters (a character is at most 4 bytes of
    UTF-8, and the answer copies only some of the request's headers); only near the limit is
    the answer built to be measured.
    """
    uris = list(contacts)
    listed = [("Contact", f"<{uri}>;expires={_MAX_DELTA}") for uri in uris]
    chars = sum(len(name) + len(value) + 4 for name, value in (*request.headers, *listed))
    if 4 * chars + _ANSWER_FRAME <= limit:
        return True
    return len(build_response(request, 200, to_tag="t" * 12, headers=listed)) <= limit


def _too_long(reason: str, limit: str) -> Reply:
    """A 400 for a REGISTER whose binding the table could not hold (decided before writing)."""
    return Reply(400, reason, headers=(("Warning", f'399 imc-actors "{limit}"'),))


def _answer_too_large() -> Reply:
    return Reply(
        403,
        "Too Many Contacts",
        headers=(
            (
                "Warning",
                f'399 imc-actors "the 200 listing these bindings would be over {MAX_ANSWER} bytes"',
            ),
        ),
    )


def _contact_key(uri: str) -> str:
    """Comparison key for contact URIs (RFC 3261 §19.1.4, approximately).

    Scheme, host, port and parameters compare case-insensitively; the user part exactly.
    """
    scheme, colon, rest = uri.partition(":")
    if not colon:
        return uri.lower()
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    return f"{scheme.lower()}:{userinfo}@{hostpart.lower()}"


@dataclass(frozen=True, slots=True)
class Update:
    """What one accepted REGISTER changes (from :meth:`Registrar.plan`): for ``aor``, either
    every binding removed (``clear``) or ``changes`` applied in order, each ``(contact key,
    contact URI, seconds)`` (0 removes). ``call_id``/``cseq``/``user_agent`` of the request."""

    aor: str
    changes: tuple[tuple[str, str, int], ...]
    clear: bool
    call_id: str
    cseq: int
    user_agent: str

    def writes(self, wall_now: float) -> list[StoreWrite]:
        """The store records that make this update durable (expiry in wall-clock seconds)."""
        if self.clear:
            return [BindingClear(self.aor)]
        return [
            BindingSet(self.aor, uri, wall_now + expires, self.call_id, self.cseq, self.user_agent)
            if expires
            else BindingDelete(self.aor, uri)
            for _, uri, expires in self.changes
        ]


def _delta_seconds(text: str | None) -> int | None:
    """An Expires value as seconds; None when absent, 3600 when malformed (RFC 3261 §20.19).

    Values above 2**32-1 (the largest delta-seconds RFC 3261 §20.19 allows) count as 2**32-1;
    digits are counted before any are converted, so no length of digit string costs more
    than its scan (Python refuses to convert over 4,300 digits at all).
    """
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        return _MALFORMED_EXPIRES
    text = text.lstrip("0")
    if len(text) > _MAX_DELTA_DIGITS:
        return _MAX_DELTA
    return min(int(text or "0"), _MAX_DELTA)


class Registrar:
    """Bindings from address-of-record (``user@host``, lower case) to contact URIs.

    ``domains`` are the hosts the registrar is responsible for (compared case-insensitively).
    Requested expiry intervals above ``max_expires`` are shortened to it; intervals below
    ``min_expires`` (but above 0) are refused with 423; a request that names none gets
    ``default_expires``.
    """

    def __init__(
        self,
        domains: Sequence[str],
        *,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_contacts: int = 10,
        max_aors: int = 100_000,
    ) -> None:
        if not 1 <= min_expires <= default_expires <= max_expires:
            raise ValueError("need 1 <= min_expires <= default_expires <= max_expires")
        if max_contacts < 1 or max_aors < 1:
            raise ValueError("max_contacts and max_aors must be positive")
        self.max_contacts = max_contacts
        self.max_aors = max_aors
        self.domains = frozenset(d.lower() for d in domains)
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self._aors: dict[str, dict[str, _Binding]] = {}
        self._order = 0
        self._next_sweep = float("-inf")
        #: REGISTERs of a new address of record refused because ``max_aors`` were bound.
        self.full = 0
        self._full_log = LogBudget(1, 60.0)
        #: ``is_self(ip, port)``: whether that is this server's own socket (the server sets
        #: it from its transport); a Contact there is refused, since nothing sent to it could
        #: reach the user (it would come straight back). None: not checked.
        self.is_self: Callable[[str, int], bool] | None = None

    def _own_address(self, uri: str) -> str | None:
        """Why the usable Contact ``uri`` is still no place to deliver to: it is this server."""
        if self.is_self is None:
            return None
        hop = parse_hop(uri)
        if hop.transport != "ws" and self.is_self(hop.host.strip("[]"), hop.port):
            return f"cannot send to {uri[:80]!r}: {hop.host}:{hop.port} is this server"
        return None

    # ------------------------------------------------------------------ REGISTER
    def aor_of(self, to_uri: str) -> str | None:
        """The address of record (``user@host``, lower case) a REGISTER's To names, or None
        when it names no user or a domain this registrar does not serve (404)."""
        try:
            aor = aor_key(to_uri)
        except ValueError:
            return None
        return aor if aor.rpartition("@")[2] in self.domains else None

    def register(self, request: Request, now: float) -> Reply:
        """Process one REGISTER (RFC 3261 §10.3) and return the answer: :meth:`plan`, then
        :meth:`apply` at once (bindings in memory only)."""
        planned = self.plan(request, now)
        return planned if isinstance(planned, Reply) else self.apply(planned, now)

    def plan(self, request: Request, now: float) -> Reply | Update:
        """Decide what one REGISTER (RFC 3261 §10.3) does, changing nothing: the answer when
        it changes no binding (a refusal, or a query), else the :class:`Update` to make
        durable and then :meth:`apply`.

        - To URI without user, or in a domain not served: 404.
        - ``Require`` naming any extension: 420 Bad Extension with ``Unsupported``.
        - no Contact: 200 listing the current bindings (a query).
        - ``Contact: *``: needs ``Expires: 0`` and no other Contact (else 400); removes every
          binding.
        - a contact's interval (its ``expires`` param, else the Expires header, else the default)
          above 0 and below ``min_expires``: 423 with ``Min-Expires``; 0 removes the binding.
        - a binding last set by the same Call-ID with an equal or higher CSeq: 400 Invalid CSeq
          with a ``Warning`` (Kamailio's registrar answers the same), and nothing of the request
          is applied (RFC 3261 §10.3 steps 6-7: updates are all or nothing).
        - the 200 listing the resulting bindings would be over :data:`MAX_ANSWER` bytes (it
          could not be sent back over UDP): 403 Too Many Contacts with a ``Warning``, and
          nothing of the request is applied.
        - ``Expires``/``expires`` values above 2**32-1 count as 2**32-1 (then ``max_expires``).
        - else an :class:`Update`: :meth:`apply` gives the 200 listing every current binding of
          the AOR, each ``Contact: <uri>;expires=<seconds left>``.
        """
        if now >= self._next_sweep:
            self.purge(now)
            self._next_sweep = now + _SWEEP_INTERVAL
        aor = self.aor_of(request.to_uri)
        if aor is None:
            return Reply(404, "Not Found")
        user, _, host = aor.rpartition("@")
        if len(user) > MAX_LENGTH or len(host) > MAX_LENGTH:  # the bindings table's columns
            return _too_long(
                "Address Too Long", f"user and host may have at most {MAX_LENGTH} characters each"
            )
        required = [
            token.strip()
            for value in request.header_list("Require")
            for token in value.split(",")
            if token.strip()
        ]
        if required:
            return Reply(420, "Bad Extension", headers=(("Unsupported", ", ".join(required)),))

        contacts = [c for value in request.header_list("Contact") for c in parse_contacts(value)]
        current = self._live(aor, now)
        if not contacts:
            if not answer_fits(request, [b.uri for b in current.values()]):
                return _answer_too_large()
            return self._ok(aor, now)

        call_id, cseq = request.call_id, request.cseq
        header_expires = _delta_seconds(request.header("Expires"))

        if any(uri == "*" for uri, _ in contacts):
            if len(contacts) != 1 or header_expires != 0:
                return Reply(
                    400, "Invalid wildcard Contact (needs Expires: 0 and no other Contact)"
                )
            for binding in current.values():
                if binding.call_id == call_id and cseq <= binding.cseq:
                    return _out_of_order()
            return Update(aor, (), True, call_id, cseq, request.header("User-Agent") or "")

        changes: list[tuple[str, str, int]] = []
        if any(len(uri) > MAX_CONTACT for uri, _ in contacts):
            return _too_long(
                "Contact Too Long", f"a contact may have at most {MAX_CONTACT} characters"
            )
        for uri, params in contacts:
            expires = _delta_seconds(params.get("expires"))
            if expires is None:
                expires = header_expires
            if expires is None:
                expires = self.default_expires
            if 0 < expires < self.min_expires:
                return Reply(
                    423, "Interval Too Brief", headers=(("Min-Expires", str(self.min_expires)),)
                )
            if expires and (problem := unusable_contact(uri) or self._own_address(uri)):
                return Reply(400, "Invalid Contact", body=f"{problem}\r\n".encode())
            key = _contact_key(uri)
            existing = current.get(key)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                return _out_of_order()
            changes.append((key, uri, min(expires, self.max_expires)))
        bounded = self._bounded(
            Update(aor, tuple(changes), False, call_id, cseq, request.header("User-Agent") or ""),
            current,
        )
        if isinstance(bounded, Update):
            changed = {key for key, _, _ in bounded.changes}
            kept = [b.uri for key, b in current.items() if key not in changed]
            if not answer_fits(request, [*kept, *(uri for _, uri, exp in bounded.changes if exp)]):
                return _answer_too_large()  # before anything is written or applied
        return bounded

    def _bounded(self, update: Update, current: dict[str, _Binding]) -> Reply | Update:
        """``update`` within ``max_contacts`` (the oldest other bindings make room: RFC 5626
        §6 style) and ``max_aors`` (a new address of record beyond it gets 503)."""
        wanted = {key for key, _, seconds in update.changes if seconds}
        if len(wanted) > self.max_contacts:
            return Reply(
                403, "Too Many Contacts",
                headers=(("Warning", f'399 imc-actors "at most {self.max_contacts} contacts per address of record"'),),
            )  # fmt: skip
        if wanted and not current and len(self._aors) >= self.max_aors:
            self.full += 1
            self._full_log.log(
                log, logging.WARNING, time.monotonic(),
                "the registrar is full: %d addresses of record have bindings (max_aors); "
                "a REGISTER for a new one gets 503", len(self._aors), what="refusals",
            )  # fmt: skip
            return Reply(
                503, "Registrar Full",
                headers=(("Retry-After", "60"), ("Warning", f'399 imc-actors "at most {self.max_aors} registered addresses"')),
            )  # fmt: skip
        dropped = {key for key, _, seconds in update.changes if not seconds}
        kept = [b for k, b in current.items() if k not in wanted and k not in dropped]
        excess = len(kept) + len(wanted) - self.max_contacts
        if excess <= 0:
            return update
        kept.sort(key=lambda b: b.order)  # the least recently registered first
        evicted = tuple((_contact_key(b.uri), b.uri, 0) for b in kept[:excess])
        return Update(
            update.aor,
            evicted + update.changes,
            False,
            update.call_id,
            update.cseq,
            update.user_agent,
        )

    def apply(self, update: Update, now: float) -> Reply:
        """Change the bindings as ``update`` says (made by :meth:`plan`) and return the 200."""
        aor = update.aor
        if update.clear:
            self._aors.pop(aor, None)
            return self._ok(aor, now)
        current = self._live(aor, now)
        for key, uri, expires in update.changes:
            if expires == 0:
                current.pop(key, None)
            else:
                self._order += 1
                current[key] = _Binding(
                    uri, now + expires, update.call_id, update.cseq, self._order
                )
        if current:
            self._aors[aor] = current
        else:
            self._aors.pop(aor, None)
        return self._ok(aor, now)

    def knows(self, binding: Binding) -> bool:
        """Whether ``binding`` (as stored) is the one held here already: the same contact,
        set by the same REGISTER (Call-ID and CSeq). A node reading back its own writes."""
        held = self._aors.get(binding.aor.lower(), {}).get(_contact_key(binding.contact))
        return held is not None and (held.call_id, held.cseq) == (binding.call_id, binding.cseq)

    def restore(self, bindings: Sequence[Binding], now: float, wall_now: float) -> int:
        """Add stored ``bindings`` (oldest first; expiry in wall-clock seconds, ``wall_now``
        is the wall clock at ``now``); expired ones are skipped. Returns how many were added."""
        added = 0
        for binding in bindings:
            left = binding.expires - wall_now
            if left <= 0:
                continue
            aor = binding.aor.lower()
            self._order += 1
            contacts = self._aors.setdefault(aor, {})
            contacts[_contact_key(binding.contact)] = _Binding(
                binding.contact, now + left, binding.call_id, binding.cseq, self._order
            )
            added += 1
        return added

    # ------------------------------------------------------------------ queries
    def statistics(self) -> tuple[int, int]:
        """``(addresses of record, bindings)`` held now, expired ones not yet swept included."""
        return len(self._aors), sum(len(bindings) for bindings in self._aors.values())

    def lookup(self, aor: str, now: float) -> list[str]:
        """Unexpired contact URIs of ``aor`` (``user@host``, any case), most recent first."""
        contacts = self._aors.get(aor) or self._aors.get(aor.lower())
        if contacts is not None and len(contacts) == 1:  # the usual case, once per delivery
            for binding in contacts.values():
                if binding.expires_at > now:
                    return [binding.uri]
        live = self._live(aor.lower(), now)
        return [b.uri for b in sorted(live.values(), key=lambda b: b.order, reverse=True)]

    def bindings(self, now: float) -> dict[str, list[tuple[str, float]]]:
        """Every AOR with unexpired bindings -> ``[(contact uri, expires_at)]``, most recent first."""
        self.purge(now)
        return {
            aor: [
                (b.uri, b.expires_at)
                for b in sorted(contacts.values(), key=lambda b: b.order, reverse=True)
            ]
            for aor, contacts in self._aors.items()
        }

    def purge(self, now: float) -> int:
        """Drop every binding expired at ``now``; return how many were dropped."""
        dropped = 0
        for aor in list(self._aors):
            contacts = self._aors[aor]
            before = len(contacts)
            self._live(aor, now)
            dropped += before - len(contacts)
        return dropped

    # ------------------------------------------------------------------ helpers
    def _live(self, aor: str, now: float) -> dict[str, _Binding]:
        """The AOR's binding dict with expired entries removed (a new empty dict when none)."""
        contacts = self._aors.get(aor)
        if contacts is None:
            return {}
        for key in [k for k, b in contacts.items() if b.expires_at <= now]:
            del contacts[key]
        if not contacts:
            del self._aors[aor]
        return contacts

    def _ok(self, aor: str, now: float) -> Reply:
        live = sorted(self._live(aor, now).values(), key=lambda b: b.order, reverse=True)
        headers = tuple(
            ("Contact", f"<{b.uri}>;expires={max(0, round(b.expires_at - now))}") for b in live
        )
        return Reply(200, "OK", headers=headers)


def _out_of_order() -> Reply:
    return Reply(
        400,
        "Invalid CSeq",
        headers=(("Warning", '399 imc-actors "CSeq not above the one stored for this Call-ID"'),),
    )
