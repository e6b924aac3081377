"""Routing: where an outgoing request goes, where responses to an incoming one go back, and
which of our own addresses a message names.

Outgoing (spec §6): :func:`parse_hop` reads a URI's next hop; :class:`Router` picks the
targets of a request (``outbound_proxy``, else every contact ``locate`` returns for the
Request-URI's AOR, else the Request-URI's host), resolves DNS names, and chooses the local
socket and the address our Via names; a contact registered over a TCP, TLS or WebSocket
connection is reached over that connection while it is open (:meth:`Router.connection`). Incoming: :func:`via_fix` and :func:`patch_via` give a
response the ``received``/``rport`` of RFC 3261 §18.2.1 and RFC 3581, and :func:`via_port` the
port it goes back to without ``rport``.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from imc_actors.config import ListenAddress
from imc_actors.sip import Request, aor_key

from .bindings import BoundConnection, ConnectionBindings
from .limits import host_ip
from .records import Source
from .tcp import TcpConnection, TcpListener
from .udp import Address, UdpEndpoint

__all__ = [
    "WILDCARD",
    "Hop",
    "NoRoute",
    "Router",
    "Target",
    "ViaFix",
    "find_call_id_host",
    "is_ip",
    "parse_hop",
    "patch_via",
    "via_fix",
    "via_port",
]

log = logging.getLogger(__name__)

#: Hosts a socket bound to "any address" reports.
WILDCARD = ("0.0.0.0", "::", "")
#: Destination addresses whose local address (the kernel's route to them) is remembered; the
#: table is emptied when full (a wildcard bind asks for every destination a notice goes to:
#: contacts, senders' and invitees' hosts, as many as a client cares to name).
LOCAL_IP_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Hop:
    """A next hop from :func:`parse_hop`: ``host`` as written (IP literal or DNS name, IPv6
    without brackets), ``port``, ``transport`` 'udp', 'tcp', 'tls', 'ws' or None (chosen by
    message size)."""

    host: str
    port: int
    transport: str | None


@dataclass(frozen=True, slots=True)
class Target:
    """One destination of an outgoing request: its Request-URI and next hop, and the AOR
    whose registered contact it is (None for a proxy or a Request-URI's own host)."""

    request_uri: str
    hop: Hop
    aor: str | None = None


class NoRoute(Exception):
    """The request cannot be sent to this target (answered 503)."""


class NotRegistered(ValueError):
    """The Request-URI is a user of a domain we serve who has no binding: unreachable here
    (answered 480, never looked up in DNS or sent to port 5060 of the domain). ``aor`` is
    that user's ``user@host``."""

    def __init__(self, aor: str) -> None:
        super().__init__(f"{aor} is not registered")
        self.aor = aor


@functools.lru_cache(maxsize=4096)
def parse_hop(uri: str) -> Hop:
    """Host, port and transport of a SIP URI (``sip:user@host:port;transport=tcp``) or a plain
    ``host[:port]``. The port defaults to 5060, 5061 over TLS. ``transport=ws`` is kept (such a
    contact is reached over its WebSocket connection, never at its host). A ``sips:`` URI, and
    ``transport=tls``, are reached over TLS only (RFC 3261 §26.2.2: a sips URI is never sent in
    the clear; ``sips:…;transport=tcp`` is TLS over TCP, RFC 5630). Raises ValueError when
    there is no host, for another transport (``wss``, ``sctp``), or for ``sips:`` with
    ``transport=udp`` or ``ws``."""
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    scheme, colon, rest = text.partition(":")
    lowered = scheme.lower()
    secure = bool(colon) and lowered == "sips"
    if colon and lowered in ("sip", "sips"):
        text = rest
    text = text.partition("?")[0]
    at = text.rfind("@")
    if at >= 0:
        text = text[at + 1 :]
    hostport, _, params = text.partition(";")
    transport: str | None = None
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            value = value.strip().lower()
            if value not in ("udp", "tcp", "tls", "ws") or (secure and value in ("udp", "ws")):
                raise ValueError(f"unsupported transport {value!r} in {uri!r}")
            transport = value
    if secure:
        transport = "tls"
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host, port_text = hostport, ""
    host = host.strip()
    if not host:
        raise ValueError(f"no host in {uri!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {uri!r}")
        port = int(port_text)
    else:
        port = 5061 if transport == "tls" else 5060
    return Hop(host, port, transport)


ViaFix = tuple[bytes, bytes] | None


def via_fix(req: Request, source: Source) -> tuple[ViaFix, bool]:
    """How responses to ``req`` must rewrite their top Via line, and whether it has rport.

    RFC 3261 §18.2.1: add ``received=<source IP>`` when the sent-by host differs from it;
    RFC 3581: with ``rport``, add ``received`` and fill in ``rport=<source port>``. Returns
    ``((old line, new line), has_rport)`` for :func:`patch_via`, or ``(None, has_rport)`` when
    the Via stays as it is. (Patching the built bytes is much cheaper than copying the Request.)
    """
    value = next((v for name, v in req.headers if name == "Via"), None)
    if value is None:
        return None, False
    top, comma, rest = value.partition(",")
    sent, semi, params = top.partition(";")
    has_rport = False
    kept: list[str] = []
    if semi:
        for param in params.split(";"):
            pname = param.partition("=")[0].strip().lower()
            if pname == "rport":
                has_rport = True
            elif pname != "received":
                kept.append(param.strip())
    if has_rport:
        kept.append(f"received={source.host}")
        kept.append(f"rport={source.port}")
    else:
        sent_host = req.via_sent_by
        if sent_host.startswith("["):
            sent_host = sent_host[1:].partition("]")[0]
        elif sent_host.count(":") == 1:
            sent_host = sent_host.partition(":")[0]
        if sent_host == source.host.lower():
            return None, False
        kept.append(f"received={source.host}")
    new_value = ";".join([sent.rstrip(), *kept]) + comma + rest
    return (f"\r\nVia: {value}\r\n".encode(), f"\r\nVia: {new_value}\r\n".encode()), has_rport


def patch_via(data: bytes, fix: ViaFix) -> bytes:
    """Apply a :func:`via_fix` to response bytes from :func:`build_response`."""
    if fix is None:
        return data
    return data.replace(fix[0], fix[1], 1)


def via_port(req: Request) -> int:
    """The port of the top Via's sent-by (5060 when it names none): where a response goes
    back over UDP without ``rport`` (RFC 3261 §18.2.2)."""
    sent_by = req.via_sent_by
    if sent_by.startswith("["):
        tail = sent_by.partition("]")[2]
        port_text = tail.removeprefix(":")
    elif sent_by.count(":") == 1:
        port_text = sent_by.partition(":")[2]
    else:
        port_text = ""
    return int(port_text) if port_text.isdigit() else 5060


def _getaddrinfo(host: str, port: int) -> list[Any]:
    """``socket.getaddrinfo`` for a UDP next hop (run in a thread). Asked afresh each time: a
    name that moves is followed at once (the resolver's own cache, where the machine runs
    one, honours the records' TTLs; this process keeps none)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)


@functools.lru_cache(maxsize=4096)
def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (nothing to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def find_call_id_host(bound: Sequence[ListenAddress]) -> str:
    """The host part of our Call-IDs: the first bound address that is not a wildcard, else the
    machine's name."""
    for address in bound:
        if address.host not in WILDCARD:
            return address.host
    return socket.gethostname()


class Router:
    """Next hops of outgoing requests (spec §6) and the local addresses they name.

    ``udp`` and ``tcp`` are the transport's bound sockets (the same lists, filled and cleared
    by :class:`~imc_actors.transport.SipTransport`); ``proxy_hop`` the ``outbound_proxy``'s hop;
    ``locate(aor) -> contact URIs`` the registrar's lookup, or None; ``local_domains`` the
    domains whose users only ``locate`` can find (with ``locate`` set and no proxy, a user of
    one of them without a binding is :class:`NotRegistered`); ``bindings`` the connections
    contacts were registered over (the transport's :class:`~.bindings.ConnectionBindings`: TCP,
    TLS and WebSocket alike).
    """

    def __init__(
        self,
        udp: list[UdpEndpoint],
        tcp: list[TcpListener],
        proxy_hop: Hop | None,
        locate: Callable[[str], list[str]] | None,
        *,
        local_domains: Sequence[str] = (),
        bindings: ConnectionBindings | None = None,
        dns_timeout: float = 5.0,
        dns_lookups_max: int = 16,
    ) -> None:
        self._udp = udp
        self.dns_timeout = dns_timeout
        #: Threads for getaddrinfo: their own, so names that hang cannot take the threads the
        #: rest of the server (and trio's default limiter) needs.
        self._dns_threads = trio.CapacityLimiter(dns_lookups_max)
        #: Lookups that failed for want of an answer within ``dns_timeout``.
        self.dns_timeouts = 0
        self.bindings = bindings if bindings is not None else ConnectionBindings()
        self._tcp = tcp
        self._proxy_hop = proxy_hop
        self.locate = locate
        #: ``await find(aor)``: look for bindings ``locate`` does not know yet (another
        #: node's REGISTER, issue 13); True when it found some (``locate`` has them now).
        self.find: Callable[[str], Awaitable[bool]] | None = None
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self._local_ip_cache: dict[str, str] = {}

    def targets(self, request_uri: str, *, direct: bool = False) -> list[Target]:
        """Destinations for a request to ``request_uri`` (spec §6). ``direct``: the
        Request-URI's own host, past ``outbound_proxy`` and the registrar (a request to another
        node, which the proxy in front of the nodes would not route). Raises ValueError."""
        if direct:
            return [Target(request_uri, parse_hop(request_uri))]
        if self._proxy_hop is not None:
            return [Target(request_uri, self._proxy_hop)]
        if self.locate is not None:
            try:
                aor = aor_key(request_uri)
            except ValueError:
                aor = None
            contacts = self.locate(aor) if aor else []
            targets: list[Target] = []
            for contact in contacts:
                try:
                    targets.append(Target(contact, parse_hop(contact), aor))
                except ValueError as exc:
                    log.warning("unusable contact %r for %s: %s", contact, aor, exc)
            if targets:
                return targets
            if aor is not None and aor.rpartition("@")[2] in self.local_domains:
                raise NotRegistered(aor)
        return [Target(request_uri, parse_hop(request_uri))]

    def connection(self, target: Target) -> BoundConnection | None:
        """The open connection ``target``'s contact was registered over (RFC 5626's flow; RFC
        7118: the only way to reach a browser), or None when there is none (any more). A
        ``sips:``/TLS contact is only ever sent over a TLS connection."""
        if target.aor is None:
            return None
        conn = self.bindings.connection(target.aor, target.request_uri)
        if conn is not None and target.hop.transport == "tls" and conn.transport != "tls":
            return None
        return conn

    def is_self(self, dest: Address) -> bool:
        """True when ``dest`` (ip, port) is one of our own listening sockets: a request sent
        there would come straight back to us."""
        ip, port = dest[0], dest[1]
        if ip.lower().startswith("::ffff:"):  # ::ffff:127.0.0.1 is 127.0.0.1 too
            ip = str(host_ip(ip) or ip)
        for bound in [e.address for e in self._udp] + [t.address for t in self._tcp]:
            if bound[1] != port:
                continue
            host = bound[0]
            if host == ip:
                return True
            if host in WILDCARD:
                family = socket.AF_INET6 if ":" in ip else socket.AF_INET
                if ipaddress.ip_address(ip).is_loopback or self.local_ip_towards(family, ip) == ip:
                    return True
        return False

    async def resolve(self, hop: Hop) -> tuple[int, Address]:
        """(address family, (ip, port)) of ``hop``; IP literals as is, names via getaddrinfo
        in a thread of the router's own (at most ``dns_lookups_max``), within ``dns_timeout``.

        Raises :class:`NoRoute`. Checkpoints.
        """
        host = hop.host
        if is_ip(host):
            await trio.lowlevel.checkpoint()
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, hop.port)
        infos = None
        queued = self._dns_threads.available_tokens == 0
        with trio.move_on_after(self.dns_timeout):
            try:
                infos = await trio.to_thread.run_sync(
                    _getaddrinfo, host, hop.port, limiter=self._dns_threads, abandon_on_cancel=True
                )
            except (OSError, UnicodeError) as exc:  # UnicodeError: a label over 63 characters
                raise NoRoute(f"cannot resolve {host}: {exc}") from None
        if infos is None:
            self.dns_timeouts += 1
            waited = (
                f", waiting behind {self._dns_threads.total_tokens} lookups (dns_lookups_max)"
                if queued
                else ""
            )
            raise NoRoute(
                f"cannot resolve {host}: no answer within dns_timeout ({self.dns_timeout:g} s)"
                + waited
            )
        families = {e.family for e in self._udp} or {socket.AF_INET, socket.AF_INET6}
        for family, _, _, _, sockaddr in infos:
            if family in families:
                return family, (str(sockaddr[0]), int(sockaddr[1]))
        if infos:
            family, _, _, _, sockaddr = infos[0]
            return family, (str(sockaddr[0]), int(sockaddr[1]))
        raise NoRoute(f"no address for {host}")

    def udp_for(self, family: int) -> UdpEndpoint | None:
        """Our UDP socket of address ``family``, or None."""
        for endpoint in self._udp:
            if endpoint.family == family:
                return endpoint
        return None

    def via_address(self, endpoint: UdpEndpoint, dest: Address) -> Address:
        """The sent-by of our Via for a request from ``endpoint`` to ``dest`` (a wildcard
        bind names the local address towards ``dest``)."""
        host, port = endpoint.address
        if host in WILDCARD:
            host = self.local_ip_towards(endpoint.family, dest[0])
        return host, port

    def tcp_via(self, family: int, conn: TcpConnection) -> Address:
        """The sent-by of our Via for a request over ``conn``: our listener of its transport
        (TCP or TLS) and ``family`` (a wildcard bind names the connection's local address),
        else the connection's own."""
        for listener in self._tcp:
            if listener.transport == conn.transport and listener.listeners[0].socket.family == family:
                host, port = listener.address
                if host in WILDCARD:
                    host = conn.local[0]
                return host, port
        return conn.local

    def local_ip_towards(self, family: int, ip: str) -> str:
        """The local address the kernel would use to reach ``ip`` (no packet is sent),
        remembered for at most :data:`LOCAL_IP_CACHE` destinations."""
        cached = self._local_ip_cache.get(ip)
        if cached is None:
            probe = socket.socket(family, socket.SOCK_DGRAM)
            try:
                probe.connect((ip, 9))
                cached = probe.getsockname()[0]
            except OSError:
                cached = "127.0.0.1" if family == socket.AF_INET else "::1"
            finally:
                probe.close()
            if len(self._local_ip_cache) >= LOCAL_IP_CACHE:
                self._local_ip_cache.clear()
            self._local_ip_cache[ip] = cached
        return cached
