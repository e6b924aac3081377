"""Running a conference or a whole server as a task of your own Trio application.

:func:`imc_actors.open_conference` and :func:`imc_actors.open_server` are async context
managers; the functions here are the same services in the shape Trio's ``nursery.start``
expects, for applications that run their parts as tasks::

    async with trio.open_nursery() as nursery:
        conference = await nursery.start(serve_conference, config)
        server = await nursery.start(serve_server, other_config)
        ...
        nursery.cancel_scope.cancel()   # or any cancellation of the caller: clean shutdown

Both run until cancelled. Cancellation is normal shutdown: the actors stop, the commit in
flight finishes (shielded), and every change that was acknowledged is durable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .actors.delivery import Sender
from .actors.supervisor import ApplyFn
from .conference import Conference, open_conference
from .config import Config
from .store.writer import Backend

if TYPE_CHECKING:
    from .server import Server

__all__ = ["serve_conference", "serve_server"]


async def serve_conference(
    config: Config,
    *,
    sender: Sender | None = None,
    repository: Backend | None = None,
    apply: ApplyFn | None = None,
    task_status: trio.TaskStatus[Conference] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a conference (no sockets) until cancelled; ``nursery.start`` returns it.

    The keyword arguments are those of :func:`imc_actors.open_conference` (use
    ``functools.partial`` to pass them through ``nursery.start``). Returns only by
    cancellation (or by raising when startup fails, e.g. the database cannot be opened).
    """
    async with open_conference(config, sender=sender, repository=repository, apply=apply) as conference:
        task_status.started(conference)
        await trio.sleep_forever()


async def serve_server(
    config: Config,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the whole server (SIP transports, registrar, management, conference) until
    cancelled; ``nursery.start`` returns the running :class:`~imc_actors.server.Server`
    (its ``addresses`` hold the real ports when the configuration asked for port 0).

    Raises OSError when a socket cannot be bound (before ``nursery.start`` returns).
    """
    from .server import open_server

    async with open_server(config) as server:
        task_status.started(server)
        await trio.sleep_forever()
