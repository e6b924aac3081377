"""Fault injection for tests of apps that run imc-actors (and for imc-actors' own tests).

A :class:`Faults` plan wraps the four boundaries where a conference meets the world: the pure
room transition (``apply``), delivery of notices (the sender), the room actors' commits (the
store) and the database (the repository). Open a conference through the plan::

    faults = Faults(seed=1234)
    faults.fail_apply(room="sip:chat@example.com", command="join")
    async with faults.open_conference(config) as conf:
        ...

(or pass ``**faults.hooks(config)`` to :func:`imc_actors.open_conference`). What can be made to
go wrong, and where:

======================  ==================================================================
``fail_apply``          a room's ``apply`` raises :class:`InjectedFault`: its actor crashes and
                        is restarted (the command gets 500)
``fail_delivery``       a notice is not delivered; the delivery ends with ``code``
``stall_delivery``      deliveries wait until the returned event is set
``fail_commit``         a commit fails as a database error would (scoped to a room/command, or
                        the whole database: one 500 by default; with ``times=None`` it is
                        *down* and answers 503 until cleared)
``hang_commit``         a commit waits until the returned event is set (scoped: that room
                        only; unscoped: the database hangs and every room's writes wait, and
                        get 503 after ``db_timeout``, wall-clock time even on a MockClock)
``stall_room``          a room's actor stops at a command until the returned event is set;
                        its mailbox fills with whatever arrives meanwhile
``fill_mailbox``        fills a room's mailbox for real, now: the next command gets 503
======================  ==================================================================

Each fault fires at a chosen room/command/recipient, for ``times`` times (None: every time), or
at random with probability ``rate``. Random draws are made from the plan's ``seed`` and *what*
is being decided (the rule, the room/command/recipient, and how many times that same thing was
decided before), not from the order in which concurrent tasks get there, so a seed reproduces
the same faults at the same places. ``repr(faults)`` shows the seed: put the plan in your
assertion messages (``assert answer.code == 200, faults``). Every fault that fired is recorded
in :attr:`Faults.fired`; ``await faults.wait_fired()`` returns once one has (a stall or hang
counts when it starts to wait: the room, or the database, is stopped from then on).

Containment helpers: :func:`snapshot` + :func:`assert_contained` (the failing room restarted,
no other room restarted, quarantined or changed), :func:`assert_durable` (what the conference
has acknowledged is exactly what the database holds: nothing acknowledged lost, nothing refused
half-written) and :func:`assert_no_leaked_tasks`.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from .actors.delivery import DeliveryResult, Sender
from .actors.supervisor import Answer, ApplyFn, Committer
from .conference import Conference, IncomingMessage, open_conference, open_repository
from .config import Config
from .imc.effects import (
    BanDelete,
    BanSet,
    LimitSet,
    MemberDelete,
    MemberUpsert,
    Notice,
    Outcome,
    RoomDelete,
    RoomUpsert,
    Write,
)
from .imc.room import InviteFailed, Policy, RoomRequest, apply
from .imc.state import RoomState, member_key
from .store.repository import StoreError
from .store.writer import Backend

__all__ = [
    "SEED_ENV",
    "Faults",
    "FilledMailbox",
    "InjectedFault",
    "Snapshot",
    "assert_contained",
    "assert_durable",
    "assert_no_leaked_tasks",
    "live_tasks",
    "members_of",
    "rooms_of",
    "snapshot",
]

#: Environment variable :meth:`Faults.random` takes its seed from (to replay a failing run).
SEED_ENV = "IMC_FAULT_SEED"


class InjectedFault(RuntimeError):
    """Raised by an injected ``apply`` fault (so tests can tell it from a real bug)."""


@dataclass
class _Rule:
    kind: str
    match: dict[str, str | None]
    times: int | None  # None: every time
    rate: float | None
    index: int = 0
    code: int = 503
    scoped: bool = False
    release: trio.Event | None = None
    entered: trio.Event = field(default_factory=trio.Event)
    fired: int = 0
    seen: dict[str, int] = field(default_factory=dict)

    def matches(self, facts: dict[str, str | None]) -> bool:
        for key, wanted in self.match.items():
            if wanted is None:
                continue
            have = facts.get(key) or ""
            if key in ("room", "to"):
                if member_key(have) != member_key(wanted):
                    return False
            elif have.lower() != wanted.lower():
                return False
        return True

    def draw(self, seed: int, facts: dict[str, str | None]) -> bool:
        """Whether the rule fires now (counts it when it does)."""
        if self.times is not None and self.fired >= self.times:
            return False
        if self.rate is not None:
            what = _describe(facts)
            nth = self.seen.get(what, 0)
            self.seen[what] = nth + 1
            if random.Random(f"{seed}:{self.index}:{what}:{nth}").random() >= self.rate:
                return False
        self.fired += 1
        return True


def _describe(facts: dict[str, str | None]) -> str:
    return ",".join(f"{k}={v}" for k, v in facts.items())


def _room_of(write: Write) -> str:
    if isinstance(write, RoomUpsert | RoomDelete):
        return f"sip:{write.name}@{write.domain}"
    if isinstance(write, MemberUpsert | MemberDelete | BanSet | BanDelete | LimitSet):
        return write.room
    return ""


@dataclass(frozen=True, slots=True)
class _Stall:
    """A marker the faulty ``apply`` adds to an outcome's writes: the faulty committer waits
    on ``rule.release`` there and never passes the marker on to the store."""

    rule: _Rule


@dataclass
class Faults:
    """A plan of faults to inject. ``seed`` drives every random choice (see the module doc)."""

    seed: int = 0
    fired: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rules: list[_Rule] = []
        self._applied: dict[trio.lowlevel.Task, list[tuple[str, str]]] = {}
        self._fired_event = trio.Event()

    def __repr__(self) -> str:
        return f"Faults(seed={self.seed}, fired={len(self.fired)})"

    @classmethod
    def random(cls) -> Faults:
        """A plan with a fresh random seed, or the seed in ``$IMC_FAULT_SEED`` when set (to
        replay the run a failing assertion message named)."""
        text = os.environ.get(SEED_ENV)
        seed = int(text) if text else random.SystemRandom().randrange(2**32)
        return cls(seed=seed)

    # ------------------------------------------------------------------ plans
    def _add(self, rule: _Rule) -> _Rule:
        if rule.rate is not None and not 0.0 <= rule.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        rule.index = len(self._rules)
        self._rules.append(rule)
        return rule

    def fail_apply(
        self, room: str | None = None, command: str | None = None, *,
        times: int | None = 1, rate: float | None = None,
    ) -> None:
        """Make ``apply`` raise :class:`InjectedFault` for ``room`` (URI) and ``command``
        (canonical name such as ``join`` or ``leave``, ``chat``, or ``invite_failed``); None
        matches any. The room's actor crashes: the command gets 500 and the actor restarts from
        the room's last committed state (see the supervision policy in the README)."""
        self._add(_Rule("apply", {"room": room, "command": command}, times, rate))

    def fail_delivery(
        self, to: str | None = None, *, room: str | None = None, code: int = 503,
        times: int | None = None, rate: float | None = None,
    ) -> None:
        """Make delivery to ``to`` (recipient URI) of notices from ``room`` (None: any) end
        with ``code`` instead of being sent."""
        self._add(_Rule("deliver", {"to": to, "room": room}, times, rate, code=code))

    def stall_delivery(
        self, to: str | None = None, *, room: str | None = None, times: int | None = None,
        rate: float | None = None,
    ) -> trio.Event:
        """Make deliveries to ``to`` (from ``room``; None: any) wait until the returned event is
        set (then they go out)."""
        release = trio.Event()
        self._add(_Rule("stall", {"to": to, "room": room}, times, rate, release=release))
        return release

    def fail_commit(
        self, *, room: str | None = None, command: str | None = None,
        times: int | None = 1, rate: float | None = None,
    ) -> None:
        """Make commits fail as a database error would.

        Unscoped (no ``room``/``command``): the next database transaction fails. With
        ``times=1`` (the default) that is all: the rule is used up, the database still answers
        its health check, and the command gets 500. With ``times=None`` (or a larger count) the
        database also fails its health check while the rule has failures left, so the store is
        *down*: commands that write get 503 with Retry-After until :meth:`clear` (a store that
        is down sends the database no transactions, so a count does not run out meanwhile).
        Scoped: the commit of the room's change fails with :class:`StoreError` (the command
        gets 500, its change is not made, other rooms are not affected).
        """
        scoped = room is not None or command is not None
        self._add(_Rule("commit", {"room": room, "command": command}, times, rate, scoped=scoped))

    def hang_commit(
        self, *, room: str | None = None, command: str | None = None,
        times: int | None = 1, rate: float | None = None,
    ) -> trio.Event:
        """Make commits wait until the returned event is set.

        Unscoped: the database hangs (in the store's writer thread), so every room's writes
        wait behind it; after ``db_timeout`` (wall-clock time, on a MockClock too: the store
        waits in a thread) they get 503 with Retry-After until the event is set. Scoped to a
        room/command: only that room's commit waits (the room stops; others go on; no
        ``db_timeout``: the wait is in the room's task, before the store).
        """
        release = trio.Event()
        scoped = room is not None or command is not None
        self._add(_Rule("hang", {"room": room, "command": command}, times, rate,
                        scoped=scoped, release=release))
        return release

    def stall_room(
        self, room: str | None = None, command: str | None = None, *,
        times: int | None = 1, rate: float | None = None,
    ) -> trio.Event:
        """Make the room's actor stop at ``command`` (any command, chat too) until the returned
        event is set: its change is neither committed nor answered meanwhile, and commands that
        arrive queue in its mailbox (503 once it is full). Needs the store boundary
        (:meth:`hooks` and :meth:`open_conference` include it)."""
        release = trio.Event()
        self._add(_Rule("stall_room", {"room": room, "command": command}, times, rate,
                        release=release))
        return release

    async def fill_mailbox(
        self,
        conference: Conference,
        room: str,
        *,
        nursery: trio.Nursery,
        sender: str | None = None,
        body: bytes = b"#members",
    ) -> FilledMailbox:
        """Fill ``room``'s mailbox now, for real: stall its actor (:meth:`stall_room`) at one
        command, then queue commands (``body`` from ``sender``, default its owner) until the
        mailbox holds ``mailbox_size``. The tasks waiting for their answers run in ``nursery``.
        Returns once the mailbox is full: the room's next command gets 503 + Retry-After;
        other rooms are not affected. :meth:`FilledMailbox.release` lets the room go on.
        """
        status = conference.room_status(room)
        if status is None:
            raise ValueError(f"no room {room}")
        size = conference.config.mailbox_size
        release = self.stall_room(room, times=1)
        rule = self._rules[-1]
        if sender is None:
            owner = status.state.owner
            sender = owner.uri if owner is not None else f"sip:mailbox-filler@{status.state.domain}"
        filled = FilledMailbox(room, release)

        async def send(index: int) -> None:
            msg = IncomingMessage(room, sender, body, "text/plain", f"fill-mailbox-{index}-{room}")
            filled.answers.append(await conference.handle(msg))
            if len(filled.answers) == filled.sent:
                filled._done.set()

        filled.sent = 1
        nursery.start_soon(send, 0)
        await rule.entered.wait()  # the actor is stopped
        queued = conference.room_status(room)
        free = size - (queued.mailbox_depth if queued is not None else 0)
        filled.sent += free
        for index in range(1, free + 1):
            nursery.start_soon(send, index)
        await trio.testing.wait_all_tasks_blocked()
        queued = conference.room_status(room)
        if queued is None or queued.mailbox_depth < size:
            depth = queued.mailbox_depth if queued is not None else 0
            raise RuntimeError(f"{self!r}: the mailbox of {room} holds {depth} of {size}")
        return filled

    async def wait_fired(self, count: int = 1) -> None:
        """Wait until faults have fired ``count`` times in all (``len(self.fired) >= count``).

        A stalling or hanging fault counts as fired when it starts to wait, so this is how a
        test knows that a room (or the database) is now stopped. Checkpoints.
        """
        while len(self.fired) < count:
            await self._fired_event.wait()

    def _notify(self) -> None:
        self._fired_event.set()
        self._fired_event = trio.Event()

    def clear(self) -> None:
        """Drop every rule (faults that are stalling or hanging are released)."""
        for rule in self._rules:
            if rule.release is not None:
                rule.release.set()
        self._rules.clear()

    def _take(self, kind: str, *, scoped: bool | None = None, **facts: str | None) -> _Rule | None:
        return self._take_any(kind, [facts], scoped=scoped)

    def _take_any(
        self, kind: str, candidates: Sequence[dict[str, str | None]], *, scoped: bool | None = None
    ) -> _Rule | None:
        """The first rule of ``kind`` that matches one of ``candidates`` and fires."""
        for rule in self._rules:
            if rule.kind != kind or (scoped is not None and rule.scoped != scoped):
                continue
            for facts in candidates:
                if rule.matches(facts):
                    if rule.draw(self.seed, facts):
                        self.fired.append((kind, _describe(facts)))
                        try:
                            trio.lowlevel.current_task()
                        except RuntimeError:  # the store's writer thread
                            trio.from_thread.run_sync(self._notify)
                        else:
                            self._notify()
                        return rule
                    break
        return None

    # ------------------------------------------------------------------ wrappers
    def wrap_apply(self, inner: ApplyFn = apply) -> ApplyFn:
        """``inner`` (default: the real ``apply``) with the ``fail_apply`` and ``stall_room``
        faults."""

        def faulty(state: RoomState, op: RoomRequest | InviteFailed, policy: Policy) -> tuple[RoomState, Outcome]:
            command = "invite_failed" if isinstance(op, InviteFailed) else (op.command.name if op.command else "chat")
            if self._take("apply", room=state.uri, command=command):
                raise InjectedFault(f"injected apply fault in {state.uri} at {command} ({self!r})")
            new_state, outcome = inner(state, op, policy)
            stall = self._take("stall_room", room=state.uri, command=command)
            if stall is not None:
                outcome = dataclasses.replace(outcome, writes=(*outcome.writes, _Stall(stall)))  # type: ignore[arg-type]
            if outcome.writes:
                task = trio.lowlevel.current_task()
                self._applied.setdefault(task, []).append((state.uri, command))
            return new_state, outcome

        return faulty

    def wrap_sender(self, inner: Sender) -> Sender:
        """``inner`` with the ``fail_delivery`` and ``stall_delivery`` faults."""

        async def faulty(notice: Notice, in_reply_to: str) -> DeliveryResult:
            stall = self._take("stall", to=notice.to, room=notice.sender)
            if stall is not None and stall.release is not None:
                await stall.release.wait()
            rule = self._take("deliver", to=notice.to, room=notice.sender)
            if rule is not None:
                return DeliveryResult(rule.code, "Injected Fault")
            return await inner(notice, in_reply_to)

        return faulty

    def wrap_repository(self, inner: Backend) -> Backend:
        """``inner`` with the unscoped (whole database) ``fail_commit`` and ``hang_commit``."""
        return _FaultyRepository(inner, self)

    def wrap_store(self, inner: Committer) -> Committer:
        """``inner`` (the store) with the room-scoped commit faults and ``stall_room``."""
        return _FaultyCommitter(inner, self)

    def hooks(self, config: Config, *, sender: Sender | None = None, repository: Backend | None = None) -> dict[str, Any]:
        """Keyword arguments for :func:`imc_actors.open_conference` with every boundary wrapped.

        ``sender`` is the real sender (default: discard) and ``repository`` the real
        repository (default: the one ``config.db_url`` names, opened here, blocking: prefer
        :meth:`open_conference` in async code).
        """
        return {
            "apply": self.wrap_apply(),
            "sender": sender,
            "wrap_sender": self.wrap_sender,
            "repository": self.wrap_repository(repository or open_repository(config)),
            "wrap_store": self.wrap_store,
        }

    @asynccontextmanager
    async def open_conference(
        self, config: Config, *, sender: Sender | None = None, repository: Backend | None = None
    ) -> AsyncIterator[Conference]:
        """:func:`imc_actors.open_conference` with this plan's faults at every boundary."""
        if repository is None:
            repository = await trio.to_thread.run_sync(open_repository, config)
        async with open_conference(config, **self.hooks(config, sender=sender, repository=repository)) as conference:
            yield conference


