"""Limits of the whole server that no sender may grow (``max_rooms``)."""

from __future__ import annotations

from imc_actors import open_conference
from imc_actors.imc import texts
from tests.faults.common import DOMAIN, MANAGER, Inbox, make_config, say


async def test_max_rooms_refuses_one_more_room_with_a_notice(tmp_path) -> None:
    # Per-user limits do not bound the server: without authentication every From is a new
    # user, so 5,000 #create from 5,000 made-up users made 5,000 rooms (seen on a tour).
    inbox = Inbox()
    async with open_conference(make_config(tmp_path, max_rooms=2), sender=inbox) as conf:
        assert (await conf.handle(say(MANAGER, "u1", "#create one"))).code == 200
        assert (await conf.handle(say(f"sip:two@{DOMAIN}", "u2", "#join"))).code == 200  # creates
        refused = await conf.handle(say(MANAGER, "u3", "#create three"))
        assert refused.code == 403
        created_on_join = await conf.handle(say(f"sip:four@{DOMAIN}", "u4", "#join"))
        assert created_on_join.code == 403
        await conf.flush_notices()
        assert inbox.bodies_to("u3") == [texts.server_full(2).encode()]
        assert inbox.bodies_to("u4") == [texts.server_full(2).encode()]
        # rooms that exist are served as before; a destroyed one makes room for a new one
        assert (await conf.handle(say(f"sip:one@{DOMAIN}", "u3", "#join"))).code == 200
        assert (await conf.handle(say(f"sip:two@{DOMAIN}", "u2", "#destroy"))).code == 200
        assert (await conf.handle(say(MANAGER, "u3", "#create three"))).code == 200
        assert sorted(state.name for state in conf.rooms()) == ["one", "three"]
