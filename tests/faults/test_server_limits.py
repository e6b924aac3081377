"""Limits of the whole server that no sender may grow (``max_rooms``, ``max_members_total``)."""

from __future__ import annotations

from imc_actors import open_conference
from imc_actors.imc import texts
from imc_actors.imc.history import PAGE_BYTES
from tests.faults.common import DOMAIN, MANAGER, Inbox, make_config, say


def paged_lines(inbox: Inbox, user: str, title: str) -> tuple[list[str], list[str]]:
    """The pages ``user`` got (more than one, each headed ``title (i/n):`` and within a
    datagram's page size) and their lines in order."""
    pages = [body.decode() for body in inbox.bodies_to(user)]
    assert len(pages) > 1
    assert all(page.startswith(f"{title} ({i}/{len(pages)}):\n") for i, page in enumerate(pages, 1))
    assert all(len(page.encode()) <= PAGE_BYTES + len(f"{title} (10/10):") for page in pages)
    return pages, [line for page in pages for line in page.split("\n")[1:]]


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


async def test_max_members_total_bounds_members_and_invitations_of_all_rooms(tmp_path) -> None:
    # max_rooms x max_members let 50 million members and invitations (about 2.8 KB each for an
    # invitation): made-up Froms could create rooms and invite without end (memory tour)
    inbox = Inbox()
    async with open_conference(make_config(tmp_path, max_members_total=4), sender=inbox) as conf:
        one, two = f"sip:one@{DOMAIN}", f"sip:two@{DOMAIN}"
        assert (await conf.handle(say(MANAGER, "u1", "#create one"))).code == 200  # 1
        assert (await conf.handle(say(one, "u2", "#join"))).code == 200  # 2
        assert (await conf.handle(say(MANAGER, "u3", "#create two"))).code == 200  # 3
        assert (await conf.handle(say(two, "u3", "#invite u9"))).code == 200  # 4: an invitation
        full = texts.server_members_full(4).encode()
        for room, user, body in ((one, "u4", "#join"), (one, "u1", "#add u5"),
                                 (two, "u3", "#invite u6"), (MANAGER, "u7", "#create three"),
                                 (f"sip:four@{DOMAIN}", "u8", "#join")):  # fmt: skip
            answer = await conf.handle(say(room, user, body))
            assert answer.code == 403, (room, body)
        await conf.flush_notices()
        for user in ("u4", "u7", "u8"):
            assert inbox.bodies_to(user) == [full]
        # what lists nobody new goes on; a member who leaves makes room for another
        assert (await conf.handle(say(one, "u2", "hello"))).code == 202
        assert (await conf.handle(say(one, "u2", "#members"))).code == 200
        assert (await conf.handle(say(one, "u2", "#leave"))).code == 200
        assert (await conf.handle(say(one, "u4", "#join"))).code == 200
        assert conf.supervisor.members_total() == 4
    async with open_conference(make_config(tmp_path, max_members_total=4), sender=inbox) as conf:
        assert conf.supervisor.members_total() == 4  # counted from the restored rooms too
        assert (await conf.handle(say(f"sip:one@{DOMAIN}", "u5", "#join"))).code == 403


async def test_rooms_comes_in_pages_that_fit_a_datagram_and_says_what_it_left_out(tmp_path) -> None:
    # One notice of 5,000 rooms did not fit a UDP datagram: "Message too long", and the
    # user got neither the list nor a notice (seen on a tour).
    inbox = Inbox()
    config = make_config(tmp_path, max_rooms_per_user=1000, rooms_list_max=250)
    async with open_conference(config, sender=inbox) as conf:
        for index in range(300):
            assert (await conf.handle(say(MANAGER, "owner", f"#create room{index:03}"))).code == 200
        await conf.flush_notices()
        inbox.sent.clear()
        assert (await conf.handle(say(MANAGER, "u1", "#rooms"))).code == 200
        await conf.flush_notices()
        _, lines = paged_lines(inbox, "u1", "Rooms")
        assert lines == [f"[room{i:03}]" for i in range(250)] + [texts.rooms_not_listed(50)]


async def test_members_of_a_big_room_come_in_pages_that_fit_a_datagram(tmp_path) -> None:
    # One notice for 1,000 members was about 40 KB: past a datagram on a real network
    inbox = Inbox()
    async with open_conference(make_config(tmp_path), sender=inbox) as conf:
        room = f"sip:big@{DOMAIN}"
        assert (await conf.handle(say(MANAGER, "owner", "#create big"))).code == 200
        for index in range(300):
            assert (await conf.handle(say(room, f"member{index:03}", "#join"))).code == 200
        await conf.flush_notices()
        inbox.sent.clear()
        answer = await conf.handle(say(room, "member007", "#members"))
        assert answer.code == 200
        await conf.flush_notices()
        pages, lines = paged_lines(inbox, "member007", "Members")
        assert lines == ["*[owner]"] + [f"[member{i:03}]" for i in range(300)]
        assert answer.body == "\n".join(pages).encode()
        # a small room keeps the one body of spec §4
        assert (await conf.handle(say(MANAGER, "owner", "#create small"))).code == 200
        small = await conf.handle(say(f"sip:small@{DOMAIN}", "owner", "#members"))
        assert small.body == b"Members:\n*[owner]"
