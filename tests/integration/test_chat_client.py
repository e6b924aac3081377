"""``imc-actors chat``: two terminal clients (subprocesses, stdin a pipe) talk through a real
server over UDP on loopback; what they print, what they refuse, how they end."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio

from imc_actors.server import open_server
from tests.support import free_port

from .conftest import DOMAIN, make_config, udp_address

DEADLINE = 20  # seconds: a safety net only, the lines normally come within milliseconds


class Chat:
    """One ``imc-actors chat`` process: write lines to it, wait for lines it prints."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []  # stdout so far, line by line
        self._taken: set[int] = set()  # indexes of lines matched by expect()
        self._changed = trio.Event()
        self.closed = False  # stdout has ended

    async def pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode())
        self.closed = True
        self._changed.set()

    async def send(self, *lines: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all("".join(line + "\n" for line in lines).encode())

    async def expect(self, *wanted: str) -> None:
        """Each line of ``wanted`` is printed (in any order: a refusal's notice may come before
        or after its answer), each matching a line no earlier call matched."""
        with trio.fail_after(DEADLINE):
            for line in wanted:
                while (index := self._find(line)) is None:
                    if self.closed:
                        raise AssertionError(f"{line!r} never came; stdout was {self.lines}")
                    await self._changed.wait()
                self._taken.add(index)

    def _find(self, line: str) -> int | None:
        for index, printed in enumerate(self.lines):
            if printed == line and index not in self._taken:
                return index
        return None

    async def finish(self) -> int:
        """Close stdin (end of input) and wait for the exit code."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        with trio.fail_after(DEADLINE):
            return await self.process.wait()


async def start_chat(nursery: trio.Nursery, server, user: str, *extra: str) -> Chat:
    host, port = udp_address(server)
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "imc_actors",
            "chat",
            f"{user}@{DOMAIN}",
            "--server",
            f"{host}:{port}",
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    chat = Chat(process)
    nursery.start_soon(chat.pump)
    return chat


def bound(server, user: str) -> list[str]:
    return server.registrar.lookup(f"{user}@{DOMAIN}", trio.current_time())


async def wait_registered(server, user: str) -> None:
    with trio.fail_after(DEADLINE):
        while not bound(server, user):
            await trio.sleep(0.01)  # polling a condition, bounded by the deadline


async def alice_and_bob_in_chat(server, nursery):  # type: ignore[no-untyped-def]
    """Two chat clients: alice created the room chat (to the manager: no room was selected
    yet), bob joined it; both saw the join."""
    alice = await start_chat(nursery, server, "alice")
    await wait_registered(server, "alice")
    await alice.send("#create chat")
    await alice.expect("[chat] *** Room was created")
    bob = await start_chat(nursery, server, "bob")
    await wait_registered(server, "bob")
    await bob.send("#join chat")
    await bob.expect("[chat] *** [bob] has joined the room")
    await alice.expect("[chat] *** [bob] has joined the room")
    return alice, bob


async def test_two_clients_chat_both_ways_with_the_room_on_each_line(server, nursery):
    alice, bob = await alice_and_bob_in_chat(server, nursery)
    [contact] = bound(server, "alice")
    assert contact.startswith("sip:alice@127.0.0.1:")

    await bob.send("hello, room")  # #join chat made chat bob's current room
    await alice.expect("[chat] [bob]: hello, room")
    await alice.send("hi bob")
    await bob.expect("[chat] [alice]: hi bob")
    await bob.send("#members")  # a command goes to the current room
    await bob.expect("[chat] Members:", "[chat] *[alice]", "[chat] [bob]")
    await alice.send("/room", "#rooms")
    await alice.expect("[chat] Rooms:", "[chat] [chat]")

    assert await bob.finish() == 0
    assert bound(server, "bob") == []  # unregistered on the way out
    assert await alice.finish() == 0
    assert bound(server, "alice") == []
    assert not any(line.startswith("!") for line in alice.lines + bob.lines), (
        alice.lines + bob.lines
    )


async def test_escape_sequences_in_what_arrives_are_printed_escaped(server, nursery):
    # was: a member's line (or a topic) with ESC [2J cleared the other users' terminals
    alice, bob = await alice_and_bob_in_chat(server, nursery)
    await alice.send("\x1b[2J\x1b[31mboo\x07")
    await bob.expect("[chat] [alice]: \\x1b[2J\\x1b[31mboo\\x07")
    assert not any("\x1b" in line for line in bob.lines), bob.lines
    assert await bob.finish() == 0
    assert await alice.finish() == 0


async def test_refused_lines_show_their_answer_code(server, nursery):
    carol = await start_chat(nursery, server, "carol")
    await carol.send("just text")  # no room selected: nothing is sent
    await carol.expect("! no room selected: /room NAME, or #create NAME / #join NAME")
    await carol.send("/room nosuch", "hello?")
    await carol.expect("! 404 Not Found", "[nosuch] *** Room not found")
    await carol.send("#join lobby", "#join lobby")  # the second one is refused
    await carol.expect(
        "[lobby] *** Room was created", "! 403 Forbidden", "[lobby] *** You are in the room already"
    )
    await carol.send("#frobnicate", "/frobnicate")
    await carol.expect("! 400 Bad Request", "! unknown command /frobnicate (/help lists them)")
    await carol.send("#leave", "still there?")  # leaving the current room selects none
    await carol.expect("! no room selected: /room NAME, or #create NAME / #join NAME")
    assert await carol.finish() == 0


async def test_a_script_pipes_its_lines_and_the_client_exits_by_itself(server, nursery):
    alice = await start_chat(nursery, server, "alice")
    await alice.send("#create chat")
    await alice.expect("[chat] *** Room was created")
    host, port = udp_address(server)
    script = "#join chat\nhello from a script\n/room nosuch\nanyone?\n"
    with trio.fail_after(DEADLINE):
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "imc_actors",
                "chat",
                f"dave@{DOMAIN}",
                "--server",
                f"{host}:{port}",
            ],
            stdin=script.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert "! 404 Not Found" in result.stdout.decode().splitlines()
    await alice.expect(
        "[chat] *** [dave] has joined the room", "[chat] [dave]: hello from a script"
    )
    assert bound(server, "dave") == []
    assert await alice.finish() == 0


async def test_a_server_that_refuses_registration_stops_the_client(tmp_path):
    async with open_server(make_config(tmp_path, registrar=False)) as server:
        host, port = udp_address(server)
        with trio.fail_after(DEADLINE):
            result = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "imc_actors",
                    "chat",
                    f"erin@{DOMAIN}",
                    "--server",
                    f"{host}:{port}",
                ],
                stdin=b"#rooms\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        f"imc-actors: cannot register sip:erin@{DOMAIN} with {host}:{port}: 405 Method Not Allowed"
    )
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not a user"], "imc-actors: invalid USER@DOMAIN: 'not a user'"),
        (
            ["alice@127.0.0.1", "--server", "127.0.0.1:x"],
            "imc-actors: invalid --server: '127.0.0.1:x' is not HOST[:PORT] with a port in 1-65535",
        ),
        (  # it said "expected transport:host:port, got 'udp:127.0.0.1:99999'"
            ["alice@127.0.0.1", "--server", "127.0.0.1:99999"],
            "imc-actors: invalid --server: '127.0.0.1:99999' is not HOST[:PORT] with a port in 1-65535",
        ),
        (
            ["alice@127.0.0.1", "--local", "example.org"],
            "imc-actors: invalid --local: 'example.org' is not an IP address",
        ),
        (
            ["alice@127.0.0.1", "--local", "127.0.0.1:99999"],
            "imc-actors: invalid --local: bad port in '127.0.0.1:99999'",
        ),
        *(
            (  # the Contact would say where nobody can answer (0.0.0.0 bound with 200 before)
                ["alice@127.0.0.1", "--local", given],
                f"imc-actors: invalid --local: {ip} is not one address of this host to send from",
            )
            for given, ip in [("0.0.0.0", "0.0.0.0"), ("0.0.0.0:5070", "0.0.0.0"), ("::", "::"),
                              ("224.0.0.1", "224.0.0.1"), ("255.255.255.255", "255.255.255.255"),
                              ("[ff02::1]:5070", "ff02::1")]
        ),
        (
            ["alice@127.0.0.1", "--local", "::1"],
            "imc-actors: invalid --local: ::1 cannot reach the server at 127.0.0.1",
        ),
        *(  # was: accepted, then every command got 400 Malformed start line, exit 0
            (["alice@127.0.0.1", "--manager-user", given],
             f"imc-actors: invalid --manager-user: not a plain name: {given!r}")
            for given in ("a b", "", "imc@manager")
        ),
    ],
)
def test_bad_arguments_exit_2(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "imc_actors", "chat", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == message


async def test_local_chooses_the_address_the_client_sends_from_and_registers(server, nursery):
    # a client on a machine with several addresses could not choose which one it registered
    port = free_port(host="127.0.0.44")
    gina = await start_chat(nursery, server, "gina", "--local", f"127.0.0.44:{port}")
    await wait_registered(server, "gina")
    assert bound(server, "gina") == [f"sip:gina@127.0.0.44:{port}"]
    await gina.send("#create gina-room")
    await gina.expect("[gina-room] *** Room was created")  # its notice reached that address
    assert await gina.finish() == 0
    assert bound(server, "gina") == []


async def test_sigterm_unregisters_and_exits_0(server, nursery):
    frank = await start_chat(nursery, server, "frank")
    await wait_registered(server, "frank")
    frank.process.send_signal(signal.SIGTERM)  # while it waits for input
    with trio.fail_after(DEADLINE):
        assert await frank.process.wait() == 0
    assert bound(server, "frank") == []


async def test_chat_answers_digest_challenges_with_its_password(tmp_path, nursery):
    from .test_auth import _users

    config = make_config(tmp_path, auth="all", auth_fail_burst=1, auth_fail_rate=0.001)
    _users(config)
    async with open_server(config) as server:
        alice = await start_chat(nursery, server, "alice", "--password", "alice-pw")
        await wait_registered(server, "alice")
        await alice.send("#create locked", "hello room", "#members")
        await alice.expect("[locked] *** Room was created", "[locked] Members:", "[locked] *[alice]")
        assert await alice.finish() == 0
        room = server.conference.room(f"sip:locked@{DOMAIN}")
        assert room is not None and room.owner is not None and room.owner.uri == f"sip:alice@{DOMAIN}"
        host, port = udp_address(server)
        for extra, why in (
            (["--password", "wrong"], "403 Wrong User Or Password (is the password right?)"),
            ([], "401 Unauthorized (the server requires a password: --password)"),
            (["--password", "wrong"], "403 Wrong User Or Password (is the password right?)"),
            # past auth_fail_burst the right password is not checked: it is not the password
            (["--password", "alice-pw"], "403 Too Many Wrong Passwords (too many wrong answers "
                                         "came from this address: wait, then try again)"),
        ):
            with trio.fail_after(DEADLINE):
                result = await trio.run_process(
                    [sys.executable, "-m", "imc_actors", "chat", f"alice@{DOMAIN}", "--server", f"{host}:{port}", *extra],
                    stdin=b"#rooms\n", capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
            assert result.returncode == 1
            assert result.stderr.decode().splitlines()[-1] == (
                f"imc-actors: cannot register sip:alice@{DOMAIN} with {host}:{port}: {why}"
            )


async def test_a_burst_of_messages_prints_in_the_order_it_arrived(server, nursery):
    # The server sends up to delivery_burst notices to a member at once; all of them reach the
    # client's socket together. Printed from a task each, they came out in Trio's run order.
    bob = await start_chat(nursery, server, "bob")
    await wait_registered(server, "bob")
    [contact] = bound(server, "bob")
    host, port = contact.split("@", 1)[1].split(";")[0].rsplit(":", 1)
    sender = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sender:
        await sender.bind(("127.0.0.1", 0))
        me = sender.getsockname()[1]
        count = 40
        for i in range(count):
            body = f"[alice]: line {i}".encode()
            request = (
                f"MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-burst-{i}\r\n"
                f"From: <sip:chat@{DOMAIN}>;tag=burst\r\nTo: <sip:bob@{DOMAIN}>\r\n"
                f"Call-ID: burst-{i}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            await sender.sendto(request, (host, int(port)))
        answers = []
        with trio.fail_after(DEADLINE):
            while len(answers) < count:
                answers.append(await sender.recv(65536))
        assert all(answer.startswith(b"SIP/2.0 200 ") for answer in answers)
    await bob.expect(*(f"[chat] [alice]: line {i}" for i in range(count)))
    printed = [line for line in bob.lines if line.startswith("[chat] [alice]: line ")]
    assert printed == [f"[chat] [alice]: line {i}" for i in range(count)]
    assert await bob.finish() == 0
