"""Driving a conference from an asyncio application, through trio-asyncio.

imc-actors is Trio code. An asyncio application (aiohttp, FastAPI under an asyncio server,
plain ``asyncio.start_server``...) uses it by running on trio-asyncio's event loop, which is an
asyncio loop that lives inside a Trio run. This module gives that application an
asyncio-flavoured handle on a running conference::

    import imc_actors.aio

    async def app(conference: imc_actors.aio.AsyncioConference) -> None:   # asyncio code
        answer = await conference.handle(IncomingMessage(...))
        async for delivered in conference.subscribe("sip:bot@example.com"):
            ...

    imc_actors.aio.run(app, config)          # instead of asyncio.run(app(...))

Or, from Trio code, ``async with open_asyncio_conference(config) as conference:`` and hand
``conference`` to asyncio code running on the same loop (``trio_asyncio.aio_as_trio``).

Loop lifetime rules:

- The conference lives inside a trio-asyncio loop: :func:`open_asyncio_conference` uses the
  loop of the enclosing ``trio_asyncio.open_loop()`` block when there is one (the loop then
  outlives the conference), else opens its own, then the conference, and closes them in the
  reverse order. :func:`run` does the same around your coroutine function and returns its
  result.
- The coroutines of :class:`AsyncioConference` must be awaited from asyncio code running on
  *that* loop (a plain ``asyncio.run`` loop raises RuntimeError: there is no Trio run to call).
  Its plain methods (:meth:`~AsyncioConference.rooms` and the like) are safe from either side:
  everything runs in one thread.
- When the block ends the conference ends first: :meth:`~AsyncioConference.handle` raises
  :class:`ConferenceClosed` afterwards, and ``async for`` over a subscription finishes. Then
  the loop closes, cancelling the asyncio tasks still running (as ``asyncio.run`` does): stop
  your own tasks (servers, consumers) before the block ends if they need a clean exit.
- Cancelling an asyncio task that awaits :meth:`~AsyncioConference.handle` cancels the wait,
  not the command: once a room accepted it, it is carried out (and made durable) all the same.
- Importing this module imports trio-asyncio, which installs its asyncio event loop policy
  (that is why ``import imc_actors`` does not import it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TypeVar

import trio
import trio_asyncio

from .actors.delivery import Sender
from .actors.supervisor import Answer, ApplyFn
from .conference import Conference, ConferenceClosed, IncomingMessage, RoomStatus, open_conference
from .config import Config
from .imc.state import RoomState
from .notices import Delivered, NoticeChannel, WhenFull
from .store.writer import Backend

__all__ = ["AsyncioConference", "AsyncioNotices", "ConferenceClosed", "open_asyncio_conference", "run"]

T = TypeVar("T")


class AsyncioNotices:
    """An asyncio async iterator over one subscription (see :meth:`AsyncioConference.subscribe`).

    Use it as ``async for delivered in notices``, or ``await notices.receive()``; close it
    (``with notices:`` or :meth:`close`) to unsubscribe.
    """

    def __init__(self, channel: NoticeChannel, loop: trio_asyncio.TrioEventLoop) -> None:
        self.channel = channel
        self._loop = loop

    async def receive(self) -> Delivered:
        """The next notice (asyncio coroutine). Raises StopAsyncIteration once the conference has
        ended or the subscription is closed."""
        try:
            return await self._loop.trio_as_future(self.channel.receive)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def __aiter__(self) -> AsyncioNotices:
        return self

    async def __anext__(self) -> Delivered:
        return await self.receive()

    def close(self) -> None:
        """Unsubscribe (safe from asyncio or Trio code)."""
        self.channel.close()

    def __enter__(self) -> AsyncioNotices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncioConference:
    """A running :class:`~imc_actors.Conference` as asyncio code sees it.

    ``loop`` is the trio-asyncio loop the asyncio code runs on (default: the current one).
    Coroutine methods are asyncio coroutines; see the module docstring for the loop rules.
    """

    def __init__(self, conference: Conference, loop: trio_asyncio.TrioEventLoop | None = None) -> None:
        self.conference = conference
        self.loop: trio_asyncio.TrioEventLoop = loop if loop is not None else trio_asyncio.current_loop.get()
        if self.loop is None:
            raise RuntimeError("no trio-asyncio loop is running (use open_asyncio_conference or run)")

    @property
    def closed(self) -> bool:
        """True once the conference has ended."""
        return self.conference.closed

    async def handle(self, msg: IncomingMessage) -> Answer:
        """Carry out one command or relay one chat message; the SIP answer (asyncio coroutine).

        Returns once the change is durable (see :meth:`Conference.handle`). Raises
        :class:`ConferenceClosed` once the conference has ended.
        """
        if self.conference.closed:
            raise ConferenceClosed("the conference has ended")
        return await self.loop.trio_as_future(self.conference.handle, msg)

    async def message(
        self,
        request_uri: str,
        sender: str,
        body: str | bytes,
        *,
        content_type: str | None = "text/plain",
        call_id: str = "",
    ) -> Answer:
        """:meth:`handle` for a MESSAGE from ``sender`` to ``request_uri`` with ``body`` (a str is
        sent as UTF-8)."""
        data = body.encode() if isinstance(body, str) else body
        return await self.handle(IncomingMessage(request_uri, sender, data, content_type, call_id))

    def subscribe(
        self,
        *recipients: str,
        max_buffer: int = 256,
        observe: bool = False,
        when_full: WhenFull = "wait",
        confirm: bool = False,
        confirm_timeout: float | None = 32.0,
    ) -> AsyncioNotices:
        """:meth:`Conference.subscribe`, iterable from asyncio code. Does not block."""
        channel = self.conference.subscribe(
            *recipients, max_buffer=max_buffer, observe=observe, when_full=when_full,
            confirm=confirm, confirm_timeout=confirm_timeout,
        )
        return AsyncioNotices(channel, self.loop)

    def rooms(self) -> list[RoomState]:
        """Every room's committed state (immutable records), sorted by URI."""
        return self.conference.rooms()

    def room(self, uri: str) -> RoomState | None:
        """The committed state of the room at ``uri``, or None."""
        return self.conference.room(uri)

    def room_status(self, uri: str) -> RoomStatus | None:
        """The supervisor's view of the room at ``uri`` (restarts, quarantine, mailbox)."""
        return self.conference.room_status(uri)


