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

from ..imc.state import RoomState
from .leases import millis
from .models import MAX_METRICS_BODY, MAX_NODE_ADDRESSES

__all__ = ["ClusterRead", "NodeInfo", "NodeTable", "RoomLocation"]


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


@dataclass(frozen=True, slots=True)
class ClusterRead:
    """The whole cluster as one read of the database found it (``Repository.cluster``):
    every stored ``rooms`` state, ``owners`` (room key -> the node holding its live lease),
    every node, and ``now``, the reader's wall clock (seconds since the epoch)."""

    rooms: list[RoomState]
    owners: dict[str, str]
    nodes: list[NodeInfo]
    now: float


class NodeTable:
    """Reads and writes of the node table and the metrics table through their bound models
    (``Models.node``, ``Models.metrics``)."""

    def __init__(self, model: type[peewee.Model], metrics: type[peewee.Model]) -> None:
        self._model = model
        self._metrics = metrics

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
        node.insert(name=name, addresses=" ".join(addresses), heartbeat=millis(now)).on_conflict(
            conflict_target=_target(node, node.name), preserve=[node.addresses, node.heartbeat]
        ).execute()

    @staticmethod
    def metrics_problem(body: str) -> str | None:
        """Why a metrics snapshot does not fit the table, or None."""
        if len(body) > MAX_METRICS_BODY:
            return f"the metrics snapshot has {len(body)} characters; at most {MAX_METRICS_BODY}"
        return None

    def share_metrics(self, name: str, body: str, now: float) -> None:
        """Replace ``name``'s metrics snapshot with ``body``, stored at ``now``."""
        row = self._metrics
        row.insert(node=name, updated=millis(now), body=body).on_conflict(
            conflict_target=_target(row, row.node), preserve=[row.updated, row.body]
        ).execute()

    def peer_metrics(self, name: str, since: float) -> list[tuple[str, float, str]]:
        """``(node, updated seconds, body)`` of every other node's snapshot since ``since``."""
        row = self._metrics
        query = (
            row.select(row.node, row.updated, row.body)
            .where(row.node != name, row.updated >= millis(since))
            .order_by(row.node)
        )
        return [(str(n), int(u) / 1000, str(b)) for n, u, b in query.tuples()]  # type: ignore[call-overload]

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


def _target(model: type[peewee.Model], key: peewee.Field) -> list[peewee.Field] | None:
    """The upsert's conflict target: MySQL's ON DUPLICATE KEY UPDATE takes none (the primary
    key is it)."""
    return None if isinstance(model._meta.database, peewee.MySQLDatabase) else [key]


def _info(row: tuple[object, ...]) -> NodeInfo:
    name, addresses, heartbeat = row
    return NodeInfo(str(name), tuple(str(addresses).split()), int(heartbeat) / 1000)  # type: ignore[call-overload]
