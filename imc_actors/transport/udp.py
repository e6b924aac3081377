"""The UDP endpoint: one bound datagram socket, drained in batches.

Trio's socket wrapper costs one ``await`` (a trip through the scheduler) per datagram. Here the
socket is a plain non-blocking stdlib socket: :meth:`UdpEndpoint.serve` waits once with
``trio.lowlevel.wait_readable`` and then reads every queued datagram (up to ``batch``) with
plain ``recvfrom_into`` calls before checkpointing again, which roughly triples throughput on a
busy socket. What to do with each datagram is a synchronous callback, so the protocol code never
awaits in the hot path; it may return bytes to send straight back (a retransmitted response, a
400), which are sent after the batch.

ICMP errors (Linux): :meth:`UdpEndpoint.bind` sets ``IP_RECVERR`` / ``IPV6_RECVERR``, so the
kernel queues an ICMP destination-unreachable about a datagram we sent on the socket's error
queue (and sets its pending error, which the next ``recvfrom`` *or* ``sendto`` reports once as
ECONNREFUSED). :meth:`UdpEndpoint.serve` drains that queue when a read fails or a wake-up brings
no datagram, and reports each ICMP port or host unreachable with ``on_unreachable(dest)``
(``dest``: the failed datagram's destination); every send retries once a ``sendto`` that fails
with such a stale ECONNREFUSED, which was meant for another destination. ICMP is best effort
(filtered, rate limited): callers keep their timers. Elsewhere nothing changes.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable, Sequence

import trio

__all__ = [
    "Address",
    "DatagramCallback",
    "UdpEndpoint",
    "UnreachableCallback",
    "unreachable_destination",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: ``callback(data, source_address)`` -> ``(bytes, destination)`` to send at once, or None.
DatagramCallback = Callable[[bytes, Address], "tuple[bytes, Address] | None"]
#: ``callback(destination)``: an ICMP error says a datagram sent to ``destination`` found no one.
UnreachableCallback = Callable[[Address], None]

_LINUX = sys.platform.startswith("linux")
# Python's socket module does not export these; the values are Linux's (<linux/in.h>, in6.h).
IP_RECVERR: int | None = getattr(socket, "IP_RECVERR", 11 if _LINUX else None)
IPV6_RECVERR: int | None = getattr(socket, "IPV6_RECVERR", 25 if _LINUX else None)
MSG_ERRQUEUE: int | None = getattr(socket, "MSG_ERRQUEUE", None)
#: ``struct sock_extended_err``: ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data.
_EXTENDED_ERR = struct.Struct("=IBBBBII")
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
#: (origin, ICMP type) -> the codes kept: ICMP destination unreachable, host (1) or port (3);
#: ICMPv6 destination unreachable, address (3) or port (4). Everything else is ignored.
_UNREACHABLE = {(SO_EE_ORIGIN_ICMP, 3): (1, 3), (SO_EE_ORIGIN_ICMP6, 1): (3, 4)}
#: Room for the control message (the 16-byte error plus the offender's sockaddr_in6).
_ANCILLARY = 256


def unreachable_destination(
    ancillary: Sequence[tuple[int, int, bytes]], address: object
) -> Address | None:
    """``(ip, port)`` of an error-queue entry (``recvmsg(..., MSG_ERRQUEUE)``'s ancillary data
    and address: the failed datagram's destination) when it is an ICMP port or host
    unreachable; None for anything else (other ICMP types, local errors, no address)."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    for level, kind, data in ancillary:
        if not (
            (level == socket.IPPROTO_IP and kind == IP_RECVERR)
            or (level == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR)
        ):
            continue
        if len(data) < _EXTENDED_ERR.size:
            continue
        _, origin, icmp_type, code, _, _, _ = _EXTENDED_ERR.unpack_from(data)
        if code in _UNREACHABLE.get((origin, icmp_type), ()):
            return (str(address[0]), int(address[1]))
    return None


def _report_errors(sock: socket.socket) -> bool:
    """Ask the kernel to queue ICMP errors on ``sock`` (Linux); True when it does."""
    level, option = (
        (socket.IPPROTO_IPV6, IPV6_RECVERR)
        if sock.family == socket.AF_INET6
        else (socket.IPPROTO_IP, IP_RECVERR)
    )
    if option is None or MSG_ERRQUEUE is None:
        return False
    try:
        sock.setsockopt(level, option, 1)
    except OSError:  # pragma: no cover - not supported here: keep the plain behaviour
        return False
    return True


class UdpEndpoint:
    """A bound, non-blocking UDP socket plus counters.

    Create it with :meth:`bind` (synchronous: a bind failure raises :class:`OSError` at once),
    run :meth:`serve` in a task, send with :meth:`send` or :meth:`send_nowait` (or
    :meth:`sendto`), :meth:`close` when done. ``error_queue`` is True when ICMP errors are
    queued on the socket (see the module docstring); ``unreachable`` counts the ICMP
    unreachables read off it.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_datagram: int = 65535,
        batch: int = 64,
        error_queue: bool = False,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._family = int(sock.family)
        self.max_datagram = max_datagram
        self.batch = batch
        # One byte more than allowed, so an oversized datagram is recognisable.
        self._buffer = bytearray(max_datagram + 1)
        self._view = memoryview(self._buffer)
        self._write_lock = trio.Lock()
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        self.oversized = 0
        self.unreachable = 0
        self.error_queue = error_queue
        self._errors_pending = False
        host, port = sock.getsockname()[:2]
        self.address: Address = (host, port)

    @classmethod
    def bind(
        cls, host: str, port: int, *, max_datagram: int = 65535, reuse_port: bool = False
    ) -> UdpEndpoint:
        """Bind ``host:port`` (port 0 = ephemeral). Raises :class:`OSError` naming the address.

        Where the platform has ``IP_RECVERR`` / ``IPV6_RECVERR`` (Linux) it is set, so ICMP
        errors reach :meth:`serve`'s ``on_unreachable``. With ``reuse_port`` the socket has
        ``SO_REUSEPORT``: the workers of ``serve --workers N`` share the port, and the kernel
        hands each datagram to one of them by a hash of its source and destination, so one
        client's requests (and their retransmissions) keep reaching the same worker."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot bind udp:{host}:{port}: {exc.strerror or exc}"
            ) from exc
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
                except OSError:  # pragma: no cover - capped by the kernel, not fatal
                    pass
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot bind udp:{host}:{port}: {exc.strerror or exc}"
            ) from exc
        return cls(sock, max_datagram=max_datagram, error_queue=_report_errors(sock))

    @property
    def family(self) -> int:
        return self._family

    async def serve(
        self, on_datagram: DatagramCallback, on_unreachable: UnreachableCallback | None = None
    ) -> None:
        """Receive forever, handing each datagram to ``on_datagram``.

        Reads up to ``batch`` queued datagrams without yielding, then checkpoints (or, when the
        socket is drained, waits in ``wait_readable``): one scheduler trip per batch, not per
        datagram;
        immediate answers returned by the callback are sent after the batch. Datagrams longer
        than ``max_datagram`` are counted and dropped. With :attr:`error_queue`, a batch whose
        read failed (a pending ICMP error), that follows a send that met one (:meth:`sendto`)
        or that found nothing to read (woken by a queued error alone) drains up to ``batch``
        entries of the error queue, calling ``on_unreachable(dest)`` for each ICMP port or host
        unreachable (synchronously; it should not raise, and is logged when it does). Runs
        until cancelled; on cancellation it simply stops (the socket stays open; call
        :meth:`close`).
        """
        sock = self.sock
        view = self._view
        limit = self.max_datagram
        batch = self.batch
        error_queue = self.error_queue
        while True:
            replies: list[tuple[bytes, Address]] = []
            drained = False
            failed = False
            before = self.received
            for _ in range(batch):
                try:
                    size, addr = sock.recvfrom_into(self._buffer)
                except BlockingIOError:
                    drained = True
                    break
                except InterruptedError:  # pragma: no cover
                    continue
                except OSError as exc:
                    # An ICMP error reported on the socket (e.g. port unreachable): its entry
                    # is on the error queue (drained below); elsewhere it is simply harmless.
                    log.debug("udp %s: recvfrom error %s", self.address, exc)
                    failed = True
                    continue
                self.received += 1
                if size > limit:
                    self.oversized += 1
                    continue
                try:
                    reply = on_datagram(bytes(view[:size]), (addr[0], addr[1]))
                except Exception:  # the callback must never kill the socket
                    log.exception("udp %s: error handling a datagram from %s", self.address, addr)
                    continue
                if reply is not None:
                    replies.append(reply)
            if error_queue and (failed or self._errors_pending or self.received == before):
                self._errors_pending = False
                if self._drain_errors(on_unreachable):
                    drained = False  # more errors queued: come back after a checkpoint
            for data, dest in replies:
                await self.send(data, dest)
            if drained:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()

    def _drain_errors(self, on_unreachable: UnreachableCallback | None) -> bool:
        """Read up to ``batch`` entries off the socket's error queue (never blocks), reporting
        ICMP unreachables; True when the queue may hold more."""
        sock = self.sock
        flags = MSG_ERRQUEUE
        assert flags is not None
        for _ in range(self.batch):
            try:
                _, ancillary, _, address = sock.recvmsg(0, _ANCILLARY, flags)
            except BlockingIOError:
                return False
            except OSError as exc:  # pragma: no cover - nothing else is expected here
                log.debug("udp %s: cannot read the error queue: %s", self.address, exc)
                return False
            dest = unreachable_destination(ancillary, address)
            if dest is None:
                continue
            self.unreachable += 1
            log.debug("udp %s: ICMP unreachable for %s", self.address, dest)
            if on_unreachable is not None:
                try:
                    on_unreachable(dest)
                except Exception:  # the callback must never kill the socket
                    log.exception("udp %s: error handling unreachable %s", self.address, dest)
        return True

    def sendto(self, data: bytes, dest: Address) -> None:
        """``sock.sendto`` that survives a stale ICMP error: a ``sendto`` failing with
        ECONNREFUSED reports (and clears) the socket's pending error, which came from an
        earlier datagram, maybe to another destination, and sent nothing; so it is tried once
        more. Raises :class:`OSError` (``BlockingIOError`` when the buffer is full) like
        ``sendto``; never blocks or checkpoints. Counts nothing."""
        try:
            self.sock.sendto(data, dest)
        except ConnectionRefusedError:
            self._errors_pending = True  # its entry waits on the error queue: serve drains it
            self.sock.sendto(data, dest)

    def send_nowait(self, data: bytes, dest: Address) -> bool:
        """Try to send one datagram without waiting; False when it could not be sent.

        Never blocks or checkpoints. A full send buffer or a transient error drops the
        datagram (counted in ``send_errors``), which UDP retransmission timers repair; a stale
        ICMP error is retried (:meth:`sendto`).
        """
        try:
            self.sendto(data, dest)
        except BlockingIOError:
            self.send_errors += 1
            return False
        except OSError as exc:
            self._send_failed(exc, dest)
            return False
        self.sent += 1
        return True

    async def send(self, data: bytes, dest: Address) -> bool:
        """Send one datagram, waiting for buffer space when the socket is full.

        Returns False (and logs) on a network error for this destination; never raises
        ``OSError``. Does not checkpoint when the kernel takes the datagram at once; when the
        send buffer is full it waits for writability (senders queue on a lock, as Trio allows
        one waiter per socket), and cancellation there abandons the datagram. A stale ICMP
        error is retried (:meth:`sendto`).
        """
        while True:
            try:
                self.sendto(data, dest)
            except BlockingIOError:
                # Trio lets one task at a time wait for writability on a socket.
                async with self._write_lock:
                    await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as exc:
                self._send_failed(exc, dest)
                return False
            self.sent += 1
            return True

    def _send_failed(self, exc: OSError, dest: Address) -> None:
        self.send_errors += 1
        level = (
            logging.DEBUG
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH)
            else logging.WARNING
        )
        log.log(level, "udp %s: cannot send to %s: %s", self.address, dest, exc)

    def close(self) -> None:
        """Close the socket (tasks blocked on it are woken with ``ClosedResourceError``)."""
        if self.sock.fileno() >= 0:
            try:
                trio.lowlevel.notify_closing(self.sock)
            except RuntimeError:  # not inside trio.run: nobody can be waiting
                pass
            self.sock.close()
