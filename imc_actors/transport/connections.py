"""The TCP and TLS connection pool: every live connection, and the outgoing ones by
destination.

An outgoing request over TCP or TLS reuses the open connection of that transport to its
destination, waits for one being opened by another request, or opens one (its reader started
in the transport's nursery; a TLS one is opened with the transport's client context and
handshaken first). A destination that refused a connection is not tried again for
:data:`TCP_RETRY_AFTER` seconds unless TCP is required (the caller then sends over UDP); it is
forgotten once those have passed, so the refusals remembered are those of the last
:data:`TCP_RETRY_AFTER` seconds only, however many destinations (contacts an attacker
registers, one port after another) have refused over time.
Connections accepted by our listeners (TCP and TLS alike) are tracked here too, so shutdown
closes them all, and bounded: beyond ``max_accepted`` accepted connections in all, or
``max_per_ip`` from one address, a new one is closed at once, before any TLS handshake (logged
at most once per :data:`~.tcp.EXHAUSTED_LOG_INTERVAL` seconds). Every live connection is also
in the ``registry`` (:class:`~.bindings.ConnectionBindings`), which knows the contacts
registered over it.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
from collections.abc import Callable, Sequence

import trio

from .bindings import ConnectionBindings
from .limits import LogInterval
from .sendqueue import DEFAULT_SEND_QUEUE
from .tcp import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BUFFER,
    EXHAUSTED_LOG_INTERVAL,
    FrameCallback,
    FramingErrorCallback,
    TcpConnection,
    open_connection,
)
from .tls import client_context, open_tls_connection
from .udp import Address

__all__ = ["TCP_RETRY_AFTER", "Connections"]

log = logging.getLogger(__name__)

#: How long a hop that refused a TCP connection is sent UDP without trying TCP again.
TCP_RETRY_AFTER = 30.0


class Connections:
    """The transport's TCP and TLS connections; each one's reader calls ``on_frame``,
    ``on_framing_error`` and, when it ends, ``on_closed`` (which must call :meth:`closed`).
    ``refused`` counts the accepted connections closed at once because a cap was reached.
    ``registry`` learns of every connection opened and closed; ``tls_client`` is the context
    outgoing TLS connections verify their peer with (default: the system's trusted CAs)."""

    def __init__(
        self,
        on_frame: FrameCallback,
        on_framing_error: FramingErrorCallback,
        on_closed: Callable[[TcpConnection], None],
        *,
        registry: ConnectionBindings | None = None,
        tls_client: ssl.SSLContext | None = None,
    ) -> None:
        self._callbacks = (on_frame, on_framing_error, on_closed)
        self.registry = registry if registry is not None else ConnectionBindings()
        self._tls_client = tls_client
        self._live: set[TcpConnection] = set()
        # keyed by (transport, destination): a TCP and a TLS connection to one host are two
        self._outgoing: dict[tuple[str, Address], TcpConnection] = {}
        self._connecting: dict[tuple[str, Address], trio.Event] = {}
        # in the order of their expiry (all last TCP_RETRY_AFTER): see _refused
        self._refused_until: dict[tuple[str, Address], float] = {}
        self._nursery: trio.Nursery | None = None
        self._connect_timeout = 5.0
        self._idle_timeout = DEFAULT_IDLE_TIMEOUT
        self._max_buffer = DEFAULT_MAX_BUFFER
        self._send_queue = DEFAULT_SEND_QUEUE
        self._local_hosts: list[str] = []
        self._max_accepted = 2048
        self._max_per_ip = 256
        self._max_outgoing = 2048
        self._outgoing_log = LogInterval(EXHAUSTED_LOG_INTERVAL)
        #: outgoing connections not opened because ``max_outgoing`` were open or opening
        self.outgoing_refused = 0
        self._accepted: dict[str, int] = {}  # peer host -> accepted connections live
        self._accepted_total = 0
        self._refused_log = LogInterval(EXHAUSTED_LOG_INTERVAL)
        self.refused = 0

    def __len__(self) -> int:
        """How many connections are live (both directions)."""
        return len(self._live)

    def open(
        self,
        nursery: trio.Nursery,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_accepted: int = 2048,
        max_per_ip: int = 256,
        send_queue: int = DEFAULT_SEND_QUEUE,
        local_hosts: Sequence[str] = (),
        max_outgoing: int = 2048,
    ) -> None:
        """Start a run: readers of new outgoing connections go to ``nursery`` (each with a send
        queue of ``send_queue`` bytes); at most ``max_accepted`` accepted connections live at
        once, ``max_per_ip`` from one address, and at most ``max_outgoing`` outgoing ones open or
        being opened (beyond: :meth:`get` says None, as for a hop that refused). ``local_hosts``: the hosts our TCP listeners
        are bound to, in order; an outgoing TCP connection is made from the first one of the
        destination's family and scope (loopback or not), so its source address is one we
        advertise (another node checks a forwarded request's source against them), not the
        kernel's choice (127.0.0.1 for every loopback destination)."""
        self._nursery = nursery
        self._local_hosts = [h for h in local_hosts if h not in ("0.0.0.0", "::", "", "localhost")]
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_buffer = max_buffer
        self._max_accepted = max_accepted
        self._max_per_ip = max_per_ip
        self._max_outgoing = max_outgoing
        self._send_queue = send_queue

    def _local_for(self, host: str) -> str | None:
        """The local host to connect to ``host`` from (see :meth:`open`), None for the kernel's."""
        try:
            dest = ipaddress.ip_address(host)
        except ValueError:
            return None
        for local in self._local_hosts:
            try:
                address = ipaddress.ip_address(local)
            except ValueError:
                continue
            if address.version == dest.version and address.is_loopback == dest.is_loopback:
                return local
        return None

    async def aclose(self) -> None:
        """End a run: close every connection and forget the outgoing ones. Checkpoints (the
        caller shields it)."""
        self._nursery = None
        for conn in list(self._live):
            await conn.aclose()
        self._outgoing.clear()

    def admit(self, host: str) -> bool:
        """Count one more accepted connection from ``host``; False (nothing counted, the
        refusal logged at most once per interval) when ``max_accepted`` connections in all, or
        ``max_per_ip`` from ``host``, are live. Each True is paired with :meth:`release`.
        TCP, TLS and WebSocket listeners share this one budget."""
        from_host = self._accepted.get(host, 0)
        if self._accepted_total >= self._max_accepted or from_host >= self._max_per_ip:
            self.refused += 1
            if self._refused_log.due(trio.current_time()):
                which = (
                    f"tcp_max_connections {self._max_accepted}"
                    if self._accepted_total >= self._max_accepted
                    else f"tcp_max_per_ip {self._max_per_ip} from {host}"
                )
                log.warning(
                    "%s reached: closing new connections (%d so far; logged at most every %.0f s)",
                    which,
                    self.refused,
                    EXHAUSTED_LOG_INTERVAL,
                )
            return False
        self._accepted[host] = from_host + 1
        self._accepted_total += 1
        return True

    def release(self, host: str) -> None:
        """An accepted connection from ``host`` that :meth:`admit` counted has ended."""
        self._accepted_total -= 1
        left = self._accepted[host] - 1
        if left:
            self._accepted[host] = left
        else:
            del self._accepted[host]

    async def serve(self, conn: TcpConnection) -> None:
        """Track an accepted connection and read it until it ends; close it at once when
        ``max_accepted`` connections, or ``max_per_ip`` from its address, are live."""
        host = conn.peer[0]
        if not self.admit(host):
            await conn.aclose()
            return
        self._live.add(conn)
        self.registry.opened(conn)
        try:
            await conn.run(*self._callbacks)
        finally:
            self.release(host)

    def closed(self, conn: TcpConnection) -> None:
        """Forget ``conn`` (its reader ended), and the contacts registered over it."""
        self._live.discard(conn)
        self.registry.closed(conn)
        for key, known in list(self._outgoing.items()):
            if known is conn:
                del self._outgoing[key]

    def _refused(self, key: tuple[str, Address], now: float) -> None:
        """Remember that ``key`` refused at ``now``, and forget the refusals that have expired.
        Every entry lasts :data:`TCP_RETRY_AFTER`, so the dict (insertion-ordered, a key put
        at its end again) is in the order of expiry and the expired ones are at its front."""
        refused = self._refused_until
        refused.pop(key, None)
        while refused:
            old, until = next(iter(refused.items()))
            if until > now:
                break
            del refused[old]
        refused[key] = now + TCP_RETRY_AFTER

    def pooled(self, dest: Address, *, tls: str | None = None) -> TcpConnection | None:
        """The open outgoing connection to ``dest`` (TLS with ``tls``, else TCP), or None
        when none is open (:meth:`get` opens one). No checkpoint."""
        conn = self._outgoing.get(("tls" if tls is not None else "tcp", dest))
        return conn if conn is not None and not conn.closed else None

    async def get(
        self, dest: Address, *, required: bool, tls: str | None = None
    ) -> TcpConnection | None:
        """A connection to ``dest``: the open one, or a new one (its reader started). With
        ``tls`` (the name the peer's certificate must have: the URI's host) a TLS connection,
        else a TCP one.

        None when the hop refuses, does not answer in ``connect_timeout`` or fails the TLS
        handshake, or ``max_outgoing`` connections are open or opening; a hop that refused is
        not tried again for 30 s unless ``required``.
        Checkpoints.
        """
        key = ("tls" if tls is not None else "tcp", dest)
        conn = self.pooled(dest, tls=tls)
        if conn is not None:
            await trio.lowlevel.checkpoint()
            return conn
        now = trio.current_time()
        if not required and self._refused_until.get(key, -math.inf) > now:
            await trio.lowlevel.checkpoint()
            return None
        pending = self._connecting.get(key)
        if pending is not None:
            await pending.wait()
            conn = self._outgoing.get(key)
            return conn if conn is not None and not conn.closed else None
        if len(self._outgoing) + len(self._connecting) >= self._max_outgoing:
            # contacts registered over TCP, one per port, could open a descriptor each
            self.outgoing_refused += 1
            if self._outgoing_log.due(now):
                log.warning("tcp_max_outgoing %d reached: not connecting to %s:%d (logged at most "
                            "every %g s)", self._max_outgoing, dest[0], dest[1], EXHAUSTED_LOG_INTERVAL)  # fmt: skip
            await trio.lowlevel.checkpoint()
            return None
        done = self._connecting[key] = trio.Event()
        try:
            if tls is not None:
                if self._tls_client is None:
                    self._tls_client = client_context()
                conn = await open_tls_connection(
                    dest[0],
                    dest[1],
                    context=self._tls_client,
                    server_hostname=tls,
                    timeout=self._connect_timeout,
                    idle_timeout=self._idle_timeout,
                    max_buffer=self._max_buffer,
                    send_queue=self._send_queue,
                )
            else:
                conn = await open_connection(
                    dest[0],
                    dest[1],
                    timeout=self._connect_timeout,
                    idle_timeout=self._idle_timeout,
                    max_buffer=self._max_buffer,
                    send_queue=self._send_queue,
                    local_address=self._local_for(dest[0]),
                )
        except OSError as exc:
            log.debug("%s connect to %s:%d failed: %s", key[0], dest[0], dest[1], exc)
            self._refused(key, trio.current_time())
            return None
        finally:
            del self._connecting[key]
            done.set()
        self._refused_until.pop(key, None)
        self._outgoing[key] = conn
        self._live.add(conn)
        self.registry.opened(conn)
        assert self._nursery is not None
        self._nursery.start_soon(conn.run, *self._callbacks)
        return conn
