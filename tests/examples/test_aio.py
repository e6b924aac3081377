"""imc_actors.aio: asyncio code driving a conference through trio-asyncio."""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio.testing
import trio_asyncio

import imc_actors.aio as aio
from imc_actors import Config, IncomingMessage
from imc_actors.testing import Faults, members_of

DOMAIN = "example.com"
MANAGER = f"sip:imc-manager@{DOMAIN}"
ROOM = f"sip:chat@{DOMAIN}"


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(db_url=f"sqlite:///{tmp_path}/rooms.db", domains=[DOMAIN])


async def test_asyncio_code_handles_and_subscribes(config):
    async with aio.open_asyncio_conference(config) as conference:

        async def asyncio_side() -> tuple[list[int], list[bytes]]:
            assert asyncio.get_running_loop() is conference.loop  # really asyncio code
            notices = conference.subscribe(f"sip:alice@{DOMAIN}")
            codes = [
                (await conference.message(MANAGER, f"sip:alice@{DOMAIN}", "#create chat")).code,
                (await conference.handle(IncomingMessage(ROOM, f"sip:bob@{DOMAIN}", b"#join"))).code,
                (await conference.message(ROOM, f"sip:bob@{DOMAIN}", b"hi alice")).code,
            ]
            bodies = [(await notices.receive()).notice.body for _ in range(3)]
            notices.close()
            return codes, bodies

        codes, bodies = await trio_asyncio.aio_as_trio(asyncio_side)()
        assert codes == [200, 200, 202]
        assert bodies == [b"*** Room was created", b"*** [bob] has joined the room", b"[bob]: hi alice"]
        assert [r.uri for r in conference.rooms()] == [ROOM]
        assert members_of(conference.room(ROOM)) == {f"alice@{DOMAIN}": 1, f"bob@{DOMAIN}": 0}
        assert conference.room_status(ROOM).restarts == 0


async def test_async_for_ends_with_the_conference_and_handle_refuses_after(config):
    async with trio_asyncio.open_loop() as loop:
        async with aio.open_asyncio_conference(config) as conference:
            everything = conference.subscribe()

            async def consume() -> list[bytes]:
                return [delivered.notice.body async for delivered in everything]

            future = asyncio.ensure_future(consume(), loop=loop)
            await trio_asyncio.aio_as_trio(conference.message)(MANAGER, f"sip:alice@{DOMAIN}", "#create chat")
            await conference.conference.flush_notices()
        assert await trio_asyncio.aio_as_trio(future) == [b"*** Room was created"]
        assert conference.closed
        with pytest.raises(aio.ConferenceClosed):
            await trio_asyncio.aio_as_trio(conference.message)(ROOM, f"sip:alice@{DOMAIN}", "hello?")


async def test_cancelling_the_asyncio_caller_does_not_cancel_the_command(config):
    faults = Faults(seed=5)
    async with trio_asyncio.open_loop() as loop, faults.open_conference(config) as conference:
        adapter = aio.AsyncioConference(conference, loop)
        await trio_asyncio.aio_as_trio(adapter.message)(MANAGER, f"sip:alice@{DOMAIN}", "#create chat")
        release = faults.hang_commit(room=ROOM, command="join")
        task = asyncio.ensure_future(adapter.message(ROOM, f"sip:bob@{DOMAIN}", "#join"), loop=loop)
        await trio.testing.wait_all_tasks_blocked()
        assert faults.fired == [("hang", f"room={ROOM},command=join")], faults
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trio_asyncio.aio_as_trio(task)
        release.set()
        # the room still carries the accepted command out
        with conference.subscribe(f"sip:bob@{DOMAIN}") as bob:
            assert (await bob.receive()).notice.body == b"*** [bob] has joined the room"
        assert f"bob@{DOMAIN}" in members_of(conference.room(ROOM)), faults


async def test_the_adapter_needs_a_trio_asyncio_loop(config):
    async with aio.open_asyncio_conference(config) as conference:
        pass
    with pytest.raises(RuntimeError, match="trio-asyncio"):
        aio.AsyncioConference(conference.conference)


def test_run_is_asyncio_run_for_a_conference(config):
    async def main(conference: aio.AsyncioConference) -> tuple[int, str]:
        await asyncio.sleep(0)
        answer = await conference.message(MANAGER, f"sip:alice@{DOMAIN}", "#create chat")
        return answer.code, type(asyncio.get_running_loop()).__name__

    assert aio.run(main, config) == (200, "TrioEventLoop")

    async def check(conference: aio.AsyncioConference) -> list[str]:
        return [room.uri for room in conference.rooms()]

    assert aio.run(check, config) == [ROOM]  # durable across runs
