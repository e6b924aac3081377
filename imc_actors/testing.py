"""Fault injection for tests of apps that run imc-actors (and for imc-actors' own tests).

A :class:`Faults` plan wraps the three boundaries where a conference meets the world: the
pure room transition (``apply``), delivery of notices (the ``sender``) and the store (the
``repository``). Pass its wrappers to :func:`imc_actors.open_conference`::

    faults = Faults(seed=1234)
    faults.fail_apply(room="sip:chat@example.com", command="join")
    async with open_conference(config, **faults.hooks(config)) as conf:
        ...

Each fault fires at a chosen room/command/recipient, for a number of times, or at random
with a rate drawn from the plan's seeded generator (the seed is in ``repr(faults)`` so a failing
run can be reproduced). Every fault that fired is recorded in :attr:`Faults.fired`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from .actors.delivery import DeliveryResult, Sender
from .actors.supervisor import ApplyFn
from .config import Config
from .imc.effects import Notice, Outcome, Write
from .imc.room import InviteFailed, Policy, RoomRequest, apply
from .imc.state import RoomState, member_key
from .store.repository import StoreError
from .store.writer import Backend


class InjectedFault(RuntimeError):
    """Raised by an injected ``apply`` fault (so tests can tell it from a real bug)."""


@dataclass
class _Rule:
    kind: str
    match: dict[str, str | None]
    times: int | None  # None: every time
    rate: float | None
    code: int = 503
    release: trio.Event | None = None
    fired: int = 0

    def due(self, rng: random.Random, **facts: str | None) -> bool:
        for key, wanted in self.match.items():
            if wanted is not None and (facts.get(key) or "").lower() != wanted.lower():
                return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.rate is not None and rng.random() >= self.rate:
            return False
        self.fired += 1
        return True


@dataclass
class Faults:
    """A plan of faults to inject. ``seed`` drives every random choice."""

    seed: int = 0
    fired: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._rules: list[_Rule] = []

    def __repr__(self) -> str:
        return f"Faults(seed={self.seed}, fired={len(self.fired)})"

    # ------------------------------------------------------------------ plans
    def fail_apply(
        self, room: str | None = None, command: str | None = None, *,
        times: int | None = 1, rate: float | None = None,
    ) -> None:
        """Make ``apply`` raise :class:`InjectedFault` for ``room`` (URI) and ``command``
        (canonical name, or ``"chat"``); None matches any."""
        self._rules.append(_Rule("apply", {"room": room, "command": command}, times, rate))

    def fail_delivery(
        self, to: str | None = None, *, code: int = 503, times: int | None = None,
        rate: float | None = None,
    ) -> None:
        """Make delivery to ``to`` (URI; None: anyone) end with ``code`` instead of being sent."""
        self._rules.append(_Rule("deliver", {"to": to}, times, rate, code=code))

    def stall_delivery(self, to: str | None = None, *, times: int | None = None) -> trio.Event:
        """Make deliveries to ``to`` wait until the returned event is set (then they go out)."""
        release = trio.Event()
        self._rules.append(_Rule("stall", {"to": to}, times, None, release=release))
        return release

    def fail_commit(self, *, times: int | None = 1, rate: float | None = None) -> None:
        """Make the next ``times`` store transactions fail (as a database error would)."""
        self._rules.append(_Rule("commit", {}, times, rate))

    def hang_commit(self, *, times: int | None = 1) -> trio.Event:
        """Make store transactions block (in the writer thread) until the event is set."""
        release = trio.Event()
        self._rules.append(_Rule("hang", {}, times, None, release=release))
        return release

    def clear(self) -> None:
        """Drop every rule (faults that are stalling are released)."""
        for rule in self._rules:
            if rule.release is not None:
                rule.release.set()
        self._rules.clear()

    def _take(self, kind: str, **facts: str | None) -> _Rule | None:
        for rule in self._rules:
            if rule.kind == kind and rule.due(self._rng, **facts):
                self.fired.append((kind, ",".join(f"{k}={v}" for k, v in facts.items())))
                return rule
        return None

    # ------------------------------------------------------------------ wrappers
    def wrap_apply(self, inner: ApplyFn = apply) -> ApplyFn:
        def faulty(state: RoomState, op: RoomRequest | InviteFailed, policy: Policy) -> tuple[RoomState, Outcome]:
            command = "invite_failed" if isinstance(op, InviteFailed) else (op.command.name if op.command else "chat")
            if self._take("apply", room=state.uri, command=command):
                raise InjectedFault(f"injected apply fault in {state.uri} at {command}")
            return inner(state, op, policy)

        return faulty

    def wrap_sender(self, inner: Sender) -> Sender:
        async def faulty(notice: Notice, in_reply_to: str) -> DeliveryResult:
            stall = self._take("stall", to=notice.to)
            if stall is not None and stall.release is not None:
                await stall.release.wait()
            rule = self._take("deliver", to=notice.to)
            if rule is not None:
                return DeliveryResult(rule.code, "Injected Fault")
            return await inner(notice, in_reply_to)

        return faulty

    def wrap_repository(self, inner: Backend) -> Backend:
        return _FaultyRepository(inner, self)

    def hooks(self, config: Config, *, sender: Sender | None = None, repository: Backend | None = None) -> dict:
        """Keyword arguments for :func:`imc_actors.open_conference` with every boundary wrapped."""
        from .conference import _discard, open_repository

        return {
            "apply": self.wrap_apply(),
            "sender": self.wrap_sender(sender or _discard),
            "repository": self.wrap_repository(repository or open_repository(config)),
        }


class _FaultyRepository:
    """A repository that fails or hangs on demand (runs in the store's writer thread)."""

    def __init__(self, inner: Backend, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def apply_batch(self, writes: Sequence[Write]) -> None:
        hang = self._faults._take("hang")
        if hang is not None and hang.release is not None:
            trio.from_thread.run(hang.release.wait)  # we are in the store's worker thread
        if self._faults._take("commit"):
            raise StoreError("injected commit fault")
        self._inner.apply_batch(writes)

    def ping(self) -> None:
        if any(rule.kind == "commit" and (rule.times is None or rule.fired < rule.times)
               for rule in self._faults._rules):
            raise StoreError("injected: database down")
        self._inner.ping()

    def load_rooms(self) -> list[RoomState]:
        return self._inner.load_rooms()

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def members_of(state: RoomState | None) -> dict[str, int]:
    """``{member key: flags}`` of a room (None: no room) — handy for before/after comparisons."""
    if state is None:
        return {}
    return {member_key(m.uri): m.flags for m in state.members}


def live_tasks() -> list[trio.lowlevel.Task]:
    """Every task in this Trio run (walks the task tree from the root)."""
    found: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found