class _FaultyRepository:
    """A repository that fails or hangs on demand (runs in the store's writer thread)."""

    def __init__(self, inner: Backend, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def apply_batch(self, writes: Sequence[Write]) -> None:
        hang = self._faults._take("hang", scoped=False)
        if hang is not None and hang.release is not None:
            trio.from_thread.run_sync(hang.entered.set)
            trio.from_thread.run(hang.release.wait)  # we are in the store's worker thread
        if self._faults._take("commit", scoped=False):
            raise StoreError(f"injected commit fault ({self._faults!r})")
        self._inner.apply_batch(writes)

    def ping(self) -> None:
        if any(rule.kind == "commit" and not rule.scoped and (rule.times is None or rule.fired < rule.times)
               for rule in self._faults._rules):
            raise StoreError("injected: database down")
        self._inner.ping()

    def load_rooms(self) -> list[RoomState]:
        return self._inner.load_rooms()

    def load_history(self, room: str, limit: int, before: int | None = None) -> list[Any]:
        """The archive, read as the room actors read it (fails like ``ping`` while the
        database is down)."""
        self.ping()
        return self._inner.load_history(room, limit, before)  # type: ignore[attr-defined]

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class _FaultyCommitter:
    """What room actors commit through: room-scoped commit faults and ``stall_room``.

    Runs in the actor's task, so holding a commit here stops that room only.
    """

    def __init__(self, inner: Committer, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:  # statistics() and the like, for metrics
        return getattr(self._inner, name)

    async def commit(self, writes: Sequence[Write]) -> None:
        faults = self._faults
        items: Sequence[object] = writes  # may hold _Stall markers besides real writes
        stalls = [w.rule for w in items if isinstance(w, _Stall)]
        real = [w for w in writes if not isinstance(w, _Stall)]
        applied = faults._applied.pop(trio.lowlevel.current_task(), [])
        if not applied and real:  # a room's creation: no apply ran
            applied = [(_room_of(real[0]), "create")]
        candidates: list[dict[str, str | None]] = [
            {"room": room, "command": command} for room, command in applied
        ]
        for rule in stalls:
            rule.entered.set()
            if rule.release is not None:
                await rule.release.wait()
        if real:
            hang = faults._take_any("hang", candidates, scoped=True)
            if hang is not None and hang.release is not None:
                hang.entered.set()
                await hang.release.wait()
            fail = faults._take_any("commit", candidates, scoped=True)
            if fail is not None:
                where = ", ".join(f"{c['room']} at {c['command']}" for c in candidates)
                raise StoreError(f"injected commit fault in {where} ({faults!r})")
            await self._inner.commit(real)


@dataclass
class FilledMailbox:
    """A room whose mailbox :meth:`Faults.fill_mailbox` filled. ``answers`` collects the
    answers of the commands it queued, as they come."""

    room: str
    release_event: trio.Event
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0
    _done: trio.Event = field(default_factory=trio.Event)

    def release(self) -> None:
        """Let the room's actor go on (it works through its mailbox)."""
        self.release_event.set()

    async def drain(self) -> list[Answer]:
        """Release the room and wait until every queued command is answered; their answers."""
        self.release()
        await self._done.wait()
        return list(self.answers)


# ---------------------------------------------------------------------- observations
def members_of(state: RoomState | None) -> dict[str, int]:
    """``{member key: flags}`` of a room (None: no room) — handy for before/after comparisons."""
    if state is None:
        return {}
    return {member_key(m.uri): m.flags for m in state.members}


def rooms_of(conference: Conference) -> dict[str, dict[str, int]]:
    """``{room URI: members_of(room)}`` for every committed room of ``conference``."""
    return {room.uri: members_of(room) for room in conference.rooms()}


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


@dataclass(frozen=True)
class Snapshot:
    """What :func:`snapshot` saw: ``rooms`` maps each room URI to ``members_of`` it, and
    ``restarts`` to its actor's restart count."""

    rooms: dict[str, dict[str, int]]
    restarts: dict[str, int]


def snapshot(conference: Conference) -> Snapshot:
    """Record every room's members and restart count (take it before injecting a fault)."""
    rooms: dict[str, dict[str, int]] = {}
    restarts: dict[str, int] = {}
    for room in conference.rooms():
        status = conference.room_status(room.uri)
        rooms[room.uri] = members_of(room)
        restarts[room.uri] = status.restarts if status is not None else 0
    return Snapshot(rooms, restarts)


def _prefix(faults: Faults | None) -> str:
    return f"{faults!r}: " if faults is not None else ""


def assert_contained(
    conference: Conference,
    room: str,
    *,
    since: Snapshot,
    restarted: bool | int = True,
    changed: Iterable[str] = (),
    faults: Faults | None = None,
) -> None:
    """Assert that a failure in ``room`` stayed there.

    ``room``'s actor was restarted since ``since`` (``restarted=True``: at least once; an int:
    exactly that many times; False: not at all), and every *other* room: was not restarted,
    is not quarantined, and has the members it had in ``since`` (rooms listed in ``changed``
    excepted: the test changed them on purpose). The assertion message starts with ``faults``
    (its seed) when given.
    """
    prefix = _prefix(faults)
    assert not conference.closed, f"{prefix}the conference has ended"
    key = member_key(room)
    status = conference.room_status(room)
    before = since.restarts.get(room, 0)
    for uri, count in since.restarts.items():
        if member_key(uri) == key:
            before = count
    now = status.restarts if status is not None else 0
    if restarted is True:
        assert now > before, f"{prefix}{room} was not restarted (restarts: {before} -> {now})"
    elif restarted is False:
        assert now == before, f"{prefix}{room} was restarted (restarts: {before} -> {now})"
    else:
        assert now - before == restarted, (
            f"{prefix}{room} restarted {now - before} times, expected {restarted}"
        )
    skip = {key, *(member_key(uri) for uri in changed)}
    for other in conference.rooms():
        if member_key(other.uri) in skip:
            continue
        other_status = conference.room_status(other.uri)
        assert other_status is not None
        had = since.restarts.get(other.uri, 0)
        assert other_status.restarts == had, (
            f"{prefix}{other.uri} was restarted too (restarts: {had} -> {other_status.restarts})"
        )
        assert not other_status.quarantined, f"{prefix}{other.uri} is quarantined too"
    for uri, members in since.rooms.items():
        if member_key(uri) in skip:
            continue
        now_members = members_of(conference.room(uri))
        assert now_members == members, (
            f"{prefix}{uri} changed: members {members} -> {now_members}"
        )


async def assert_durable(
    conference: Conference, *, repository: Backend | None = None, faults: Faults | None = None
) -> None:
    """Assert that the database holds exactly the rooms the conference has acknowledged.

    Reads the database afresh (``repository``, default: a new connection to
    ``config.db_url``) in a thread and compares every room's flags and members with the
    conference's committed state: a difference means an acknowledged change was lost or a
    refused one half-written. Call it when no commit is in flight (release hung commits
    first); raises AssertionError otherwise.
    """
    prefix = _prefix(faults)
    stats = conference.supervisor.store.statistics() if hasattr(conference.supervisor.store, "statistics") else None
    if stats is not None:
        assert stats.pending == 0, f"{prefix}{stats.pending} commits in flight: not quiescent"
    owned = repository is None
    if repository is None:
        repository = await trio.to_thread.run_sync(open_repository, conference.config)
    try:
        stored_rooms = await trio.to_thread.run_sync(repository.load_rooms)
    finally:
        close = getattr(repository, "close", None)
        if owned and close is not None:
            await trio.to_thread.run_sync(close)
    stored = {room.uri.lower(): (room.flags, members_of(room)) for room in stored_rooms}
    committed = {room.uri.lower(): (room.flags, members_of(room)) for room in conference.rooms()}
    assert stored == committed, (
        f"{prefix}database and acknowledged state differ:\n  stored:    {stored}\n  committed: {committed}"
    )


@contextmanager
def assert_no_leaked_tasks(faults: Faults | None = None) -> Iterator[None]:
    """Assert that every task started inside the ``with`` block has finished at its end.

    Use it around the ``async with open_conference(...)`` block (and whatever else the test
    starts there). When the block raises, its exception goes through unchanged.
    """
    before = set(live_tasks())
    yield
    leaked = [task.name for task in live_tasks() if task not in before]
    assert not leaked, f"{_prefix(faults)}tasks still running: {leaked}"
