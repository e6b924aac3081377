"""Subscriptions to what the rooms send: deliver notices your own way.

Every notice a room sends (a relayed chat line, a ``***`` notice, a ``#members`` reply) goes
through one :class:`NoticeRouter`, the conference's *sender*. With no subscription the router
hands each notice to its fallback sender (the SIP client in the server, a no-op in a bare
conference). An application subscribes with :meth:`NoticeRouter.subscribe` (also reachable as
:meth:`imc_actors.Conference.subscribe`) and gets a :class:`NoticeChannel`: a bounded Trio
memory channel of :class:`Delivered` records::

    with conference.subscribe("sip:bot@example.com") as inbox:   # the app delivers to the bot
        async for delivered in inbox:
            print(delivered.notice.to, delivered.notice.body)

A subscription *claims* the recipients it names: their notices go to the channel instead of
the fallback (the bot, a WebSocket user, ... is reached by the app, not by SIP). Without
recipients it claims every notice. ``observe=True`` makes it a tap instead: it gets a copy and
the notice is still delivered the normal way (logging, a dashboard, tests).

Backpressure: a channel holds ``max_buffer`` notices. When it is full, ``when_full="wait"``
(default) makes that delivery wait for the application (the conference's delivery queue is
bounded too, so a stuck subscriber eventually slows the rooms' fan-out, never memory);
``when_full="fail"`` refuses the notice and reports the delivery as failed (503), which the
conference treats like any member who cannot be reached: a member's notice is stored and
delivered when the member is back (see :mod:`imc_actors.actors.delivery`), an invitation that
cannot be delivered is withdrawn.

A claimed delivery counts as delivered (200) once it is in the channel, unless the
subscription asked for ``confirm=True``: then each :class:`Delivered` must be confirmed with
:meth:`Delivered.confirm` (``code`` < 300 ok, else failed) within ``confirm_timeout`` seconds
(else 408), as a SIP member would answer.

When the conference ends every channel is closed: ``async for`` loops over them finish after
the notices already buffered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import trio

from .actors.delivery import DeliveryResult, Sender
from .imc.effects import Notice
from .imc.state import member_key
from .sip import canonical

__all__ = ["Delivered", "NoticeChannel", "NoticeChannelStatistics", "NoticeRouter"]

WhenFull = Literal["wait", "fail"]


class _Discard:
    """The fallback of a bare conference: every notice counts as delivered (200), at once."""

    _OK = DeliveryResult(200, "OK")

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        return self._OK

    def start(self, notice: Notice, in_reply_to: str, on_done: Callable[[DeliveryResult], None]) -> bool:
        on_done(self._OK)
        return True


_discard = _Discard()


class _Confirmation:
    """The application's answer to one confirmed delivery."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result = DeliveryResult(200, "OK")


@dataclass(frozen=True, slots=True)
class Delivered:
    """One notice handed to a subscriber.

    ``notice`` is what the room sends: ``to`` (recipient URI), ``sender`` (the room URI, or the
    Request-URI for room-less answers), ``body`` (bytes), ``kind`` (``notice``, ``relay`` or
    ``reply``), ``content_type`` and ``invite_of``. ``in_reply_to`` is the Call-ID of the
    MESSAGE that caused it (the server sends it as ``In-Reply-To``).
    """

    notice: Notice
    in_reply_to: str
    _confirmation: _Confirmation | None = field(default=None, repr=False, compare=False)

    def confirm(self, code: int = 200, reason: str = "OK") -> None:
        """Report how delivering this notice went (a SIP-like final ``code``).

        Only subscriptions made with ``confirm=True`` wait for it; elsewhere it does nothing.
        Confirming twice keeps the first answer. Never blocks.
        """
        confirmation = self._confirmation
        if confirmation is not None and not confirmation.done.is_set():
            confirmation.result = DeliveryResult(code, reason)
            confirmation.done.set()


@dataclass(frozen=True, slots=True)
class NoticeChannelStatistics:
    """Counters of one subscription: ``received`` notices put in the channel, ``dropped``
    notices refused because it was full (``when_full="fail"``), ``queued`` waiting in it now."""

    received: int
    dropped: int
    queued: int


