"""``imc-actors chat USER@DOMAIN``: a terminal client for a running server, over SIP.

It is a small SIP user agent built on :class:`~imc_actors.transport.SipTransport`: it binds one
UDP socket on the local address that reaches the server, registers ``sip:USER@DOMAIN`` there
(``REGISTER`` every :data:`REGISTER_EXPIRES` / 2 seconds; ``Expires: 0`` at exit) and sends
every request to the server (its ``outbound_proxy``). Incoming MESSAGEs are printed in the order
they arrive (no task per request: see ``ChatClient.start``) and answered 200,
OPTIONS 200, anything else 405.

What it prints on stdout, one line per body line:

- every incoming MESSAGE as ``[room] <line>``: ``room`` is the From user (the room that sent it,
  or the manager, e.g. ``[imc-manager] Rooms:``), with ``@host`` when the host is not DOMAIN;
- ``! <code> <reason>`` when a line it sent was refused (a final answer of 300 or more),
  and ``! ...`` for a line it could not send (no room selected, unknown ``/`` command).

What a typed line does:

- ``/room NAME`` selects the current room (``sip:NAME@DOMAIN``; ``NAME@host`` for another
  domain), ``/room`` shows it, ``/help`` lists these, ``/quit`` ends (as end of input does);
- a line that starts with the command character (``#``) is sent to the current room, or to
  the manager URI (``sip:imc-manager@DOMAIN``) while no room is selected. After a 2xx answer
  to ``#create``, ``#join`` or ``#accept``, the room it named becomes the current room; after
  one to ``#leave`` or ``#destroy`` of the current room, no room is selected;
- any other line is chat, sent to the current room.

Lines are sent one at a time, in order: each after the previous one has its final answer, so a
script's ``#create x`` is done before its next line goes to ``x``. At the end of input (a pipe
that closes, Ctrl-D) it keeps printing what arrives until nothing has for ``wait`` seconds (at
most ten times that), unregisters and exits 0; SIGINT and SIGTERM unregister and exit 0 at once.
Status lines (registered, room selected) go to stderr. Exit status: 0 after a normal end, 1 when
registering failed, 2 for a bad argument.

Authentication: with ``--password``, a 401/407 is answered once with digest credentials
(:mod:`imc_actors.sip.digest`: the first challenge whose algorithm it speaks, SHA-256 or MD5,
``qop=auth``), and the nonce is reused with a rising nonce-count for the next requests until
the server asks again (``stale=true``, or a new challenge). Without a password, or when the
answer is refused, the 401/403 is reported as an error.
"""

from __future__ import annotations

import ipaddress
import math
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TextIO

import trio

from .config import ListenAddress, is_plain_name
from .imc.commands import CommandError, parse_command, resolve
from .imc.texts import shown
from .sip import Request, complete_argument, new_call_id, split_uri
from .sip.digest import ALGORITHMS, Challenge, DigestError, authorization, parse_challenge
from .transport import ClientResult, Reply, Responder, SipTransport, Source

__all__ = ["ChatClient", "ChatError", "ChatOptions", "run_chat", "REGISTER_EXPIRES"]

PROG = "imc-actors"
#: Expires asked for in REGISTER; the registration is refreshed after half of it.
REGISTER_EXPIRES = 600
#: A refresh that failed is retried after this many seconds.
REFRESH_RETRY = 10.0
ALLOW = (("Allow", "MESSAGE, OPTIONS"),)
_AUTH_CODES = (401, 407)
HELP = """\
/room NAME   talk in room NAME (sip:NAME@DOMAIN); /room alone shows the current room
/help        this list
/quit        unregister and quit (as does the end of input, Ctrl-D)
#...         a command, sent to the current room, or to the manager when no room is selected
             (#help lists them; after #create NAME, #join NAME or #accept NAME you are in NAME)
anything else is a chat line for the current room"""