@asynccontextmanager
async def open_asyncio_conference(
    config: Config,
    *,
    sender: Sender | None = None,
    repository: Backend | None = None,
    apply: ApplyFn | None = None,
) -> AsyncIterator[AsyncioConference]:
    """(Trio code) A conference on the current trio-asyncio loop (one is opened when there is
    none); yield the asyncio view.

    The keyword arguments are those of :func:`imc_actors.open_conference`. On exit the
    conference ends first, then the loop if this call opened it (see the module docstring).
    """
    running = trio_asyncio.current_loop.get()
    if running is not None:
        async with open_conference(config, sender=sender, repository=repository, apply=apply) as conference:
            yield AsyncioConference(conference, running)
        return
    async with trio_asyncio.open_loop() as loop:
        async with open_conference(config, sender=sender, repository=repository, apply=apply) as conference:
            yield AsyncioConference(conference, loop)


def run(
    main: Callable[[AsyncioConference], Awaitable[T]],
    config: Config,
    *,
    sender: Sender | None = None,
    repository: Backend | None = None,
    apply: ApplyFn | None = None,
) -> T:
    """Like ``asyncio.run(main(conference))``: run the asyncio coroutine function ``main`` with
    a running conference, under Trio, and return its result.

    Starts a Trio run (so it cannot be called from inside one). When ``main`` returns or
    raises, the conference and then the loop are closed. Ctrl-C raises KeyboardInterrupt.
    """

    async def trio_main() -> T:
        async with open_asyncio_conference(config, sender=sender, repository=repository, apply=apply) as conference:
            result: T = await trio_asyncio.aio_as_trio(main)(conference)
            return result

    return trio.run(trio_main)
