"""What the store writes and reads besides rooms and members: pending notices and bindings.

Rooms and members change through the :data:`~imc_actors.imc.effects.Write` records that the
pure room logic returns. These records are the same idea for imc-actors' own two tables
(``imc_pending``, ``imc_location``, see :mod:`imc_actors.store.models`): small immutable
values that the store commits in its group-committed transactions, in order, with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..imc.effects import Write

__all__ = [
    "Binding",
    "BindingClear",
    "BindingDelete",
    "BindingExpire",
    "BindingSet",
    "HistoryExpire",
    "PendingAdd",
    "PendingDelete",
    "PendingExpire",
    "PendingRow",
    "PendingTrim",
    "StoreWrite",
]


# ---------------------------------------------------------------------- pending notices
@dataclass(frozen=True, slots=True)
class PendingAdd:
    """Store one notice for an unreachable member.

    ``member`` is the member key (``user@host``, lower case); ``recipient`` the URI the room
    addressed (To); ``sender`` the room URI (From); ``created`` and ``expires`` seconds since
    the epoch; ``in_reply_to`` the Call-ID of the MESSAGE that caused it.
    """

    member: str
    recipient: str
    sender: str
    body: bytes
    kind: str
    content_type: str | None
    in_reply_to: str
    created: float
    expires: float


@dataclass(frozen=True, slots=True)
class PendingDelete:
    """Delete the pending rows ``ids`` (delivered, refused or expired)."""

    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PendingTrim:
    """Keep only the newest ``keep`` pending rows of ``member`` (``pending_max``)."""

    member: str
    keep: int


@dataclass(frozen=True, slots=True)
class PendingExpire:
    """Delete every pending row whose expiry is at or before ``now`` (epoch seconds)."""

    now: float


@dataclass(frozen=True, slots=True)
class PendingRow:
    """One stored notice as read back: its row ``id`` and what :class:`PendingAdd` stored."""

    id: int
    recipient: str
    sender: str
    body: bytes
    kind: str
    content_type: str | None
    in_reply_to: str
    created: float
    expires: float


# ---------------------------------------------------------------------- the archive
@dataclass(frozen=True, slots=True)
class HistoryExpire:
    """Delete every archived chat line older than ``before`` (epoch seconds; ``history_days``).

    Appending lines (:class:`~imc_actors.imc.effects.HistoryAppend`) and the room's topic
    (:class:`~imc_actors.imc.effects.RoomInfoSet`) are room writes, made by the room logic.
    """

    before: float


# ---------------------------------------------------------------------- bindings
@dataclass(frozen=True, slots=True)
class BindingSet:
    """Create or replace the binding of ``contact`` for ``aor`` (``user@host``).

    ``expires`` is the wall-clock expiry (epoch seconds); ``call_id``/``cseq`` of the REGISTER
    that set it; ``user_agent`` its User-Agent; ``received`` where it came from
    (``sip:ip:port;transport=…``); ``q`` the contact's q value.
    """

    aor: str
    contact: str
    expires: float
    call_id: str
    cseq: int
    user_agent: str = ""
    received: str | None = None
    q: float = 1.0


@dataclass(frozen=True, slots=True)
class BindingDelete:
    """Remove the binding of ``contact`` for ``aor``."""

    aor: str
    contact: str


@dataclass(frozen=True, slots=True)
class BindingClear:
    """Remove every binding of ``aor`` (``Contact: *``)."""

    aor: str


@dataclass(frozen=True, slots=True)
class BindingExpire:
    """Remove every binding whose expiry is at or before ``now`` (epoch seconds)."""

    now: float


@dataclass(frozen=True, slots=True)
class Binding:
    """One stored binding as read back (see :class:`BindingSet`)."""

    aor: str
    contact: str
    expires: float
    call_id: str
    cseq: int
    user_agent: str
    received: str | None
    q: float


#: Everything :meth:`~imc_actors.store.repository.Repository.apply_batch` takes.
StoreWrite = (
    Write
    | PendingAdd
    | PendingDelete
    | PendingTrim
    | PendingExpire
    | BindingSet
    | BindingDelete
    | BindingClear
    | BindingExpire
    | HistoryExpire
)
