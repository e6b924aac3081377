"""Steering between the workers of ``serve --workers N`` (issue 13): each room's requests
reach the worker that holds it without a forwarded SIP request.

The kernel hands each datagram on a shared UDP port to one worker by a hash of its addresses
(``SO_REUSEPORT``), which knows nothing of rooms: most requests would land on a worker that
does not hold their room and be forwarded over SIP (:mod:`imc_actors.forwarding`: a second
transaction, a database read to locate the owner, the answer relayed back). Instead every
room has a *home* worker, ``crc32(room name, lower case) % N`` (:func:`home_of`), which takes
its lease at startup and creates it (:func:`~imc_actors.conference.open_conference`'s
``home``). A worker that receives a request on a shared UDP port whose Request-URI user
(:func:`request_user`) has another home passes the datagram itself, with its source address,
to that worker over a Unix datagram socket (:meth:`Steering.relay`, a few microseconds: no
parsing beyond the request line); the home worker handles it as if it had received it
(:meth:`Steering.serve`), and answers the sender from its own socket on the same shared
address. A room that moved (failover) is still served: the home worker forwards it over SIP
as any node does.

Nothing is lost when the home worker is down or overloaded: the relay is tried without
waiting and, when its socket is gone (the worker died: ``ECONNREFUSED``) or full, the
receiving worker handles the request itself. A relayed datagram is never relayed again.

Each worker listens on a Unix ``SOCK_SEQPACKET`` socket (message boundaries kept, and no
``net.unix.max_dgram_qlen`` cap of ten datagrams as an unconnected datagram socket has), a
file ``relay-<i>`` in a directory of the parent's (mode 0700, removed when it exits): only
processes of the same user can reach them, since a relayed datagram carries a source address
the home worker trusts. The others connect to it on first use, and again at most once a
second after it failed (:data:`RECONNECT`). The same connections carry *wakes*
(:meth:`Steering.wake_all`): a worker that accepts a REGISTER tells the others at once, so a
member whose notices wait on another worker (parked after a failed delivery) gets them now
and not at that worker's next read of the bindings table; and *notices* a room's worker hands
to the worker that delivers to their member (:meth:`send_notices`, :mod:`imc_actors.handoff`).
TCP, TLS and WebSocket connections are not steered
(a connection stays with the worker that accepted it; :mod:`imc_actors.forwarding` serves
them).
"""

from __future__ import annotations

import logging
import os
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

log = logging.getLogger("imc_actors.transport.steering")

__all__ = ["Steering", "home_of", "request_user"]

#: Datagrams read per scheduler trip (as :class:`~.udp.UdpEndpoint` does).
BATCH = 64
#: Largest relayed frame: a datagram (``max_datagram`` at most 65535) and its header.
MAX_FRAME = 65535 + 128
#: Bytes of the request line looked at for the Request-URI user.
LINE_LIMIT = 512
#: Send and receive buffer asked for each relay connection (the kernel caps it).
BUFFER = 4 * 1024 * 1024
#: The start of a frame that is not a datagram: a member registered with the sending worker.
WAKE = b"\x00wake "
#: The start of a frame of notices handed to their member's worker (:mod:`imc_actors.handoff`).
NOTICES = b"\x00notices "
#: Seconds before connecting again to a worker whose relay socket refused or failed.
RECONNECT = 1.0

#: ``on_relayed(endpoint_index, data, (host, port))``: handle one relayed datagram like one
#: received on that shared endpoint; returns an immediate answer and where it goes, or None.
OnRelayed = Callable[[int, bytes, tuple[str, int]], "tuple[bytes, tuple[str, int]] | None"]


