"""This node's room leases, kept for a running conference (issue 13, with ``node`` set).

:class:`LeaseKeeper` takes the lease of every stored room at startup (before the rooms' state
is read, so the state a node serves is never older than its lease), renews all of them every
``lease_ttl / 3`` seconds in one statement, and releases them at a clean shutdown so another
node may take the rooms over at once. A room created later gets its first lease in the
transaction that creates it (:meth:`~imc_actors.store.leases.LeaseTable.fence`). Every write
is fenced by the epochs the repository recorded (:class:`~imc_actors.store.repository.Fenced`).

Each renewal round also heartbeats this node into the node table with the SIP addresses the
server advertises (:meth:`LeaseKeeper.advertise`), so other nodes can find where a room lives
(``Repository.locate``), notices the rooms another node has taken over since (``lost``: the
conference stops them here) and finds the rooms of dead nodes (``orphans``: expired leases
whose node has not heartbeat for ``lease_ttl``), which the conference takes over (failover,
issue 13 item 4). :meth:`LeaseKeeper.serving` tells whether this node may serve a room from
memory: it holds the lease and its last successful renewal is recent enough on the monotonic
clock (``lease_ttl`` minus a margin), else the next request re-acquires it and reloads it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..imc.state import RoomState
from ..store.instance import LockLost
from ..store.repository import NodeTaken, StoreError

__all__ = ["LeaseKeeper", "LeaseStatistics", "NodeInUse"]
from ..store.writer import Store

log = logging.getLogger("imc_actors.leases")


class NodeInUse(StoreError):
    """Another process serves as this node now (its heartbeat moved on while this one waited):
    two processes with one ``node`` name would take each other's leases in turn."""


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    """``held``: leases this node holds now; ``renewals``/``renew_failures``: renewal rounds
    that worked and that failed; ``not_acquired``: stored rooms whose lease another node held
    at startup; ``taken_over``: stored rooms this node took over since (failover, or a
    lapsed lease of its own); ``lost``: rooms its renewals found taken over by another node."""

    held: int
    renewals: int
    renew_failures: int
    not_acquired: int
    taken_over: int = 0
    lost: int = 0


