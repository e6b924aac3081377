"""Storage: Kamailio's imc tables through peewee, and the group-committing Trio writer.

- :class:`Repository` (synchronous; one writer thread): ``init_schema``, ``check_schema``,
  ``load_rooms``, ``apply_batch``, ``ping``, ``close``.
- :class:`Store` (Trio): ``run`` (the writer task), ``commit`` (durable on return),
  ``load_rooms``, ``statistics``.
- :class:`StoreError`, and :class:`StoreUnavailable` (answer 503 with ``retry_after``) and
  :class:`StoreStopped` (the store stopped: shutdown, Ctrl-C; no database failure).
- :class:`Fenced`: a write for rooms whose lease this node lost (issue 13; 503 too); the
  leases themselves are :mod:`.leases`, the node registry :mod:`.nodes`.
"""

from .repository import Fenced, Repository, StoreError
from .writer import Store, StoreStatistics, StoreStopped, StoreUnavailable

__all__ = ["Fenced", "Repository", "Store", "StoreError", "StoreStatistics", "StoreStopped",
           "StoreUnavailable"]
