"""The archive's age limit: drop chat lines older than ``history_days``, hourly.

The count limit (``history_max``) is kept as lines are appended (see
:mod:`imc_actors.store.own_tables`); this task is the age side, as delivery's expiry loop is
for stored notices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from ..store.records import HistoryExpire
from ..store.repository import StoreError

log = logging.getLogger("imc_actors.archive")

#: Seconds between two sweeps of the archive (at most; shorter when history_days is).
SWEEP_INTERVAL = 3600.0
DAY = 86400.0


class ArchiveStore(Protocol):
    async def commit(self, writes: Sequence[Any]) -> None: ...


async def expire_history(
    store: ArchiveStore, days: int, clock: Callable[[], float] = time.time
) -> None:
    """Every :data:`SWEEP_INTERVAL` seconds, delete the archived lines older than ``days`` days.
    Runs until cancelled; a failed sweep is logged and retried at the next one."""
    while True:
        await trio.sleep(min(SWEEP_INTERVAL, days * DAY))
        try:
            await store.commit([HistoryExpire(clock() - days * DAY)])
        except StoreError as exc:
            log.warning("expiring old history failed: %s", exc)
