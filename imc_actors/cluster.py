"""The whole cluster as the management views see it (issue 13 item 3).

With ``node`` set, each node serves only the rooms whose lease it holds, but ``#rooms``,
JSON-RPC, the MI FIFO and the status page answer for every room of the cluster. They read a
:class:`ClusterSnapshot`, which :meth:`Conference.snapshot
<imc_actors.conference.Conference.snapshot>` builds from two sources:

- the rooms this node serves now (``LeaseKeeper.serving``): their committed state in memory,
  the freshest there is;
- every other room as the database has it (``Repository.cluster``: the room tables, the live
  leases and the node table, read in one transaction in the store's thread). The database is
  authoritative: each owner writes its rooms through before it answers.

A :class:`ClusterView` keeps the last database read for ``cluster_view_age`` seconds (trio
clock) and lets concurrent callers share one read, so a burst of ``#rooms`` or a polling status
page costs one scan, not one each. Nothing here writes: admin actions go to the room's owner
(:meth:`Conference.administer <imc_actors.conference.Conference.administer>`).

Without ``node`` the snapshot is this process's rooms (there is no cluster).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import trio

from .imc.state import RoomState
from .sip import split_user_host
from .store.nodes import ClusterRead, NodeInfo
from .store.writer import Store

__all__ = ["ClusterSnapshot", "ClusterView", "NodeView", "node_views"]


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as ``imc.nodes`` shows it: its SIP ``addresses``, last ``heartbeat`` (seconds
    since the epoch; None once it shut down cleanly), the heartbeat's ``age`` in seconds at the
    time of the read (None likewise), ``live`` (heartbeat within ``lease_ttl``) and how many
    ``rooms`` it holds a live lease of."""

    name: str
    addresses: tuple[str, ...]
    heartbeat: float | None
    age: float | None
    live: bool
    rooms: int

    def as_dict(self) -> dict[str, object]:
        """The JSON-RPC form (``addresses`` as a list, times rounded to milliseconds)."""
        return {
            "name": self.name,
            "addresses": list(self.addresses),
            "heartbeat": self.heartbeat,
            "age": round(self.age, 3) if self.age is not None else None,
            "live": self.live,
            "rooms": self.rooms,
        }


def node_views(
    nodes: Iterable[NodeInfo], owners: Mapping[str, str], now: float, ttl: float
) -> tuple[NodeView, ...]:
    """:class:`NodeView` of each of ``nodes`` at ``now`` (wall clock), counting ``owners``."""
    held: dict[str, int] = {}
    for node in owners.values():
        held[node] = held.get(node, 0) + 1
    views = []
    for info in nodes:
        gone = info.heartbeat <= 0  # a clean shutdown retires it (heartbeat 0)
        views.append(
            NodeView(
                info.name,
                info.addresses,
                None if gone else info.heartbeat,
                None if gone else max(0.0, now - info.heartbeat),
                not gone and info.live(now, ttl),
                held.get(info.name, 0),
            )  # fmt: skip
        )
    return tuple(views)


class ClusterSnapshot:
    """Every room of the cluster at one moment: a :class:`~imc_actors.control.views.RoomSource`
    (``rooms()``, ``room(uri)``) plus who holds each room and the nodes.

    ``node`` is this node's name (None without a cluster); ``owners`` maps room keys to the
    node holding their live lease (a room without one is held by nobody now: the next request
    for it takes it over); ``nodes`` are the node table's rows, by name.
    """

    def __init__(
        self,
        rooms: Iterable[RoomState],
        owners: Mapping[str, str] | None = None,
        nodes: Sequence[NodeView] = (),
        node: str | None = None,
    ) -> None:
        self._rooms = {room.key: room for room in rooms}
        self._sorted = sorted(self._rooms.values(), key=lambda r: r.key)
        self.owners: Mapping[str, str] = owners or {}
        self.nodes = tuple(nodes)
        self.node = node

    def rooms(self) -> list[RoomState]:
        """Every room's committed state, sorted by key."""
        return list(self._sorted)

    def room(self, uri: str) -> RoomState | None:
        """The room at ``uri`` (``sip:name@domain``, any case), or None."""
        name, domain = split_user_host(uri)
        return self._rooms.get(f"{name}@{domain}".lower())

    def owner(self, state: RoomState) -> str | None:
        """The node holding ``state``'s room now, or None (no live lease; no cluster)."""
        return self.owners.get(state.key)


class ClusterView:
    """The database half of a :class:`ClusterSnapshot`: :meth:`read` returns the last
    ``Repository.cluster`` read while it is younger than ``max_age`` seconds, else reads again
    (through ``store``, its writer thread). Callers arriving while a read runs wait for it."""

    def __init__(self, store: Store, max_age: float) -> None:
        self._store = store
        self._max_age = max_age
        self._last: ClusterRead | None = None
        self._at = -float("inf")
        self._reading: trio.Event | None = None
        self.reads = 0

    async def read(self) -> ClusterRead:
        """The cluster as the database has it, at most ``max_age`` old. Checkpoints when it
        reads; raises :class:`~imc_actors.store.repository.StoreError` when the read fails
        (every caller waiting for that read gets it)."""
        while True:
            if self._last is not None and trio.current_time() - self._at < self._max_age:
                return self._last
            if self._reading is None:
                break
            reads = self.reads
            await self._reading.wait()
            if self.reads > reads and self._last is not None:
                return self._last  # the read it waited for worked: share it
        self._reading = done = trio.Event()
        started = trio.current_time()
        try:
            found: ClusterRead = await self._store.read(lambda repository: repository.cluster())
        finally:
            self._reading = None
            done.set()
        self.reads += 1
        self._last, self._at = found, started
        return found