class ChatError(Exception):
    """A bad argument (exit 2) or a failed start (exit 1): ``exit_code`` and the message."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What ``imc-actors chat`` was given.

    ``user`` (``alice@example.com`` or ``sip:alice@example.com``; without ``@host`` the server's
    host is the domain), ``server`` (``HOST[:PORT]``), ``password`` (answers digest
    challenges; None: none is answered), ``wait`` (seconds of quiet after the end of input before quitting),
    ``manager_user`` and ``command_char`` as configured on the server, ``local`` (``IP[:PORT]``
    to send from and be reached at; None: the address the kernel would send from to the
    server, on a free port).
    """

    user: str
    server: str = "127.0.0.1:5060"
    password: str | None = None
    wait: float = 0.5
    manager_user: str = "imc-manager"
    command_char: str = "#"
    local: str | None = None


def _server_address(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST[:PORT]`` / ``[v6]:PORT`` (port 5060 by default)."""
    try:
        address = ListenAddress.parse(f"udp:{text}")
    except ValueError:  # its message would name the udp: put in front here
        raise ChatError(f"invalid --server: {text!r} is not HOST[:PORT] with a port in 1-65535") from None
    if address.port == 0:
        raise ChatError(f"invalid --server: port 0 in {text!r}")
    return address.host, address.port


def _local_address(text: str) -> tuple[str, int]:
    """``(ip, port)`` of ``--local IP[:PORT]`` / ``[v6][:PORT]`` (port 0, a free one, when
    none is given). Raises :class:`ChatError`."""
    host, port = text, "0"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ChatError(f"invalid --local: {text!r} is not IP[:PORT]")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ChatError(f"invalid --local: {host!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        # the address also goes into the Contact: it must be one the server can send back to
        raise ChatError(f"invalid --local: {host} is not one address of this host to send from")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ChatError(f"invalid --local: bad port in {text!r}")
    return host, int(port)


def _local_ip_towards(family: int, ip: str, port: int) -> str:
    """The local address the kernel would send from to ``ip`` (a connected UDP socket sends
    nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((ip, port))
        return probe.getsockname()[0]


class ChatClient:
    """One chat session (see the module docstring): :meth:`run` it once in a Trio run.

    ``stdin`` (a file descriptor) is read line by line (UTF-8 with replacement); ``out`` gets the
    conversation, ``err`` the status lines.
    """

    def __init__(self, options: ChatOptions, stdin: int, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.stdin = stdin
        self.out = out
        self.err = err
        self.server_host, self.server_port = _server_address(options.server)
        self.local = _local_address(options.local) if options.local is not None else None
        if len(options.command_char) != 1 or options.command_char.isspace():
            raise ChatError("invalid --command-char: must be one non-space character")
        if not is_plain_name(options.manager_user):  # as the server's manager_user must be
            raise ChatError(f"invalid --manager-user: not a plain name: {options.manager_user!r}")
        if not options.wait >= 0 or not math.isfinite(options.wait):
            raise ChatError("invalid --wait: must be a number of seconds, 0 or more")
        try:
            self.aor = complete_argument(options.user, self.server_host)
        except ValueError:
            raise ChatError(f"invalid USER@DOMAIN: {options.user!r}") from None
        self.user, self.domain = split_uri(self.aor)
        self.manager = f"sip:{options.manager_user}@{self.domain}"
        self.room: str | None = None  #: the current room's URI
        self.contact = ""
        self._transport: SipTransport | None = None
        self._last_arrival = -math.inf
        self._challenge: tuple[str, Challenge] | None = None  # (header name, challenge) in use
        self._nc = 0

    # ------------------------------------------------------------------ output
    def say(self, line: str) -> None:
        """One line of the conversation (stdout)."""
        print(line, file=self.out, flush=True)

    def status(self, line: str) -> None:
        """One status line (stderr)."""
        print(f"{PROG}: {line}", file=self.err, flush=True)

    def label(self, uri: str) -> str:
        """``name`` of ``sip:name@DOMAIN``, ``name@host`` of another domain."""
        try:
            user, host = split_uri(uri)
        except ValueError:
            return uri
        return user if host.lower() == self.domain.lower() else f"{user}@{host}"

    # ------------------------------------------------------------------ incoming requests
    async def __call__(self, request: Request, source: Source) -> Reply:
        """The transport's handler (what :meth:`start` does, in a task)."""
        await trio.lowlevel.checkpoint()
        return self.answer(request)

    def start(self, request: Request, source: Source, respond: Responder) -> bool:
        """The transport's task-free path, for every request over UDP: print it and answer at
        once, so lines come out in the order they arrived. (With a task per request, what
        arrives together, a burst of the server's ``delivery_burst``, printed in whatever
        order Trio ran the tasks.)"""
        respond(self.answer(request))
        return True

    def answer(self, request: Request) -> Reply:
        """Print a MESSAGE and answer 200; OPTIONS 200; others 405."""
        if request.method == "MESSAGE":
            self._last_arrival = trio.current_time()
            label = self.label(request.from_uri)
            text = request.body.decode("utf-8", "replace")
            for line in text.splitlines() or [""]:  # escapes shown, not run by the terminal
                self.say(f"[{shown(label)}] {shown(line)}".rstrip())
            return Reply(200)
        if request.method == "OPTIONS":
            return Reply(200, headers=ALLOW)
        return Reply(405, headers=ALLOW)

    # ------------------------------------------------------------------ registration
    async def _register(self, expires: int) -> ClientResult:
        assert self._transport is not None
        # send_request always sends CSeq 1, so each REGISTER gets a Call-ID of its own (the
        # registrar refuses a repeated CSeq within one Call-ID; a new one replaces the binding)
        return await self._send(
            "REGISTER", f"sip:{self.domain}", to_uri=self.aor,
            headers=[("Contact", f"<{self.contact}>"), ("Expires", str(expires))],
            new_call_id=True,
        )  # fmt: skip

    async def _send(
        self, method: str, uri: str, *, to_uri: str, headers: list[tuple[str, str]],
        body: bytes = b"", content_type: str | None = None, new_call_id: bool = False,
    ) -> ClientResult:  # fmt: skip
        """``send_request`` with digest credentials: the current challenge's nonce with the
        next nonce-count, and once more with a fresh challenge when the server asks."""
        transport = self._transport
        assert transport is not None

        async def attempt() -> ClientResult:
            return await transport.send_request(
                method, uri, from_uri=self.aor, to_uri=to_uri,
                headers=[*headers, *self._credentials(method, uri)], body=body,
                content_type=content_type, call_id=self._call_id() if new_call_id else None,
            )  # fmt: skip

        result = await attempt()
        if result.code in _AUTH_CODES and self.options.password is not None and self._take_challenge(result):
            result = await attempt()
        return result

    def _call_id(self) -> str:
        return new_call_id(self.server_host)

    def _credentials(self, method: str, uri: str) -> list[tuple[str, str]]:
        if self._challenge is None or self.options.password is None:
            return []
        name, chosen = self._challenge
        self._nc += 1
        return [(name, authorization(chosen, method, uri, self.user, self.options.password, self._nc))]

    def _take_challenge(self, result: ClientResult) -> bool:
        """Keep the first challenge of ``result`` this client can answer; False when none."""
        name = "Authorization" if result.code == 401 else "Proxy-Authorization"
        for text in result.challenges:
            try:
                chosen = parse_challenge(text)
            except DigestError:
                continue
            if chosen.algorithm in ALGORITHMS and "auth" in chosen.qop:
                self._challenge, self._nc = (name, chosen), 0
                return True
        return False

    async def register(self) -> int:
        """REGISTER until accepted (a 423 doubles Expires, up to 3600 s); returns the Expires
        asked for. Raises :class:`ChatError` (exit 1) when the server refuses."""
        expires = REGISTER_EXPIRES
        while True:
            result = await self._register(expires)
            if result.ok:
                return expires
            if result.code == 423 and expires < 3600:
                expires = min(2 * expires, 3600)
                continue
            raise ChatError(self._refusal("cannot register", result), exit_code=1)

    def _refusal(self, what: str, result: ClientResult) -> str:
        text = f"{what} {self.aor} with {self.options.server}: {result.code} {result.reason}"
        if result.code in _AUTH_CODES:
            if self.options.password is None:
                return text + " (the server requires a password: --password)"
            return text + " (the server did not accept the password's answer)"
        if result.code == 403 and result.reason == "Too Many Wrong Passwords":
            return text + " (too many wrong answers came from this address: wait, then try again)"
        if result.code == 403 and self.options.password is not None:
            return text + " (is the password right?)"
        if result.code == 408:
            return text + " (is imc-actors serve running there?)"
        return text

    async def _refresh(self, expires: int) -> None:
        """Re-REGISTER after half of ``expires``; a failure is reported and retried."""
        delay = expires / 2
        while True:
            await trio.sleep(delay)
            result = await self._register(expires)
            if result.ok:
                delay = expires / 2
            else:
                self.status(self._refusal("refreshing the registration of", result))
                delay = REFRESH_RETRY

    async def unregister(self) -> None:
        """``Expires: 0`` for our contact; a failure is reported, not raised."""
        with trio.move_on_after(5):
            result = await self._register(0)
            if not result.ok:
                self.status(self._refusal("cannot unregister", result))

    # ------------------------------------------------------------------ outgoing lines
    def _room_of(self, name: str) -> str | None:
        try:
            return complete_argument(name, self.domain)
        except ValueError:
            return None

    async def send_line(self, line: str) -> bool:
        """Handle one typed line; False when it asked to quit."""
        if line.startswith("/"):
            return self._local(line)
        is_command = line.startswith(self.options.command_char)
        target = self.room if self.room is not None or not is_command else self.manager
        if target is None:
            self.say("! no room selected: /room NAME, or #create NAME / #join NAME")
            return True
        result = await self._send(
            "MESSAGE", target, to_uri=target, headers=[], body=line.encode(),
            content_type="text/plain;charset=UTF-8",
        )  # fmt: skip
        if not result.ok:
            self.say(f"! {result.code} {result.reason}")
            if result.code in _AUTH_CODES and self.options.password is None:
                self.say("! the server requires a password: start again with --password")
        elif is_command:
            self._follow(line, target)
        return True

    def _follow(self, line: str, target: str) -> None:
        """After a 2xx command: switch to the room it created, joined or accepted, or leave
        the current room when it was left or destroyed."""
        try:
            command = parse_command(line.encode(), self.options.command_char)
            if command is None:
                return
            user, host = split_uri(target)
            where = resolve(command, ruri_user=user, ruri_host=host,
                            manager_user=self.options.manager_user).room_uri  # fmt: skip
        except (CommandError, ValueError):
            return
        if where is None:
            return
        if command.name in ("create", "join", "accept") and where != self.room:
            self._select(where)
        elif command.name in ("leave", "destroy") and where == self.room:
            self.room = None
            self.status(f"left [{self.label(where)}]; no room selected")

    def _select(self, room: str) -> None:
        self.room = room
        self.status(f"talking in [{self.label(room)}]")

    def _local(self, line: str) -> bool:
        """A ``/`` command of this client."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name == "quit":
            return False
        if name == "help":
            for text in HELP.splitlines():
                self.say(text)
        elif name == "room" and arg:
            room = self._room_of(arg)
            if room is None:
                self.say(f"! not a room name: {arg}")
            else:
                self._select(room)
        elif name == "room":
            self.status(
                f"talking in [{self.label(self.room)}]" if self.room else "no room selected"
            )
        else:
            self.say(f"! unknown command /{name} (/help lists them)")
        return True

    # ------------------------------------------------------------------ the session
    async def _read_lines(self) -> None:
        """Send every input line until the end of input or ``/quit``.

        ``os.read`` in a thread, not a file object's ``readline``: a thread blocked in a
        buffered read holds its lock, and a process exiting (on a signal) with such a daemon
        thread aborts."""
        buffer = b""
        while True:
            chunk = await trio.to_thread.run_sync(
                os.read, self.stdin, 65536, abandon_on_cancel=True
            )
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if not chunk and buffer:
                lines, buffer = [buffer], b""
            for data in lines:
                line = data.decode("utf-8", "replace").rstrip("\r")
                if line.strip() and not await self.send_line(line):
                    return
            if not chunk:
                return

    async def _linger(self) -> None:
        """Keep printing what arrives until nothing has for ``wait`` seconds (at most ten
        times that): the notices caused by the last lines come after their answers."""
        start = trio.current_time()
        wait = self.options.wait
        while True:
            deadline = min(max(start, self._last_arrival) + wait, start + 10 * wait)
            if trio.current_time() >= deadline:
                return
            await trio.sleep_until(deadline)

    async def _resolve_server(self) -> tuple[int, str]:
        try:
            infos = await trio.socket.getaddrinfo(
                self.server_host, self.server_port, type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            raise ChatError(f"cannot resolve {self.server_host}: {exc}", exit_code=1) from None
        family, *_, sockaddr = infos[0]
        return family, sockaddr[0]

    async def run(self) -> int:
        """Register, chat until the end of input or a signal, unregister. Returns the exit code
        (raises :class:`ChatError` for a failed start)."""
        family, server_ip = await self._resolve_server()
        if self.local is not None:
            local_ip, local_port = self.local
            if (":" in local_ip) != (family == socket.AF_INET6):
                raise ChatError(f"invalid --local: {local_ip} cannot reach the server at {server_ip}")
        else:
            local_ip, local_port = _local_ip_towards(family, server_ip, self.server_port), 0
        port = self.server_port
        hop = f"[{server_ip}]:{port}" if ":" in server_ip else f"{server_ip}:{port}"
        self._transport = SipTransport(
            [ListenAddress("udp", local_ip, local_port)], outbound_proxy=hop
        )
        failure: ChatError | None = None
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(self._transport.run, self)
                    failure = await self._session(nursery, signals)
                except OSError as exc:
                    failure = ChatError(f"cannot bind a SIP socket on {local_ip}: {exc}", 1)
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return 0

    async def _session(
        self, nursery: trio.Nursery, signals: AsyncIterator[int]
    ) -> ChatError | None:
        """Register, read and send until the end of input or a signal, unregister; the error
        that stopped it early, if any."""
        assert self._transport is not None
        local = self._transport.bound[0]
        host = f"[{local.host}]" if ":" in local.host else local.host
        self.contact = f"sip:{self.user}@{host}:{local.port}"
        signalled = False
        failure: ChatError | None = None
        async with trio.open_nursery() as session:

            async def on_signal() -> None:
                nonlocal signalled
                async for _ in signals:
                    signalled = True
                    session.cancel_scope.cancel()

            session.start_soon(on_signal)
            self.status(f"registering {self.aor} with {self.options.server} ...")
            try:
                expires = await self.register()
            except ChatError as exc:
                failure = exc
            else:
                self.status(f"registered {self.aor} (contact {self.contact}); /help for help")
                nursery.start_soon(self._refresh, expires)
                await self._read_lines()
                await self._linger()
            session.cancel_scope.cancel()
        if signalled:
            self.status("interrupted")
        if failure is None:
            await self.unregister()
        return failure


def run_chat(options: ChatOptions, stdin: int = 0) -> int:
    """``imc-actors chat``: a session reading file descriptor ``stdin``, printing on
    stdout/stderr; the exit code."""
    try:
        client = ChatClient(options, stdin, sys.stdout, sys.stderr)
        return trio.run(client.run)
    except ChatError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
