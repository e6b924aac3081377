"""A small Trio SIP user agent for end-to-end tests.

:class:`TestUA` is what a phone or chat client would be in a test: it registers, sends
MESSAGE/OPTIONS/anything with RFC 3261 retransmissions over UDP (or over one TCP connection),
and receives requests, answering MESSAGEs with a configurable status. It builds and parses
with :mod:`imc_actors.sip` but keeps its own, deliberately simple, timer logic (it must not
share the server's transaction code it helps to test).

Typical use::

    async with trio.open_nursery() as nursery:
        alice = await TestUA.open(nursery, "alice", "example.org", server_addr)
        assert (await alice.register()).code == 200
        response = await alice.message("sip:room@example.org", "#join")
        notice = await alice.next_message()      # already answered with alice.answer
        alice.close()

For fault tests: :attr:`TestUA.drop_next` makes it ignore incoming requests (to force the server
to retransmit), :meth:`TestUA.send_raw` / :meth:`TestUA.recv_raw` exchange raw bytes, and
:attr:`TestUA.received` / :attr:`TestUA.ignored` record what arrived.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import secrets
import socket
import ssl
from collections.abc import Sequence

import trio

from imc_actors.sip import (
    Request,
    Response,
    SipParseError,
    build_request,
    build_response,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    parse_stream,
)

__all__ = ["TestUA", "SipTimeout"]

HOST = "127.0.0.1"


class SipTimeout(TimeoutError):
    """No final response arrived within 64*T1 (Timer F)."""


class _Waiter:
    __slots__ = ("event", "response", "provisional")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: Response | None = None
        self.provisional: list[Response] = []


def digest_answer(
    challenge: str, method: str, uri: str, user: str, password: str, nc: int, *,
    username: str | None = None,
) -> str:
    """An ``Authorization`` for one ``WWW-Authenticate`` Digest challenge (qop=auth), computed
    here with hashlib alone (the server's digest code must not check itself)."""
    params = dict(
        (name.lower(), value[1:-1] if value.startswith('"') else value)
        for name, value in re.findall(r'([A-Za-z-]+)=("[^"]*"|[^,\s]+)', challenge)
    )
    algorithm = params.get("algorithm", "MD5")
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def hexdigest(text: str) -> str:
        return h(text.encode()).hexdigest()

    realm, nonce, cnonce, nc_text = params["realm"], params["nonce"], secrets.token_hex(6), f"{nc:08x}"
    ha1 = hexdigest(f"{user}:{realm}:{password}")
    ha2 = hexdigest(f"{method}:{uri}")
    response = hexdigest(f"{ha1}:{nonce}:{nc_text}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username or user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", qop=auth, nc={nc_text}'
    )


class TestUA:
    """A test user agent bound to 127.0.0.1 (see the module docstring).

    Attributes: ``user``/``domain``; ``uri`` (``sip:user@domain``); ``contact``
    (``sip:user@127.0.0.1:<port>``); ``port`` (its UDP port, also its TCP listener's port when
    ``transport == 'tcp'`` or ``'tls'``); ``server`` (``(host, port)`` requests go to);
    ``transport`` for its own requests (``tls``: over TLS, with :attr:`tls` the client and
    server contexts, and a ``;transport=tls`` contact); ``accepted``, how many connections
    its TCP/TLS listener accepted; ``answer``, the status it gives incoming MESSAGEs (other methods get 200);
    ``drop_next``, how many upcoming incoming requests to ignore completely; ``received``, every
    request answered, in order (a retransmission is answered again, not recorded twice);
    ``ignored``, requests dropped because of ``drop_next``; ``retransmissions``, incoming
    requests recognised as retransmissions; ``arrivals``, what arrived in order (responses by
    code, new requests by method); ``t1``/``t2``, its retransmission timers.

    Digest: with ``password`` set, a 401 is answered once with an ``Authorization`` for the
    challenge of algorithm ``algorithm`` (None: the first offered) as ``auth_user`` (None:
    ``user``); ``authorizations`` records
    every ``Authorization`` sent (what an eavesdropper would capture).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        user: str,
        domain: str,
        server: tuple[str, int],
        transport: str,
        answer: int,
        udp: trio.socket.SocketType,
        tcp_listeners: list[trio.SocketListener],
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    ) -> None:
        self.user = user
        self.domain = domain
        self.server = server
        self.transport = transport
        self.answer = answer
        self.port: int = udp.getsockname()[1]
        self.uri = f"sip:{user}@{domain}"
        self.contact = f"sip:{user}@{HOST}:{self.port}"
        if transport == "tls":
            self.contact += ";transport=tls"
        self.tls = tls  # (client context, server context)
        self.accepted = 0
        self.drop_next = 0
        self.received: list[Request] = []
        self.ignored: list[Request] = []
        self.retransmissions = 0
        self.arrivals: list[tuple[str, int | str]] = []  # ("response", code) / ("request", method)
        self.t1 = 0.5
        self.t2 = 4.0
        self.password: str | None = None
        self.auth_user: str | None = None  # digest username (None: user)
        self.algorithm: str | None = None
        self.authorizations: list[str] = []
        self._udp = udp
        self._tcp_listeners = tcp_listeners
        self._tcp_out: trio.abc.Stream | None = None
        self._tcp_socket: trio.socket.SocketType | None = None
        self._tcp_lock = trio.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._answered: dict[tuple[str | None, str, str], bytes] = {}
        self._messages_send, self._messages = trio.open_memory_channel[Request](math.inf)
        self._raw_send, self._raw = trio.open_memory_channel[bytes](math.inf)
        self._cseq = itertools.count(1)
        self._reg_call_id = new_call_id(HOST)
        self._reg_cseq = itertools.count(1, 2)  # odd: a digest retry takes the even one
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.closed = False

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        user: str,
        domain: str,
        server: tuple[str, int],
        *,
        transport: str = "udp",
        answer: int = 200,
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    ) -> TestUA:
        """Bind 127.0.0.1:0 over UDP (plus a TCP listener on the same port number when
        ``transport`` is ``'tcp'`` or ``'tls'``: over TLS with ``tls``'s server context) and
        start the receive loops as one task in ``nursery``. Requests go to ``server`` over
        ``transport`` (TLS verifying the server with ``tls``'s client context). Checkpoints."""
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be 'udp', 'tcp' or 'tls', not {transport!r}")
        if (transport == "tls") != (tls is not None):
            raise ValueError("transport 'tls' goes with tls=(client context, server context)")
        for _ in range(20):
            udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await udp.bind((HOST, 0))
            listeners: list[trio.SocketListener] = []
            if transport in ("tcp", "tls"):
                try:
                    listeners = await trio.open_tcp_listeners(udp.getsockname()[1], host=HOST)
                except OSError:  # that port number is taken for TCP: try another
                    udp.close()
                    continue
            break
        else:  # pragma: no cover
            raise OSError("no port free for both UDP and TCP")
        ua = cls(user, domain, server, transport, answer, udp, listeners, tls)
        await nursery.start(ua._run)
        return ua

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._udp_loop)
                    if self._tcp_listeners:
                        listeners: list = list(self._tcp_listeners)
                        if self.tls is not None:
                            listeners = [trio.SSLListener(lst, self.tls[1]) for lst in listeners]
                        nursery.start_soon(trio.serve_listeners, self._tcp_connection, listeners)
                    task_status.started()
            finally:
                self._close_sockets()

    def close(self) -> None:
        """Stop the receive loops and close every socket at once (no checkpoint): from now on
        the UA is unreachable (datagrams to its port are lost, TCP connects are refused)."""
        self.closed = True
        self._scope.cancel()
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._udp.close()
        for listener in self._tcp_listeners:
            listener.socket.close()
        if self._tcp_socket is not None:
            self._tcp_socket.close()

    # ------------------------------------------------------------------ receiving
    async def _udp_loop(self) -> None:
        while True:
            try:
                data, addr = await self._udp.recvfrom(70000)
            except trio.ClosedResourceError:
                return
            except OSError:  # e.g. an ICMP error reported on the socket
                continue
            answer = self._on_message(data)
            if answer is not None:
                await self._udp.sendto(answer, addr[:2])

    async def _tcp_connection(self, stream: trio.abc.Stream) -> None:
        self.accepted += 1
        await self._read_stream(stream)

    async def _read_stream(self, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        # answers on the connection our requests use share its lock with send_raw
        lock = self._tcp_lock if stream is self._tcp_out else trio.Lock()
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
                try:
                    frames = parse_stream(buffer)
                except SipParseError:
                    await self._raw_send.send(bytes(buffer))
                    return
                for frame in frames:
                    answer = self._on_message(frame)
                    if answer is not None:
                        async with lock:
                            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    def _on_message(self, data: bytes) -> bytes | None:
        """Handle one message; return the answer to send back, if any."""
        try:
            message = parse(data)
        except SipParseError:
            self._raw_send.send_nowait(data)
            return None
        if isinstance(message, Response):
            self.arrivals.append(("response", message.code))
            waiter = self._waiters.get(message.branch or "")
            if waiter is None or message.cseq_method == "CANCEL":
                self._raw_send.send_nowait(data)
            elif message.code < 200:
                waiter.provisional.append(message)
            elif waiter.response is None:
                waiter.response = message
                waiter.event.set()
            return None
        if message.method == "ACK":
            return None
        key = (message.branch, message.via_sent_by, message.method)
        if key in self._answered:
            self.retransmissions += 1
            return self._answered[key]
        self.arrivals.append(("request", message.method))
        if self.drop_next > 0:
            self.drop_next -= 1
            self.ignored.append(message)
            return None
        code = self.answer if message.method == "MESSAGE" else 200
        answer = build_response(message, code, to_tag=new_tag())
        self._answered[key] = answer
        self.received.append(message)
        if message.method == "MESSAGE":
            self._messages_send.send_nowait(message)
        return answer

    async def next_message(self) -> Request:
        """The next incoming MESSAGE not yet taken (it was answered with :attr:`answer` when it
        arrived). Waits for one; wrap in ``trio.fail_after`` as a safety net."""
        return await self._messages.receive()

    def pending_messages(self) -> list[Request]:
        """Take every MESSAGE that arrived and was not yet taken, without waiting."""
        taken: list[Request] = []
        while True:
            try:
                taken.append(self._messages.receive_nowait())
            except trio.WouldBlock:
                return taken

    async def recv_raw(self) -> bytes:
        """The next message that matched nothing this UA sent (e.g. the response to bytes sent
        with :meth:`send_raw`, or anything unparsable), as raw bytes. Waits for one."""
        return await self._raw.receive()

    # ------------------------------------------------------------------ sending
    async def send_raw(self, data: bytes, *, tcp: bool = False) -> None:
        """Send ``data`` as is to the server: one datagram, or over the TCP connection."""
        if tcp:
            stream = await self._connection()
            async with self._tcp_lock:
                await stream.send_all(data)
        else:
            await self._udp.sendto(data, self.server)

    async def _connection(self) -> trio.abc.Stream:
        if self._tcp_out is None:
            plain = await trio.open_tcp_stream(*self.server)
            self._tcp_socket = plain.socket
            stream: trio.abc.Stream = plain
            if self.tls is not None and self.transport == "tls":
                stream = trio.SSLStream(plain, self.tls[0], server_hostname=self.server[0])
                await stream.do_handshake()
            self._tcp_out = stream
            assert self._nursery is not None
            self._nursery.start_soon(self._read_stream, stream)
        return self._tcp_out

    async def close_connection(self) -> None:
        """Close the TCP/TLS connection this UA's requests went over (the next one opens a
        new connection from another port)."""
        if self._tcp_out is not None:
            stream, self._tcp_out, self._tcp_socket = self._tcp_out, None, None
            await trio.aclose_forcefully(stream)

    def build(
        self,
        method: str,
        ruri: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
        call_id: str | None = None,
        cseq: int | None = None,
        to_uri: str | None = None,
        branch: str | None = None,
        transport: str | None = None,
    ) -> bytes:
        """The bytes of a request from this UA (Via with its address and ``rport``; From its
        URI with a fresh tag; To ``to_uri`` or the Request-URI)."""
        return build_request(
            method,
            ruri,
            from_uri=self.uri,
            from_tag=new_tag(),
            to_uri=to_uri or ruri,
            call_id=call_id or new_call_id(HOST),
            cseq=cseq if cseq is not None else next(self._cseq),
            via_host=HOST,
            via_port=self.port,
            via_transport=(transport or self.transport).upper(),
            branch=branch or new_branch(),
            headers=headers,
            body=body,
            content_type=content_type,
        )

    async def request(
        self,
        method: str,
        ruri: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
        call_id: str | None = None,
        cseq: int | None = None,
        to_uri: str | None = None,
    ) -> Response:
        """Send a request to the server and return its final response.

        Over UDP it is resent after T1, 2*T1, ... (capped at T2) like RFC 3261 Timer E; with no
        final response 64*T1 after the first send it raises :class:`SipTimeout` (Timer F). Over
        TCP it is sent once. Provisional responses are skipped. A 401 is answered once with
        credentials when :attr:`password` is set (same Call-ID, next CSeq).
        """
        call_id = call_id or new_call_id(HOST)
        cseq = cseq if cseq is not None else next(self._cseq)
        response = await self._transaction(
            method, ruri, body=body, headers=headers, content_type=content_type,
            call_id=call_id, cseq=cseq, to_uri=to_uri,
        )  # fmt: skip
        if response.code != 401 or self.password is None:
            return response
        challenges = response.header_list("WWW-Authenticate")
        chosen = next(
            (c for c in challenges if self.algorithm is None or f"algorithm={self.algorithm}," in c),
            None,
        )
        if chosen is None:
            return response
        authorization = digest_answer(chosen, method, ruri, self.auth_user or self.user, self.password, 1)
        self.authorizations.append(authorization)
        return await self._transaction(
            method, ruri, body=body, headers=[*headers, ("Authorization", authorization)],
            content_type=content_type, call_id=call_id, cseq=cseq + 1, to_uri=to_uri,
        )  # fmt: skip

    async def _transaction(
        self,
        method: str,
        ruri: str,
        *,
        body: bytes,
        headers: Sequence[tuple[str, str]],
        content_type: str | None,
        call_id: str,
        cseq: int,
        to_uri: str | None,
    ) -> Response:
        branch = new_branch()
        data = self.build(
            method, ruri, body=body, headers=headers, content_type=content_type,
            call_id=call_id, cseq=cseq, to_uri=to_uri, branch=branch,
        )  # fmt: skip
        waiter = self._waiters[branch] = _Waiter()
        try:
            deadline = trio.current_time() + 64 * self.t1
            if self.transport in ("tcp", "tls"):
                await self.send_raw(data, tcp=True)
                with trio.move_on_at(deadline):
                    await waiter.event.wait()
            else:
                interval = self.t1
                await self.send_raw(data)
                while not waiter.event.is_set() and trio.current_time() < deadline:
                    with trio.move_on_at(min(trio.current_time() + interval, deadline)):
                        await waiter.event.wait()
                    if not waiter.event.is_set() and trio.current_time() < deadline:
                        await self.send_raw(data)
                        interval = min(2 * interval, self.t2)
            if waiter.response is None:
                raise SipTimeout(f"no final response to {method} {ruri}")
            return waiter.response
        finally:
            del self._waiters[branch]

    async def register(self, expires: int | None = 3600, *, contact: str | None = None) -> Response:
        """REGISTER ``contact`` (default :attr:`contact`) for :attr:`uri` at ``sip:<domain>``
        with ``Expires: <expires>`` (omitted when None). Consecutive calls share one Call-ID
        with rising CSeq, as RFC 3261 §10.2 asks."""
        headers = [("Contact", f"<{contact or self.contact}>")]
        if expires is not None:
            headers.append(("Expires", str(expires)))
        return await self.request(
            "REGISTER",
            f"sip:{self.domain}",
            headers=headers,
            call_id=self._reg_call_id,
            cseq=next(self._reg_cseq),
            to_uri=self.uri,
        )

    async def message(
        self, ruri: str, body: str | bytes, *, content_type: str = "text/plain"
    ) -> Response:
        """Send a MESSAGE with ``body`` (str is UTF-8 encoded) to ``ruri``."""
        data = body.encode() if isinstance(body, str) else body
        return await self.request("MESSAGE", ruri, body=data, content_type=content_type)
