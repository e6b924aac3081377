"""imc-actors: a SIP instant-message conferencing server, and a Trio library to embed its rooms.

The public API (everything else is internal and may change):

- :func:`open_conference` (async context manager) -> :class:`Conference`: rooms, their
  supervisor and the store, no sockets. ``await conference.handle(IncomingMessage(...))``
  returns the :class:`Answer`; :meth:`Conference.subscribe` gives a :class:`NoticeChannel` of
  what the rooms send (:class:`Delivered` records); :meth:`Conference.rooms`,
  :meth:`Conference.room` and :meth:`Conference.room_status` are read-only views
  (:class:`RoomState`, :class:`Member`, :class:`RoomStatus`).
- :func:`open_server` (async context manager) -> :class:`Server`: the conference plus SIP
  transports, registrar and management interfaces.
- :func:`serve_conference` and :func:`serve_server`: the same as tasks for ``nursery.start``.
- :class:`Config` (:class:`ConfigError`), :class:`Notice`, :class:`DeliveryResult`,
  ``Sender`` (the type of a notice-sending function) and :class:`NoticeRouter`.

Submodules with their own API: :mod:`imc_actors.testing` (fault injection and containment
assertions for your tests) and :mod:`imc_actors.aio` (asyncio applications, through
trio-asyncio; imported on demand because importing trio-asyncio changes asyncio's policy).

Cancellation of the caller's scope is normal shutdown everywhere: actors stop, the commit in
flight finishes, acknowledged changes are durable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .actors.delivery import DeliveryResult, Sender
from .actors.supervisor import Answer
from .conference import Conference, ConferenceClosed, IncomingMessage, RoomStatus, open_conference
from .config import Config, ConfigError
from .embed import serve_conference, serve_server
from .imc.effects import Notice
from .imc.state import Member, RoomState
from .notices import Delivered, NoticeChannel, NoticeRouter

if TYPE_CHECKING:
    from .server import Server, open_server

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Conference",
    "ConferenceClosed",
    "Config",
    "ConfigError",
    "Delivered",
    "DeliveryResult",
    "IncomingMessage",
    "Member",
    "Notice",
    "NoticeChannel",
    "NoticeRouter",
    "RoomState",
    "RoomStatus",
    "Sender",
    "Server",
    "open_conference",
    "open_server",
    "serve_conference",
    "serve_server",
]

# The server pulls in the SIP transports and the management HTTP stack; import it on first use
# so that embedding only the conference stays light.
_LAZY = {"Server", "open_server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import server

        value = getattr(server, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imc_actors' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
