"""This node's room leases, kept for a running conference (issue 13, with ``node`` set).

:class:`LeaseKeeper` takes the lease of every stored room at startup (before the rooms' state
is read, so the state a node serves is never older than its lease), renews all of them every
``lease_ttl / 3`` seconds in one statement, and releases them at a clean shutdown so another
node may take the rooms over at once. A room created later gets its first lease in the
transaction that creates it (:meth:`~imc_actors.store.leases.LeaseTable.fence`). Every write
is fenced by the epochs the repository recorded (:class:`~imc_actors.store.repository.Fenced`).

Each renewal round also heartbeats this node into the node table with the SIP addresses the
server advertises (:meth:`LeaseKeeper.advertise`), so other nodes can find where a room lives
(``Repository.locate``). What it does not do yet (issue 13 items 2 and 4): route the commands
of a room another node holds to that node, or take a dead node's rooms over; such a room's
writes get 503 here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..imc.state import RoomState
from ..store.repository import StoreError
from ..store.writer import Store

log = logging.getLogger("imc_actors.leases")


@dataclass(frozen=True, slots=True)
class LeaseStatistics:
    """``held``: leases this node holds now; ``renewals``/``renew_failures``: renewal rounds
    that worked and that failed; ``not_acquired``: stored rooms whose lease another node held
    at startup."""

    held: int
    renewals: int
    renew_failures: int
    not_acquired: int


class LeaseKeeper:
    """Acquires, renews and releases the leases of one repository's node through ``store``
    (its writer thread; the repository must have ``acquire``/``renew``/``release``)."""

    def __init__(self, store: Store, lease_ttl: float) -> None:
        self._store = store
        self._ttl = lease_ttl
        self._renewals = 0
        self._failures = 0
        self._not_acquired = 0
        self._addresses: tuple[str, ...] = ()

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

        missed = await self._store.read(acquire_all)
        self._not_acquired = len(missed)
        if missed:
            log.warning(
                "%d rooms are held by other nodes (%s%s); their writes get 503 on this node",
                len(missed), ", ".join(missed[:5]), ", ..." if len(missed) > 5 else "",
            )  # fmt: skip
        return missed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew and heartbeat every ``lease_ttl / 3`` seconds until cancelled; a failed round
        is logged and the next one tried (a lease that expired meanwhile may be taken over:
        fencing then refuses this node's writes for it)."""
        task_status.started()
        while True:
            await trio.sleep(self._ttl / 3)
            try:
                await self._store.read(partial(_round, renew=True, addresses=self._addresses))
            except StoreError as exc:
                self._failures += 1
                log.warning("renewing the room leases failed: %s", exc)
            else:
                self._renewals += 1

    async def release(self) -> None:
        """Expire every lease of this node now (call after the store stopped writing)."""
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
        )


def _round(repository: Any, *, renew: bool, addresses: Sequence[str]) -> None:
    """In the writer thread: renew the leases (unless only advertising), then heartbeat."""
    if renew:
        repository.renew()
    repository.heartbeat(addresses)