def home_of(name: str | bytes, count: int) -> int:
    """The home worker (0..count-1) of the room named ``name`` (the user part of its URI;
    compared in lower case, as room keys are)."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    return zlib.crc32(raw.lower()) % count


def request_user(data: bytes) -> bytes | None:
    """The user part of a request's ``sip:``/``sips:`` Request-URI, from the request line
    alone; None for a response, a URI without a user, or anything that does not look like
    a request line (the full parser then answers it)."""
    end = data.find(b"\n", 0, LINE_LIMIT)
    if end < 0:
        return None
    space = data.find(b" ", 0, end)
    if space <= 0 or data.startswith(b"SIP/"):
        return None
    start = space + 1
    if data.startswith(b"sip:", start):
        start += 4
    elif data.startswith(b"sips:", start):
        start += 5
    else:
        return None
    stop = data.find(b" ", start, end)
    if stop < 0:
        return None
    at = data.find(b"@", start, stop)
    if at <= start:
        return None
    return data[start:at]


class Steering:
    """One worker's end of the steering: its index among ``count`` workers, the directory
    ``where`` every worker binds its relay socket (``relay-<index>``), and ``nodes``, the
    node name of each worker (:meth:`home_node`)."""

    def __init__(
        self, index: int, count: int, where: str | os.PathLike[str], nodes: Sequence[str] = ()
    ) -> None:
        if not 0 <= index < count:
            raise ValueError(f"worker index {index} is not in 0..{count - 1}")
        if nodes and len(nodes) != count:
            raise ValueError(f"{len(nodes)} node names for {count} workers")
        self.index = index
        self.count = count
        self.where = Path(where)
        self.nodes = tuple(nodes)
        self._sock: socket.socket | None = None  # listening
        self._peers: dict[int, socket.socket] = {}  # connected to other workers' sockets
        self._retry_at: dict[int, float] = {}  # trio time of the next connect attempt
        #: Datagrams passed to their home worker, received from another worker, and handled
        #: here because the home worker's socket was gone or full.
        self.relayed = 0
        self.received = 0
        self.fallbacks = 0
        #: ``on_wake(member)``: another worker's REGISTER for ``member`` (see :meth:`wake_all`).
        self.on_wake: Callable[[str], None] | None = None
        #: ``await on_notices(frame)``: notices another worker handed to this one
        #: (:meth:`send_notices`); this connection is not read meanwhile (backpressure).
        self.on_notices: Callable[[bytes], Awaitable[None]] | None = None

    def path(self, index: int) -> str:
        return str(self.where / f"relay-{index}")

    def home_node(self, name: str) -> str:
        """The node name of the home worker of the room named ``name`` (needs ``nodes``)."""
        return self.nodes[home_of(name, self.count)]

    def open(self) -> None:
        """Listen on this worker's relay socket (a stale file of an earlier life is replaced)."""
        path = self.path(self.index)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(path)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind the worker relay socket {path}: {exc.strerror}") from exc
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        for out in self._peers.values():
            out.close()
        self._peers.clear()
        if self._sock is not None:
            self._sock.close()
            try:
                os.unlink(self.path(self.index))
            except OSError:
                pass
        self._sock = None

    def target(self, data: bytes) -> int | None:
        """The other worker a request received on a shared port belongs to, or None when it
        is this worker's (or names no room)."""
        user = request_user(data)
        if user is None:
            return None
        home = home_of(user, self.count)
        return None if home == self.index else home

    def _peer(self, home: int) -> socket.socket | None:
        """The connection to worker ``home``'s relay socket: opened on first use, and again
        (at most once per :data:`RECONNECT` seconds) after it failed."""
        out = self._peers.get(home)
        if out is not None:
            return out
        now = trio.current_time()
        if now < self._retry_at.get(home, 0.0):
            return None
        out = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        except OSError:  # pragma: no cover - capped by the kernel, not fatal
            pass
        out.setblocking(False)
        try:
            out.connect(self.path(home))
        except OSError:  # not listening (yet, or any more): handled here meanwhile
            out.close()
            self._retry_at[home] = now + RECONNECT
            return None
        self._peers[home] = out
        return out

    def _send(self, home: int, frame: bytes) -> bool:
        """Send one frame to worker ``home`` without waiting; False when it could not be
        (not listening, its buffer full, or the connection broken: reconnect later)."""
        out = self._peer(home)
        if out is None:
            return False
        try:
            out.send(frame)
        except BlockingIOError:  # its socket buffer is full: it is behind
            return False
        except OSError:  # it went away (EPIPE, ECONNRESET): reconnect later
            out.close()
            del self._peers[home]
            self._retry_at[home] = trio.current_time() + RECONNECT
            return False
        return True

    def relay(self, home: int, endpoint: int, source: tuple[str, int], data: bytes) -> bool:
        """Pass ``data`` (received from ``source`` on shared endpoint ``endpoint``) to worker
        ``home`` without waiting; False when it could not be (then handle it here)."""
        header = f"{endpoint} {source[0]} {source[1]}\n".encode("ascii", "replace")
        if not self._send(home, header + data):
            self.fallbacks += 1
            return False
        self.relayed += 1
        return True

    def wake_all(self, member: str) -> int:
        """Tell every other worker that ``member`` (``user@host``) registered, without
        waiting (each then delivers what it keeps for it: :attr:`on_wake`); how many were
        told. A worker that is down is not (its lanes start again empty)."""
        # a worker behind or down is skipped: its own follow of the bindings wakes it later
        return sum(self.wake(index, member) for index in range(self.count) if index != self.index)

    def wake(self, worker: int, member: str) -> bool:
        """Tell ``worker`` that ``member`` (``user@host``) is reachable now, without waiting;
        False when it could not be told."""
        return self._send(worker, WAKE + member.encode("utf-8", "replace"))

    def send_notices(self, worker: int, frame: bytes) -> bool:
        """Pass a frame of notices (:mod:`imc_actors.handoff`) to ``worker`` without
        waiting; False when it could not be (then they are delivered here)."""
        return self._send(worker, NOTICES + frame)

    def _woken(self, raw: bytes) -> None:
        if self.on_wake is None:
            return
        try:
            self.on_wake(raw.decode("utf-8", "replace"))
        except Exception:  # the callback must never kill the relay
            log.exception("error handling a wake relayed from another worker")

    async def _take_notices(self, frame: bytes) -> None:
        if self.on_notices is None:
            log.warning("dropped notices another worker handed over: nothing takes them here")
            return
        try:
            await self.on_notices(frame)
        except Exception:  # the callback must never kill the relay
            log.exception("error taking notices another worker handed over")

    async def serve(
        self, on_relayed: OnRelayed, send: Callable[[int, bytes, tuple[str, int]], object]
    ) -> None:
        """Accept the other workers' connections and receive what they relay until
        cancelled, handing each datagram to ``on_relayed``; an immediate answer it returns
        goes out through ``send(endpoint, data, dest)``."""
        listener = self._sock
        assert listener is not None, "open() first"
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:  # out of descriptors: try again shortly
                    log.warning("accepting a worker relay connection failed: %s", exc)
                    await trio.sleep(RECONNECT)
                    continue
                conn.setblocking(False)
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
                except OSError:  # pragma: no cover - capped by the kernel, not fatal
                    pass
                nursery.start_soon(self._read, conn, on_relayed, send)

    async def _read(
        self,
        conn: socket.socket,
        on_relayed: OnRelayed,
        send: Callable[[int, bytes, tuple[str, int]], object],
    ) -> None:
        with conn:
            while True:
                replies: list[tuple[int, bytes, tuple[str, int]]] = []
                handed: list[bytes] = []
                drained = closed = False
                for _ in range(BATCH):
                    try:
                        frame = conn.recv(MAX_FRAME)
                    except BlockingIOError:
                        drained = True
                        break
                    except InterruptedError:  # pragma: no cover
                        continue
                    except OSError:
                        closed = True
                        break
                    if not frame:  # the other worker closed it (or died)
                        closed = True
                        break
                    if frame.startswith(WAKE):
                        self._woken(frame[len(WAKE) :])
                        continue
                    if frame.startswith(NOTICES):
                        handed.append(frame[len(NOTICES) :])
                        continue
                    parsed = _frame(frame)
                    if parsed is None:
                        log.warning("dropped a malformed frame on the worker relay socket")
                        continue
                    endpoint, source, data = parsed
                    self.received += 1
                    try:
                        reply = on_relayed(endpoint, data, source)
                    except Exception:  # the callback must never kill the relay
                        log.exception("error handling a datagram relayed from another worker")
                        continue
                    if reply is not None:
                        replies.append((endpoint, *reply))
                for endpoint, data, dest in replies:
                    send(endpoint, data, dest)
                for notices in handed:
                    await self._take_notices(notices)
                if closed:
                    return
                if drained:
                    await trio.lowlevel.wait_readable(conn)
                else:
                    await trio.lowlevel.checkpoint()


def _frame(frame: bytes) -> tuple[int, tuple[str, int], bytes] | None:
    end = frame.find(b"\n", 0, 128)
    if end < 0:
        return None
    try:
        endpoint, host, port = frame[:end].decode("ascii").split(" ")
        return int(endpoint), (host, int(port)), frame[end + 1 :]
    except ValueError:
        return None
