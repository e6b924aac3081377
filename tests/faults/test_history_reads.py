"""The room actor reads the archive for a joiner and for #history (issue 16).

A command that reads the archive ends the batch it is in, so the lines read are exactly those
before it: a line queued behind a #join reaches the joiner as a relay, never also as a replay.
"""

from __future__ import annotations

import trio
import trio.testing

from imc_actors.conference import open_conference
from imc_actors.imc import texts
from imc_actors.testing import Faults
from tests.faults.common import DOMAIN, ROOM_A, Inbox, make_config, say, two_rooms

SEED = 20261202


async def test_a_line_queued_behind_a_join_is_relayed_not_replayed(tmp_path):
    config = make_config(tmp_path)
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        assert (await conf.handle(say(ROOM_A, "carol", "earlier"))).code == 202
        async with trio.open_nursery() as nursery:
            release = faults.hang_commit(room=ROOM_A)  # the next commit of room a waits
            nursery.start_soon(conf.handle, say(ROOM_A, "carol", "held"))
            await trio.testing.wait_all_tasks_blocked()
            for user, body in (("dave", "#join"), ("carol", "after the join")):
                nursery.start_soon(conf.handle, say(ROOM_A, user, body))
                await trio.testing.wait_all_tasks_blocked()
            release.set()  # one mailbox: held, #join, after the join
        await conf.flush_notices()
    to_dave = [(n.body, n.date is not None) for n in inbox.sent if n.to == f"sip:dave@{DOMAIN}"]
    assert to_dave == [
        (b"*** [dave] has joined the room", False),
        (b"[carol]: earlier", True),
        (b"[carol]: held", True),
        (b"[carol]: after the join", False),
    ], faults


async def test_history_that_cannot_be_read_gets_503_and_a_notice(tmp_path, autojump_clock):
    config = make_config(tmp_path)
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)
        assert (await conf.handle(say(ROOM_A, "carol", "kept"))).code == 202
        faults.fail_commit(times=None)  # the database is down: reads fail too
        answer = await conf.handle(say(ROOM_A, "carol", "#history"))
        assert answer.code == 503 and answer.retry_after, faults
        await conf.flush_notices()
        assert inbox.bodies_to("carol")[-1] == texts.HISTORY_UNAVAILABLE.encode()
        faults.clear()
        await conf.supervisor.store.wait_available()
        assert (await conf.handle(say(ROOM_A, "carol", "#history"))).code == 200
        await conf.flush_notices()
        assert inbox.bodies_to("carol")[-1].endswith(b" UTC [carol]: kept")


async def test_an_archive_found_empty_is_not_read_again_until_a_line_is_kept(tmp_path, autojump_clock):
    """Room a was created here, so its archive is known empty: reads need no database (with the
    database down, ``#history`` still answers that it is empty) until a line is archived,
    after which the archive is read again (and, the database being down, cannot be)."""
    config = make_config(tmp_path)
    faults = Faults(seed=SEED)
    inbox = Inbox()
    async with open_conference(config, **faults.hooks(config, sender=inbox)) as conf:
        await two_rooms(conf)  # carol's #join read the empty archive
        faults.fail_commit(times=None)  # the database is down: reads fail too
        assert (await conf.handle(say(ROOM_A, "carol", "#history"))).code == 200, faults
        await conf.flush_notices()
        assert inbox.bodies_to("carol")[-1] == texts.HISTORY_EMPTY.encode()
        faults.clear()
        await conf.supervisor.store.wait_available()
        assert (await conf.handle(say(ROOM_A, "carol", "kept"))).code == 202
        assert (await conf.handle(say(ROOM_A, "dave", "#join"))).code == 200
        await conf.flush_notices()
        assert inbox.bodies_to("dave")[-1] == b"[carol]: kept"  # replayed: it was read
        faults.fail_commit(times=None)
        assert (await conf.handle(say(ROOM_A, "carol", "#history"))).code == 503, faults


async def test_old_lines_are_swept_hourly(autojump_clock):
    """``history_days``: an hour after start, and every hour, lines older than the limit go."""
    from imc_actors.actors.archive import SWEEP_INTERVAL, expire_history
    from imc_actors.store.records import HistoryExpire
    from imc_actors.store.repository import StoreError

    class Store:
        def __init__(self) -> None:
            self.commits: list[list[object]] = []
            self.fail = False

        async def commit(self, writes) -> None:
            self.commits.append(list(writes))
            if self.fail:
                raise StoreError("down")

    store = Store()
    now = [1_000_000.0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(expire_history, store, 2, lambda: now[0])
        await trio.testing.wait_all_tasks_blocked()
        assert store.commits == []  # not at once: a restart is no reason to sweep
        await trio.sleep(SWEEP_INTERVAL + 1)
        await trio.testing.wait_all_tasks_blocked()
        assert store.commits == [[HistoryExpire(1_000_000.0 - 2 * 86400)]]
        store.fail, now[0] = True, 2_000_000.0  # a failed sweep is logged, the next one runs
        await trio.sleep(2 * SWEEP_INTERVAL)  # the sweeps at 2 h and 3 h (we are at 1 h + 1 s)
        await trio.testing.wait_all_tasks_blocked()
        assert store.commits[1:] == [[HistoryExpire(2_000_000.0 - 2 * 86400)]] * 2
        nursery.cancel_scope.cancel()
