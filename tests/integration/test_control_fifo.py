"""MI FIFO end to end (spec §10): rooms made over SIP, requests written into the server's FIFO,
replies read from reply FIFOs, exactly as OpenSER's mi_fifo clients do."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import trio

from tests.support.control import CHAT, MiClient, populate

ROOMS_REPLY = (
    "200 OK\n"
    "ROOM::  URI=sip:chat@127.0.0.1 MEMBERS=3 OWNER=sip:alice@127.0.0.1\n"
    "ROOM::  URI=sip:secret@127.0.0.1 MEMBERS=1 OWNER=sip:bob@127.0.0.1\n"
    "\n"
)
MEMBERS_REPLY = (
    "200 OK\n"
    "ROOM:: sip:chat@127.0.0.1 NR_OF_MEMBERS=3\n"
    "\tMEMBER:: sip:alice@127.0.0.1\n"
    "\tMEMBER:: sip:bob@127.0.0.1\n"
    "\tMEMBER:: sip:carol@127.0.0.1\n"
    "\n"
)


@pytest.fixture
def config_overrides(tmp_path) -> dict:
    return {"mi_fifo": str(tmp_path / "imc.fifo"), "reply_dir": str(tmp_path)}


@pytest.fixture
def mi(server, tmp_path) -> MiClient:
    assert server.mi_fifo == str(tmp_path / "imc.fifo")
    assert stat.S_ISFIFO(os.stat(server.mi_fifo).st_mode)
    return MiClient(server.mi_fifo, str(tmp_path))


async def test_list_rooms_and_members(ua, mi):
    await populate(ua)
    assert await mi.request(b":imc_list_rooms:reply\n\n") == ROOMS_REPLY
    assert await mi.request(f":imc_list_members:reply\n{CHAT}\n\n".encode()) == MEMBERS_REPLY
    # names compare case-insensitively; port and parameters are ignored; the reply keeps the
    # room's own spelling
    request = b":imc_list_members:reply\nSIP:CHAT@127.0.0.1:5060;transport=udp\n\n"
    assert await mi.request(request) == MEMBERS_REPLY
    # a name::value parameter node, a quoted value, CRLF line ends
    assert await mi.request(f':imc_list_members:reply\r\nroom:: "{CHAT}"\r\n\r\n'.encode()) == MEMBERS_REPLY


async def test_no_rooms(server, mi):
    assert await mi.request(b":imc_list_rooms:reply\n\n") == "200 OK\n\n"


async def test_errors_are_answered(ua, mi):
    await populate(ua)
    cases = {
        b":imc_list_members:reply\n\n": "400 room name not found\n\n",
        b":imc_list_members:reply\n.\n\n": "400 empty param\n\n",
        b":imc_list_members:reply\nsip:nope@127.0.0.1\n\n": "404 no such room\n\n",
        b":imc_list_members:reply\nnot a uri\n\n": "404 no such room\n\n",
        b":imc_destroy_everything:reply\n\n": "500 command 'imc_destroy_everything' not available\n\n",
        b':imc_list_members:reply\n"unterminated\n\n': "400 parse error in command 'imc_list_members'\n\n",
        b":imc_list_members:reply\n\tchild:: node\n\n": "400 parse error in command 'imc_list_members'\n\n",
    }
    for request, expected in cases.items():
        assert await mi.request(request) == expected, request


async def test_malformed_input_never_stops_the_reader(ua, server, mi, tmp_path, caplog):
    await populate(ua)
    caplog.set_level(logging.INFO, "imc_actors.control.fifo")
    server.metrics.fifo.reply_wait = 0.0  # retry a reply fifo without reader at once
    no_reader = mi.reply_fifo("nobody-reads")  # exists, but nobody opens it for reading
    await mi.write(
        b"this is not a request\nnor is this\n\n"  # garbage, ended by an empty line
        b":imc_list_rooms:\n\n"  # names no reply fifo
        b"\xff\xfe binary junk\n\n"
        + b"x" * 20000 + b"\n\n"  # an over-long line
        + b":imc_list_rooms:missing-reply-fifo\n\n"  # the reply fifo does not exist
        + b":imc_list_rooms:nobody-reads\n\n"  # the reply fifo has no reader
        + b"garbage without the empty line\n"  # the next request must still be served
    )
    # a good request, written in pieces, is still answered
    path = mi.reply_fifo("reply")
    stream = trio.lowlevel.FdStream(os.open(path, os.O_RDWR | os.O_NONBLOCK))
    async with stream:
        await mi.write(b":imc_list_")
        await mi.write(b"rooms:reply\n")
        await mi.write(b"\n")
        answer = b""
        with trio.fail_after(10):
            while not answer.endswith(b"\n\n"):
                answer += await stream.receive_some(65536)
    assert answer.decode() == ROOMS_REPLY
    # an absolute reply path is used as is
    absolute = str(tmp_path / "abs")
    assert await mi.request(f":imc_list_rooms:{absolute}\n\n".encode(), absolute) == ROOMS_REPLY
    await trio.testing.wait_all_tasks_blocked()  # every reply task has finished
    messages = [r.getMessage() for r in caplog.records]
    assert any("missing-reply-fifo" in m and "No such file" in m for m in messages), messages
    assert any(no_reader in m and "no reader" in m for m in messages), messages
    assert sum("malformed request ignored" in m for m in messages) >= 4, messages
    assert server.metrics.fifo.replies_failed == 2
    assert await mi.request(f":imc_list_members:reply\n{CHAT}\n\n".encode()) == MEMBERS_REPLY


async def test_fifo_removed_at_shutdown(tmp_path):
    from imc_actors.server import open_server
    from tests.integration.conftest import make_config

    path = tmp_path / "stale.fifo"
    os.mkfifo(path)  # a stale FIFO from an earlier run is replaced
    async with open_server(make_config(tmp_path, mi_fifo=str(path), reply_dir=str(tmp_path))) as srv:
        mi = MiClient(srv.mi_fifo, str(tmp_path))
        assert await mi.request(b":imc_list_rooms:reply\n\n") == "200 OK\n\n"
    assert not path.exists()


async def test_regular_file_is_not_replaced(tmp_path):
    from imc_actors.server import open_server
    from tests.integration.conftest import make_config

    path = tmp_path / "not-a-fifo"
    path.write_text("keep me")
    with pytest.raises(BaseException) as info:
        async with open_server(make_config(tmp_path, mi_fifo=str(path))):
            pass
    assert "not a FIFO" in repr(info.value)
    assert path.read_text() == "keep me"


async def test_a_fifo_another_server_reads_is_not_taken_over(tmp_path):
    # a second server given the same mi_fifo must not replace (and at its exit delete) the
    # FIFO of the one running: that one would lose its MI
    from imc_actors.server import open_server
    from tests.integration.conftest import make_config

    path = tmp_path / "imc.fifo"
    first = make_config(tmp_path, mi_fifo=str(path), reply_dir=str(tmp_path))
    async with open_server(first) as running:
        before = os.lstat(path).st_ino
        second = make_config(tmp_path / "second", mi_fifo=str(path))
        (tmp_path / "second").mkdir()
        with pytest.raises(BaseException) as info:
            async with open_server(second):
                pass
        assert "being read by another process" in repr(info.value)
        assert os.lstat(path).st_ino == before
        mi = MiClient(running.mi_fifo, str(tmp_path))
        assert await mi.request(b":imc_list_rooms:reply\n\n") == "200 OK\n\n"


async def test_a_missing_directory_is_created(tmp_path):
    from imc_actors.server import open_server
    from tests.integration.conftest import make_config

    path = tmp_path / "run" / "imc" / "imc.fifo"  # as /run/imc/imc.fifo on a fresh machine
    async with open_server(make_config(tmp_path, mi_fifo=str(path), reply_dir=str(tmp_path))) as srv:
        assert stat.S_ISFIFO(os.stat(path).st_mode)
        mi = MiClient(srv.mi_fifo, str(tmp_path))
        assert await mi.request(b":imc_list_rooms:reply\n\n") == "200 OK\n\n"
    assert not path.exists()
    assert (tmp_path / "run" / "imc").is_dir()
