"""The TCP connection pool: every live connection, and the outgoing ones by destination.

An outgoing request over TCP reuses the open connection to its destination, waits for one
being opened by another request, or opens one (its reader started in the transport's
nursery). A destination that refused a connection is not tried again for
:data:`TCP_RETRY_AFTER` seconds unless TCP is required (the caller then sends over UDP).
Connections accepted by our listeners are tracked here too, so shutdown closes them all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from .tcp import (
    DEFAULT_IDLE_TIMEOUT,
    FrameCallback,
    FramingErrorCallback,
    TcpConnection,
    open_connection,
)
from .udp import Address

__all__ = ["TCP_RETRY_AFTER", "Connections"]

log = logging.getLogger(__name__)

#: How long a hop that refused a TCP connection is sent UDP without trying TCP again.
TCP_RETRY_AFTER = 30.0


class Connections:
    """The transport's TCP connections; each one's reader calls ``on_frame``,
    ``on_framing_error`` and, when it ends, ``on_closed`` (which must call :meth:`closed`)."""

    def __init__(
        self,
        on_frame: FrameCallback,
        on_framing_error: FramingErrorCallback,
        on_closed: Callable[[TcpConnection], None],
    ) -> None:
        self._callbacks = (on_frame, on_framing_error, on_closed)
        self._live: set[TcpConnection] = set()
        self._outgoing: dict[Address, TcpConnection] = {}
        self._connecting: dict[Address, trio.Event] = {}
        self._refused_until: dict[Address, float] = {}
        self._nursery: trio.Nursery | None = None
        self._connect_timeout = 5.0
        self._idle_timeout = DEFAULT_IDLE_TIMEOUT

    def __len__(self) -> int:
        """How many connections are live (both directions)."""
        return len(self._live)

    def open(self, nursery: trio.Nursery, *, connect_timeout: float, idle_timeout: float) -> None:
        """Start a run: readers of new outgoing connections go to ``nursery``."""
        self._nursery = nursery
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout

    async def aclose(self) -> None:
        """End a run: close every connection and forget the outgoing ones. Checkpoints (the
        caller shields it)."""
        self._nursery = None
        for conn in list(self._live):
            await conn.aclose()
        self._outgoing.clear()

    async def serve(self, conn: TcpConnection) -> None:
        """Track an accepted connection and read it until it ends."""
        self._live.add(conn)
        await conn.run(*self._callbacks)

    def closed(self, conn: TcpConnection) -> None:
        """Forget ``conn`` (its reader ended)."""
        self._live.discard(conn)
        for addr, known in list(self._outgoing.items()):
            if known is conn:
                del self._outgoing[addr]

    async def get(self, dest: Address, *, required: bool) -> TcpConnection | None:
        """A connection to ``dest``: the open one, or a new one (its reader started).

        None when the hop refuses or does not answer in ``connect_timeout``; a hop that refused
        is not tried again for 30 s unless ``required``. Checkpoints.
        """
        conn = self._outgoing.get(dest)
        if conn is not None and not conn.closed:
            await trio.lowlevel.checkpoint()
            return conn
        now = trio.current_time()
        if not required and self._refused_until.get(dest, -math.inf) > now:
            await trio.lowlevel.checkpoint()
            return None
        pending = self._connecting.get(dest)
        if pending is not None:
            await pending.wait()
            conn = self._outgoing.get(dest)
            return conn if conn is not None and not conn.closed else None
        done = self._connecting[dest] = trio.Event()
        try:
            conn = await open_connection(
                dest[0], dest[1], timeout=self._connect_timeout, idle_timeout=self._idle_timeout
            )
        except OSError as exc:
            log.debug("tcp connect to %s:%d failed: %s", dest[0], dest[1], exc)
            self._refused_until[dest] = trio.current_time() + TCP_RETRY_AFTER
            return None
        finally:
            del self._connecting[dest]
            done.set()
        self._refused_until.pop(dest, None)
        self._outgoing[dest] = conn
        self._live.add(conn)
        assert self._nursery is not None
        self._nursery.start_soon(conn.run, *self._callbacks)
        return conn
