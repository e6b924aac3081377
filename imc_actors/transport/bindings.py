"""The connections contacts were registered over: one registry for TCP, TLS and WebSocket.

A phone behind NAT, and a browser, can only be reached over the connection it registered on
(RFC 5626 §5.3 calls it a flow; RFC 7118 §5 says the same of WebSockets). The server reports
each accepted REGISTER's binding changes (:meth:`ConnectionBindings.bind`), and routing asks
:meth:`ConnectionBindings.connection` for ``(aor, contact)`` before it opens anything: while
that connection is open, requests to the contact go over it, whatever host and port the
contact names. Once it has closed, a ``transport=ws`` contact cannot be reached at all (480 at
once); a TCP or TLS contact gets a new connection to the host and port it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .records import Source
from .sendqueue import SendQueue
from .udp import Address

__all__ = ["BoundConnection", "ConnectionBindings"]


class BoundConnection(Protocol):
    """What the registry needs of a connection (:class:`~.tcp.TcpConnection`,
    :class:`~.tls.TlsConnection`, :class:`~.websocket.WsConnection`)."""

    transport: str
    peer: Address
    closed: bool
    bindings: dict[tuple[str, str], float]
    queue: SendQueue

    @property
    def source(self) -> Source: ...

    async def send(self, data: bytes) -> bool: ...

    def try_send(self, data: bytes) -> bool: ...


class ConnectionBindings:
    """The open connections (every TCP, TLS and WebSocket connection, both directions) and
    the contacts registered over each.

    Bounded by what the registrar accepted: an entry exists only for a binding a REGISTER over
    that connection set, and goes when the binding is removed, replaced over another
    connection or transport, expires (noticed at the connection's next REGISTER), or the
    connection closes.
    """

    def __init__(self) -> None:
        self._live: dict[Source, BoundConnection] = {}
        self._by_aor: dict[str, dict[str, BoundConnection]] = {}

    def __len__(self) -> int:
        """How many connections are open (every transport)."""
        return len(self._live)

    def count(self, transport: str) -> int:
        """How many ``transport`` connections are open."""
        return sum(1 for source in self._live if source.transport == transport)

    def queued(self) -> int:
        """Bytes waiting in the send queues of the open connections."""
        return sum(conn.queue.queued for conn in self._live.values())

    def opened(self, conn: BoundConnection) -> None:
        """Track ``conn`` (its reader is starting)."""
        self._live[conn.source] = conn

    def closed(self, conn: BoundConnection) -> None:
        """Forget ``conn`` and every contact registered over it."""
        source = conn.source
        if self._live.get(source) is conn:
            del self._live[source]
        for aor, contact in list(conn.bindings):
            self._drop(aor, contact, conn)
        conn.bindings.clear()

    def bind(
        self,
        source: Source,
        aor: str,
        contacts: Sequence[tuple[str, int]],
        clear: bool,
        now: float,
    ) -> None:
        """Record what one accepted REGISTER for ``aor`` (``user@host``, lower case) changed:
        ``contacts`` are ``(contact URI as registered, seconds)`` (0 removes it), ``clear``
        removes every contact of the AOR. Contacts registered over a connection (``source``
        a TCP, TLS or WebSocket one) are reached over it from now on; any other source takes
        them off theirs."""
        if clear:
            for contact, conn in list(self._by_aor.get(aor, {}).items()):
                self._drop(aor, contact, conn)
            return
        conn = self._live.get(source)
        if conn is not None:
            for key, expires_at in list(conn.bindings.items()):
                if expires_at <= now:
                    self._drop(key[0], key[1], conn)
        for contact, seconds in contacts:
            known = self._by_aor.get(aor, {}).get(contact)
            if known is not None:
                self._drop(aor, contact, known)
            if conn is not None and seconds > 0 and not conn.closed:
                self._by_aor.setdefault(aor, {})[contact] = conn
                conn.bindings[(aor, contact)] = now + seconds

    def connection(self, aor: str | None, contact: str) -> BoundConnection | None:
        """The open connection ``contact`` of ``aor`` was registered over, or None."""
        conn = self._by_aor.get(aor or "", {}).get(contact)
        return conn if conn is not None and not conn.closed else None

    def _drop(self, aor: str, contact: str, conn: BoundConnection) -> None:
        contacts = self._by_aor.get(aor)
        if contacts is not None and contacts.get(contact) is conn:
            del contacts[contact]
            if not contacts:
                del self._by_aor[aor]
        conn.bindings.pop((aor, contact), None)