class NoticeChannel:
    """One subscription (see the module docstring). Iterate it, or call :meth:`receive`.

    Use it as a context manager (or call :meth:`close`) to unsubscribe; notices then go the
    normal way again, and iterating ends after the notices already in the channel. ``recipients`` is None (every notice) or the set of member keys
    (``user@host``, lower case) it receives.
    """

    def __init__(
        self,
        router: NoticeRouter,
        recipients: frozenset[str] | None,
        *,
        max_buffer: int,
        observe: bool,
        when_full: WhenFull,
        confirm: bool,
        confirm_timeout: float,
    ) -> None:
        if not isinstance(max_buffer, int) or isinstance(max_buffer, bool):
            raise TypeError(f"max_buffer must be an int, not {type(max_buffer).__name__}")
        if max_buffer < 0:
            raise ValueError("max_buffer must be >= 0")
        if when_full not in ("wait", "fail"):
            raise ValueError("when_full must be 'wait' or 'fail'")
        if not isinstance(confirm_timeout, int | float) or isinstance(confirm_timeout, bool):
            raise TypeError(
                f"confirm_timeout must be a number of seconds or None, not {type(confirm_timeout).__name__}"
            )
        if not confirm_timeout >= 0:  # NaN too
            raise ValueError(f"confirm_timeout must be >= 0 seconds (None: no limit), not {confirm_timeout!r}")
        self.recipients = recipients
        self.observe = observe
        self.when_full: WhenFull = when_full
        self.confirm = confirm
        self.confirm_timeout = confirm_timeout
        self._router = router
        self._send, self._receive = trio.open_memory_channel[Delivered](max_buffer)
        self._received = 0
        self._dropped = 0

    def __repr__(self) -> str:
        who = "all" if self.recipients is None else ",".join(sorted(self.recipients))
        return f"<NoticeChannel {who}{' observe' if self.observe else ''}>"

    def matches(self, to: str) -> bool:
        """Whether a notice to ``to`` (a URI) is for this subscription."""
        return self.recipients is None or member_key(to) in self.recipients

    # ------------------------------------------------------------------ receiving
    async def receive(self) -> Delivered:
        """The next notice; waits for one. Raises :class:`trio.EndOfChannel` once the
        subscription is closed or the conference has ended, after the notices already in the
        channel. Checkpoints."""
        return await self._receive.receive()

    def receive_nowait(self) -> Delivered:
        """The next buffered notice, or :class:`trio.WouldBlock` when none is waiting."""
        return self._receive.receive_nowait()

    def __aiter__(self) -> NoticeChannel:
        return self

    async def __anext__(self) -> Delivered:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Unsubscribe: no new notices come (they go the normal way again); the ones already in
        the channel can still be received, then iteration ends. Does not checkpoint."""
        self._router._remove(self)
        self._send.close()

    def __enter__(self) -> NoticeChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> NoticeChannelStatistics:
        return NoticeChannelStatistics(
            received=self._received,
            dropped=self._dropped,
            queued=self._send.statistics().current_buffer_used,
        )

    # ------------------------------------------------------------------ router side
    async def _offer(self, notice: Notice, in_reply_to: str) -> DeliveryResult | None:
        """Put one notice in the channel; None when the channel is closed (not delivered)."""
        confirmation = _Confirmation() if self.confirm and not self.observe else None
        delivered = Delivered(notice, in_reply_to, confirmation)
        try:
            try:
                self._send.send_nowait(delivered)
            except trio.WouldBlock:
                if self.when_full == "fail":
                    self._dropped += 1
                    return DeliveryResult(503, "Subscriber Busy")
                await self._send.send(delivered)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._router._remove(self)
            return None
        self._received += 1
        if confirmation is None:
            return DeliveryResult(200, "OK")
        with trio.move_on_after(self.confirm_timeout):
            await confirmation.done.wait()
        if not confirmation.done.is_set():
            return DeliveryResult(408, "Request Timeout")
        return confirmation.result

    def _end(self) -> None:
        """The conference ended: the receiver sees EndOfChannel after the buffered notices."""
        self._send.close()


class NoticeRouter:
    """The conference's sender: subscriptions first, ``fallback`` for everything unclaimed.

    ``fallback`` defaults to discarding (answering 200). Pass a router as ``sender`` to
    :func:`imc_actors.open_conference` to subscribe before the conference starts; otherwise the
    conference makes one around the ``sender`` it is given.
    """

    def __init__(self, fallback: Sender | None = None) -> None:
        self.fallback: Sender = fallback or _discard
        self._channels: list[NoticeChannel] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the conference using this router has ended."""
        return self._closed

    def subscribe(
        self,
        *recipients: str,
        max_buffer: int = 256,
        observe: bool = False,
        when_full: WhenFull = "wait",
        confirm: bool = False,
        confirm_timeout: float | None = 32.0,
    ) -> NoticeChannel:
        """Subscribe to the notices for ``recipients`` (URIs, e.g. ``sip:bot@example.com``;
        none: every notice). See the module docstring for ``observe``, ``when_full``,
        ``confirm`` and ``confirm_timeout`` (seconds, 0 or more; None: wait for ever). Raises
        ValueError for a negative ``max_buffer``, a ``when_full`` other than ``"wait"`` or
        ``"fail"``, a negative or NaN ``confirm_timeout`` (TypeError for one of another type),
        and RuntimeError once the conference has ended."""
        if self._closed:
            raise RuntimeError("the conference has ended; cannot subscribe")
        keys = frozenset(_recipient_key(uri) for uri in recipients) if recipients else None
        timeout = confirm_timeout if confirm_timeout is not None else math.inf
        channel = NoticeChannel(
            self, keys, max_buffer=max_buffer, observe=observe, when_full=when_full,
            confirm=confirm, confirm_timeout=timeout,
        )
        self._channels.append(channel)
        return channel

    def subscriptions(self) -> list[NoticeChannel]:
        """The open subscriptions, oldest first."""
        return list(self._channels)

    async def __call__(self, notice: Notice, in_reply_to: str) -> DeliveryResult:
        """Deliver one notice: copies to matching observers, then to the claiming subscriptions,
        or through the fallback when none claims it. Checkpoints only when it waits (a full
        channel with ``when_full="wait"``, a confirmation, or the fallback)."""
        if not self._channels:
            return await self.fallback(notice, in_reply_to)
        result: DeliveryResult | None = None
        for channel in self._matching(notice.to):
            outcome = await channel._offer(notice, in_reply_to)
            if channel.observe or outcome is None:
                continue
            if result is None or (result.ok and not outcome.ok):
                result = outcome
        if result is None:  # nobody claimed it
            return await self.fallback(notice, in_reply_to)
        return result

    def start(self, notice: Notice, in_reply_to: str, on_done: Callable[[DeliveryResult], None]) -> bool:
        """Hand ``notice`` to the fallback's ``start`` (send now, outcome to ``on_done``
        later) when no subscription is open and the fallback has one; False otherwise (then
        deliver it by calling the router). Never checkpoints."""
        if self._channels:
            return False
        start = getattr(self.fallback, "start", None)
        return start is not None and bool(start(notice, in_reply_to, on_done))

    def _matching(self, to: str) -> Iterable[NoticeChannel]:
        observers = [c for c in self._channels if c.observe and c.matches(to)]
        claimers = [c for c in self._channels if not c.observe and c.matches(to)]
        return observers + claimers

    def _remove(self, channel: NoticeChannel) -> None:
        try:
            self._channels.remove(channel)
        except ValueError:
            pass

    def close(self) -> None:
        """End every subscription (called when the conference ends)."""
        self._closed = True
        for channel in self._channels:
            channel._end()
        self._channels.clear()


def _recipient_key(uri: str) -> str:
    """The member key a subscription to ``uri`` matches: the URI read as the server reads a
    From (port, parameters, display name dropped, escapes canonical), so
    ``sip:bob@x:5060`` and ``"Bob" <sip:%62ob@x>`` are Bob; a ``user@host`` without a scheme
    as it is written."""
    try:
        uri = canonical(uri)
    except (ValueError, TypeError):
        pass
    return member_key(uri)
