"""The UDP endpoint: one bound datagram socket, drained in batches.

Trio's socket wrapper costs one ``await`` (a trip through the scheduler) per datagram. Here the
socket is a plain non-blocking stdlib socket: :meth:`UdpEndpoint.serve` waits once with
``trio.lowlevel.wait_readable`` and then reads every queued datagram (up to ``batch``) with
plain ``recvfrom_into`` calls before checkpointing again, which roughly triples throughput on a
busy socket. What to do with each datagram is a synchronous callback, so the protocol code never
awaits in the hot path; it may return bytes to send straight back (a retransmitted response, a
400), which are sent after the batch.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import trio

__all__ = ["UdpEndpoint", "Address", "DatagramCallback"]

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: ``callback(data, source_address)`` -> ``(bytes, destination)`` to send at once, or None.
DatagramCallback = Callable[[bytes, Address], "tuple[bytes, Address] | None"]


class UdpEndpoint:
    """A bound, non-blocking UDP socket plus counters.

    Create it with :meth:`bind` (synchronous: a bind failure raises :class:`OSError` at once),
    run :meth:`serve` in a task, send with :meth:`send` or :meth:`send_nowait`, :meth:`close`
    when done.
    """

    def __init__(self, sock: socket.socket, *, max_datagram: int = 65535, batch: int = 64) -> None:
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
        host, port = sock.getsockname()[:2]
        self.address: Address = (host, port)

    @classmethod
    def bind(cls, host: str, port: int, *, max_datagram: int = 65535) -> UdpEndpoint:
        """Bind ``host:port`` (port 0 = ephemeral). Raises :class:`OSError` naming the address."""
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
        return cls(sock, max_datagram=max_datagram)

    @property
    def family(self) -> int:
        return self._family

    async def serve(self, on_datagram: DatagramCallback) -> None:
        """Receive forever, handing each datagram to ``on_datagram``.

        Reads up to ``batch`` queued datagrams without yielding, then checkpoints (or, when the
        socket is drained, waits in ``wait_readable``): one scheduler trip per batch, not per
        datagram;
        immediate answers returned by the callback are sent after the batch. Datagrams longer
        than ``max_datagram`` are counted and dropped. Runs until cancelled; on cancellation it
        simply stops (the socket stays open; call :meth:`close`).
        """
        sock = self.sock
        view = self._view
        limit = self.max_datagram
        batch = self.batch
        while True:
            replies: list[tuple[bytes, Address]] = []
            drained = False
            for _ in range(batch):
                try:
                    size, addr = sock.recvfrom_into(self._buffer)
                except BlockingIOError:
                    drained = True
                    break
                except InterruptedError:  # pragma: no cover
                    continue
                except OSError as exc:
                    # ICMP errors reported on the socket (e.g. port unreachable) are harmless.
                    log.debug("udp %s: recvfrom error %s", self.address, exc)
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
            for data, dest in replies:
                await self.send(data, dest)
            if drained:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.checkpoint()

    def send_nowait(self, data: bytes, dest: Address) -> bool:
        """Try to send one datagram without waiting; False when it could not be sent.

        Never blocks or checkpoints. A full send buffer or a transient error drops the
        datagram (counted in ``send_errors``), which UDP retransmission timers repair.
        """
        try:
            self.sock.sendto(data, dest)
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
        one waiter per socket), and cancellation there abandons the datagram.
        """
        while True:
            try:
                self.sock.sendto(data, dest)
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