class LeaseKeeper:
    """Acquires, renews and releases the leases of one repository's node through ``store``
    (its writer thread; the repository must have ``acquire``/``renew``/``release``)."""

    def __init__(self, store: Store, lease_ttl: float, *, node_free: bool = False) -> None:
        self._store = store
        self._ttl = lease_ttl
        self._node_free = node_free
        self._renewals = 0
        self._failures = 0
        self._not_acquired = 0
        self._addresses: tuple[str, ...] = ()
        self._fresh_until = -float("inf")  # trio time until which held leases may be trusted
        self._margin = lease_ttl / 5
        self._taken: dict[str, float] = {}  # room -> trio time its own acquisition covers
        self._taken_over = 0
        self._lost = 0
        #: This process runs as the node (:meth:`ensure_alone` passed, or the caller knew it):
        #: only then may :meth:`release` expire the node's leases and retire its name.
        self._ours = False

    def serving(self, room: str) -> bool:
        """True when this node may serve ``room`` (a room key) from memory now: it holds the
        lease, and renewed it less than ``lease_ttl`` minus a margin ago (monotonic clock)."""
        repository: Any = self._store.repository
        now = trio.current_time()
        fresh = now < self._fresh_until or now < self._taken.get(room, -float("inf"))
        return fresh and repository.holds(room)

    def taken(self, room: str, *, stored: bool) -> None:
        """``room``'s lease was (re)acquired just now: serve it until the next round at least
        (``stored``: the room exists and was read from the database, a takeover)."""
        self._taken[room] = trio.current_time() + self._ttl - self._margin
        self._taken_over += stored

    def let_go(self, room: str) -> None:
        """``room`` is not served here any more although its lease may be (a takeover that
        failed after its actor was stopped): the next request takes it over again."""
        self._taken.pop(room, None)
        repository: Any = self._store.repository
        repository.let_go(room)

    def _renewed(self, started: float) -> None:
        self._fresh_until = started + self._ttl - self._margin
        self._taken.clear()  # the renewal covered them

    async def ensure_alone(self) -> None:
        """Raise :class:`NodeInUse` when another process runs as this node. Call before
        :meth:`acquire`, which would take that process's leases.

        The node table cannot tell a running node from one killed a moment ago: both have a
        recent heartbeat. So when the heartbeat is younger than ``lease_ttl`` (and the node
        was not shut down cleanly, which retires it), this waits half a ``lease_ttl`` (more
        than one renewal period) and looks again: a heartbeat that moved on meanwhile is
        another process's. Else startup goes on (a restart after ``kill -9`` waits that long).
        Nothing to check with ``node_free`` (a worker its parent started again).
        """
        self._ours = False
        if self._node_free:
            self._ours = True
            return

        def look(repository: Any) -> tuple[float, tuple[str, ...], float] | None:
            info = next((n for n in repository.nodes() if n.name == repository.node), None)
            if info is None or not info.heartbeat:
                return None
            return info.heartbeat, info.addresses, repository.now()

        first = await self._store.read(look)
        if first is None or first[2] - first[0] >= self._ttl:
            self._ours = True
            return
        repository: Any = self._store.repository
        log.info("node %r heartbeat %.1f s ago from %s: checking that it is not still running",
                 repository.node, first[2] - first[0], " ".join(first[1]) or "no address")  # fmt: skip
        await trio.sleep(self._ttl / 2)
        second = await self._store.read(look)
        if second is not None and second[0] != first[0]:
            raise NodeInUse(
                f"node {repository.node!r} is already running (it heartbeat {second[2] - second[0]:.1f} s "
                f"ago from {' '.join(second[1]) or 'no address'}): give each node its own --node"
            )
        self._ours = True

    async def advertise(self, addresses: list[str]) -> None:
        """Heartbeat now, and in every later round, with these SIP listen addresses (a failure
        is logged; the next round tries again)."""
        self._addresses = tuple(addresses)
        try:
            await self._store.read(partial(_round, renew=False, addresses=self._addresses))
        except StoreError as exc:
            log.warning("recording this node's addresses failed: %s", exc)

    async def acquire(self, rooms: list[RoomState]) -> list[str]:
        """Take the lease of each of ``rooms``; the keys of those another node holds."""

        def acquire_all(repository: Any) -> list[str]:
            epochs = repository.acquire_all([room.key for room in rooms])
            return [room for room, epoch in epochs.items() if epoch is None]

        started = trio.current_time()
        missed = await self._store.read(acquire_all)
        self._renewed(started)
        self._not_acquired = len(missed)
        if missed:
            log.warning(
                "%d rooms are held by other nodes (%s%s); their requests are forwarded to them",
                len(missed), ", ".join(missed[:5]), ", ..." if len(missed) > 5 else "",
            )  # fmt: skip
        return missed

    async def run(
        self,
        lost: Callable[[list[str]], None] | None = None,
        orphans: Callable[[list[str]], Awaitable[None]] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Every ``lease_ttl / 3`` seconds until cancelled: renew and heartbeat, tell ``lost``
        the rooms another node has taken over since, and hand ``orphans`` the rooms of dead
        nodes. A failed round is logged and the next one tried (a lease that expired
        meanwhile may be taken over: fencing then refuses this node's writes for it)."""
        task_status.started()
        while True:
            await trio.sleep(self._ttl / 3)
            await self.round(lost, orphans)

    async def round(
        self,
        lost: Callable[[list[str]], None] | None = None,
        orphans: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        """One round of :meth:`run` (tests call it directly)."""
        started = trio.current_time()
        try:
            gone, found = await self._store.read(partial(_round, renew=True, addresses=self._addresses))
        except NodeTaken as exc:  # ends the conference: serve exits 1 with this line
            self._ours = False  # the leases and the name are the other process's now
            raise LockLost(str(exc)) from None
        except StoreError as exc:
            self._failures += 1
            log.warning("renewing the room leases failed: %s", exc)
            return
        self._renewals += 1
        self._renewed(started)
        if gone:
            self._lost += len(gone)
            log.warning("%d rooms were taken over by other nodes (%s); stopped here",
                        len(gone), ", ".join(gone[:5]))
            if lost is not None:
                lost(gone)
        if found and orphans is not None:
            log.warning("taking over %d rooms of dead nodes (%s)", len(found), ", ".join(found[:5]))
            await orphans(found)

    async def release(self) -> None:
        """Expire every lease of this node now (call after the store stopped writing). Not
        when another process turned out to run as this node (:meth:`ensure_alone` refused
        this one): its leases are that process's, and it goes on serving them."""
        if not self._ours:
            return
        try:
            count = await self._store.read(lambda repository: repository.release())
        except StoreError as exc:
            log.warning("releasing the room leases failed (they expire in %gs): %s", self._ttl, exc)
        else:
            log.debug("released %d room leases", count)

    def statistics(self) -> LeaseStatistics:
        """Counters now."""
        repository: Any = self._store.repository
        return LeaseStatistics(
            held=repository.lease_count,
            renewals=self._renewals,
            renew_failures=self._failures,
            not_acquired=self._not_acquired,
            taken_over=self._taken_over,
            lost=self._lost,
        )


def _round(
    repository: Any, *, renew: bool, addresses: Sequence[str]
) -> tuple[list[str], list[str]]:
    """In the writer thread: renew the leases (unless only advertising), heartbeat, then the
    rooms lost since and the rooms of dead nodes."""
    if not renew:
        repository.heartbeat(addresses)
        return [], []
    renewed = repository.renew()
    repository.heartbeat(addresses)
    gone = repository.lost() if renewed < repository.lease_count else []
    return gone, repository.orphans()
