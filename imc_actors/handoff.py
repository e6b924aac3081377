"""Delivery partitioned by member between the workers of ``serve --workers N`` (issue 13).

A room's commands and chat run on its home worker (:mod:`imc_actors.transport.steering`), but
its deliveries need not: each member has a *delivery worker*, ``crc32(user@host) % N`` (the
same hash as a room's home, over the member key), and the room's worker hands the notices for
members of another worker to that worker (:meth:`Handoff.send`), which queues them in its own
lanes and sends them from its own socket. So one busy room's fan-out uses every core, and a
member's notices from every room leave one worker, in one lane, in order.

A frame carries a batch of notices; a body shared by several notices (a relayed chat line goes
to every member) is in it once. A frame is sent without waiting; when the member's worker
cannot take it (down, or its socket buffer full: it is behind), the notices are delivered
where they were produced, as without a hand-off. Invitations are never handed off: their
failure goes back to the room through the worker that holds it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from .imc.effects import Notice
from .transport.steering import MAX_FRAME, Steering, home_of

log = logging.getLogger("imc_actors.handoff")

__all__ = ["Handoff", "decode", "encode", "take_frame"]

_KINDS = ("notice", "relay", "reply")
#: The largest frame of notices (the relay socket's frame, less its tag).
FRAME_LIMIT = MAX_FRAME - 64
#: Seconds within which a member's worker is woken once: each chat line its member sends would
#: otherwise cost a frame each way, and a parked lane it wakes needs telling only once.
WAKE_INTERVAL = 1.0
#: Members remembered for :data:`WAKE_INTERVAL` at most (then forgotten all at once).
WAKE_MEMORY = 10_000


def encode(notices: Sequence[tuple[Notice, str]]) -> bytes:
    """One frame of ``(notice, in_reply_to)`` pairs: a JSON line, then the distinct bodies."""
    bodies: dict[int, int] = {}  # id(body) -> its index: a fan-out shares one body object
    parts: list[bytes] = []
    calls: dict[str, int] = {}
    rows = []
    for notice, in_reply_to in notices:
        body = notice.body
        index = bodies.get(id(body))
        if index is None:
            index = bodies[id(body)] = len(parts)
            parts.append(body)
        call = calls.setdefault(in_reply_to, len(calls))
        rows.append(
            (notice.to, notice.sender, _KINDS.index(notice.kind), notice.content_type,
             notice.keep, notice.date, index, call)
        )  # fmt: skip
    head = json.dumps([list(calls), [len(part) for part in parts], rows], separators=(",", ":"))
    return head.encode("utf-8", "surrogateescape") + b"\n" + b"".join(parts)


def decode(frame: bytes) -> list[tuple[Notice, str]]:
    """The pairs :func:`encode` put in ``frame``; ValueError when it is not such a frame."""
    end = frame.find(b"\n")
    if end < 0:
        raise ValueError("no header line")
    try:
        calls, sizes, rows = json.loads(frame[:end].decode("utf-8", "surrogateescape"))
        bodies = []
        offset = end + 1
        for size in sizes:
            bodies.append(frame[offset : offset + size])
            offset += size
        if offset != len(frame):
            raise ValueError("the bodies do not add up to the frame")
        return [
            (Notice(to, bodies[body], sender, _KINDS[kind], ctype, keep=bool(keep), date=date),
             calls[call])
            for to, sender, kind, ctype, keep, date, body, call in rows
        ]  # fmt: skip
    except (TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"malformed notices frame: {exc!r}") from None


class Handoff:
    """Which worker delivers to a member, and the hand-off itself, over ``steering``'s
    connections between the workers."""

    def __init__(self, steering: Steering, clock: Callable[[], float] = trio.current_time) -> None:
        self.steering = steering
        self._index = steering.index
        self._count = steering.count
        self._clock = clock
        self._woken: dict[str, float] = {}  # member -> when its worker was last woken

    def worker_of(self, key: str) -> int | None:
        """The worker that delivers to member ``key`` (``user@host``), or None: this one."""
        worker = home_of(key, self._count)
        return None if worker == self._index else worker

    def send(self, worker: int, notices: Sequence[tuple[Notice, str]]) -> int:
        """Hand ``notices`` to ``worker``, in order and without waiting; how many it took
        (the first ones: deliver the rest here). A batch too big for one frame goes in
        several."""
        frame = encode(notices)
        if len(frame) <= FRAME_LIMIT:
            return len(notices) if self.steering.send_notices(worker, frame) else 0
        if len(notices) == 1:  # one notice larger than a frame: delivered here
            return 0
        half = len(notices) // 2
        sent = self.send(worker, notices[:half])
        if sent < half:
            return sent
        return half + self.send(worker, notices[half:])

    def wake(self, worker: int, member: str) -> None:
        """Tell ``worker`` that ``member`` sent a request: it delivers what it keeps for it
        (best effort: a retry or the member's next REGISTER does it otherwise). Once per
        member within :data:`WAKE_INTERVAL`: a member that goes on sending is told of later."""
        now = self._clock()
        woken = self._woken
        last = woken.get(member)
        if last is not None and now - last < WAKE_INTERVAL:
            return
        if len(woken) >= WAKE_MEMORY:
            woken.clear()
        woken[member] = now
        self.steering.wake(worker, member)


class _Taker(Protocol):
    async def take(self, notices: Sequence[tuple[Notice, str]]) -> None: ...


async def take_frame(delivery: _Taker, frame: bytes) -> None:
    """Queue the notices of a frame another worker handed over in ``delivery``'s lanes (a
    malformed frame, which only a bug makes, is logged and dropped)."""
    try:
        notices = decode(frame)
    except ValueError as exc:
        log.error("dropped a frame of notices another worker handed over: %s", exc)
        return
    await delivery.take(notices)
