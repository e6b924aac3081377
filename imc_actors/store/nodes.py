"""The node registry: where each node of a cluster can be reached (issue 13, item 2).

One row of the node table (:func:`~imc_actors.store.models.bind_models`, ``node_table``) per
node: its SIP listen addresses (``udp:host:port`` ..., space-separated) and its last
heartbeat (milliseconds since the epoch, on its own wall clock, like the leases of
:mod:`imc_actors.store.leases`). A node heartbeats whenever it renews its leases; forwarding
uses :class:`NodeTable` with the leases to find where a room lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import peewee

from .leases import millis
from .models import MAX_NODE_ADDRESSES

__all__ = ["NodeInfo", "NodeTable", "RoomLocation"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as stored: its ``addresses`` and last ``heartbeat`` (seconds since the epoch)."""

    name: str
    addresses: tuple[str, ...]
    heartbeat: float

    def live(self, now: float, ttl: float) -> bool:
        """True when the node has heartbeat within the last ``ttl`` seconds at ``now``."""
        return now - self.heartbeat < ttl


@dataclass(frozen=True, slots=True)
class RoomLocation:
    """Where a room is served now: the ``node`` holding its live lease, under ``epoch``, and
    that node's SIP listen ``addresses`` (empty when it has not heartbeat yet)."""

    room: str
    node: str
    epoch: int
    addresses: tuple[str, ...]


class NodeTable:
    """Reads and writes of the node table through its bound model (``Models.node``)."""

    def __init__(self, model: type[peewee.Model]) -> None:
        self._model = model

    @staticmethod
    def problem(addresses: Sequence[str]) -> str | None:
        """Why ``addresses`` do not fit the table, or None."""
        text = " ".join(addresses)
        if len(text) > MAX_NODE_ADDRESSES:
            return (f"the listen addresses take {len(text)} characters; the column holds "
                    f"{MAX_NODE_ADDRESSES}")
        return None

    def heartbeat(self, name: str, addresses: Sequence[str], now: float) -> None:
        """Insert or update ``name``'s row: its addresses and a heartbeat at ``now``."""
        node = self._model
        # MySQL's ON DUPLICATE KEY UPDATE takes no conflict target (the primary key is it)
        target = None if isinstance(node._meta.database, peewee.MySQLDatabase) else [node.name]
        node.insert(name=name, addresses=" ".join(addresses), heartbeat=millis(now)).on_conflict(
            conflict_target=target, preserve=[node.addresses, node.heartbeat]
        ).execute()

    @property
    def table(self) -> str:
        """The node table's name."""
        return str(self._model._meta.table_name)

    def retire(self, name: str) -> None:
        """Mark ``name`` as gone (heartbeat 0): a clean shutdown, so the other nodes' scans
        take its rooms over at once instead of after ``lease_ttl``."""
        node = self._model
        node.update(heartbeat=0).where(node.name == name).execute()

    def get(self, name: str) -> NodeInfo | None:
        """``name``'s row, or None when it never heartbeat."""
        node = self._model
        row = node.select(node.name, node.addresses, node.heartbeat).where(node.name == name)
        found = row.tuples().first()
        return _info(found) if found is not None else None

    def all(self) -> list[NodeInfo]:
        """Every node, by name."""
        node = self._model
        rows = node.select(node.name, node.addresses, node.heartbeat).order_by(node.name)
        return [_info(row) for row in rows.tuples()]


def _info(row: tuple[object, ...]) -> NodeInfo:
    name, addresses, heartbeat = row
    return NodeInfo(str(name), tuple(str(addresses).split()), int(heartbeat) / 1000)  # type: ignore[call-overload]
