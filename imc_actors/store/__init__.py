"""Storage: Kamailio's imc tables through peewee, and the group-committing Trio writer.

- :class:`Repository` (synchronous; one writer thread): ``init_schema``, ``check_schema``,
  ``load_rooms``, ``apply_batch``, ``ping``, ``close``.
- :class:`Store` (Trio): ``run`` (the writer task), ``commit`` (durable on return),
  ``load_rooms``, ``statistics``.
- :class:`StoreError`, and :class:`StoreUnavailable` (answer 503 with ``retry_after``).
"""

from .repository import Repository, StoreError
from .writer import Store, StoreStatistics, StoreUnavailable

__all__ = ["Repository", "Store", "StoreError", "StoreStatistics", "StoreUnavailable"]
