"""The outgoing queue of one stream connection (TCP, TLS, WebSocket), bounded in bytes.

Each connection has one writer task that takes whole messages from its :class:`SendQueue`
and writes them in the order they were queued, so one SIP message never interleaves with
another on the stream. Two ways in:

- :meth:`SendQueue.offer` (no checkpoint, never waits): queue one message now, or refuse it
  (False) when the queue is closed, when it would pass ``limit`` bytes, or when awaited senders
  are already waiting for room (they are not overtaken). The task-free delivery path uses it.
- :meth:`SendQueue.put` (awaits): wait for room, queue, then wait until the writer wrote it;
  True once written, False when the connection closed first.

Bytes count from queuing until the writer has written them (a batch being written still
counts), so at most ``limit`` bytes are held (plus one message larger than ``limit``, which is
let in alone when the queue is empty: it could never be sent otherwise).
"""

from __future__ import annotations

from collections import deque

import trio

__all__ = ["DEFAULT_SEND_QUEUE", "SendQueue"]

#: Default ``limit``: bytes queued per connection (``tcp_send_queue``).
DEFAULT_SEND_QUEUE = 256 * 1024


class _Written:
    """What an awaited :meth:`SendQueue.put` waits on: set once the message is written
    (``ok``) or dropped because the connection closed (``ok`` False)."""

    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False


#: A queued message and, for an awaited one, what its sender waits on.
Item = tuple[bytes, "_Written | None"]


class SendQueue:
    """Messages waiting for a connection's writer (see the module docstring).

    ``queued``: bytes held now; ``peak``: the most ever held; ``refused``: messages
    :meth:`offer` turned away because the queue was full; ``closed``: True after :meth:`close`.
    """

    def __init__(self, limit: int = DEFAULT_SEND_QUEUE) -> None:
        if limit < 1:
            raise ValueError(f"send queue limit must be positive, got {limit}")
        self.limit = limit
        self.queued = 0
        self.peak = 0
        self.refused = 0
        self.closed = False
        self._busy = False  # the writer holds a batch (between take and done)
        self._items: deque[Item] = deque()
        self._writer = trio.lowlevel.ParkingLot()  # the writer, waiting for work
        self._room = trio.lowlevel.ParkingLot()  # awaited senders, waiting for room

    def __len__(self) -> int:
        """How many messages are queued (not yet taken by the writer)."""
        return len(self._items)

    def _fits(self, size: int) -> bool:
        return self.queued == 0 or self.queued + size <= self.limit

    def _append(self, data: bytes, written: _Written | None) -> None:
        self._items.append((data, written))
        self.queued += len(data)
        if self.queued > self.peak:
            self.peak = self.queued
        self._writer.unpark()

    def idle(self) -> bool:
        """Nothing is queued, being written or waiting for room: a message may be written
        straight to the stream without overtaking anything. No checkpoint."""
        return not self._items and not self._busy and not self._room and not self.closed

    def rest(self, data: bytes) -> None:
        """Queue what a direct write (made while :meth:`idle`) left of a message: the writer
        writes it first, so the message stays whole. No checkpoint."""
        self._append(data, None)

    def has_room(self, size: int) -> bool:
        """Whether :meth:`offer` would take a message of ``size`` bytes now. No checkpoint."""
        return not self.closed and self._fits(size) and not self._room

    def offer(self, data: bytes) -> bool:
        """Queue ``data`` (one whole message) for the writer now; False (nothing queued) when
        closed, full, or awaited senders wait for room. No checkpoint."""
        if self.closed:
            return False
        if not self._fits(len(data)) or self._room:
            self.refused += 1
            return False
        self._append(data, None)
        return True

    async def put(self, data: bytes) -> bool:
        """Queue ``data`` once there is room and wait until it is written: True then, False
        when the queue closed first. Checkpoints. Cancelled while waiting for room, nothing is
        queued; cancelled later, the message is still written whole (the stream stays
        usable)."""
        while not self.closed and (not self._fits(len(data))):
            await self._room.park()
        if self.closed:
            await trio.lowlevel.checkpoint()
            return False
        written = _Written()
        self._append(data, written)
        await written.event.wait()
        return written.ok

    async def take(self, max_bytes: int) -> list[Item]:
        """The next messages to write, oldest first: at least one, then more while they add
        up to at most ``max_bytes``; [] once closed. Waits for one. Their bytes count until
        :meth:`done`."""
        while not self._items:
            if self.closed:
                await trio.lowlevel.checkpoint()
                return []
            await self._writer.park()
        items = self._items
        self._busy = True
        batch = [items.popleft()]
        size = len(batch[0][0])
        while items and size + len(items[0][0]) <= max_bytes:
            item = items.popleft()
            size += len(item[0])
            batch.append(item)
        return batch

    def done(self, batch: list[Item], ok: bool) -> None:
        """The writer finished ``batch`` (``ok``: written). Frees its room and tells awaited
        senders. No checkpoint."""
        self._busy = False
        for data, written in batch:
            self.queued -= len(data)
            if written is not None:
                written.ok = ok
                written.event.set()
        self._room.unpark_all()

    def close(self) -> None:
        """No more messages: queued ones are dropped (their awaited senders get False), the
        writer's :meth:`take` returns []. No checkpoint; idempotent."""
        self.closed = True
        for data, written in self._items:
            self.queued -= len(data)
            if written is not None:
                written.event.set()
        self._items.clear()
        self._room.unpark_all()
        self._writer.unpark_all()
