"""A single-process micro-benchmark of the SIP hot path, for A/B comparisons of optimisations.

``python -m bench.micro [--members 10] [--messages 4000] [--scenario fanout|churn] [--history-max N]
[--delivery-window W] [--rate R] [--transport udp|tcp]``

The real server (``imc_actors.server.open_server``: transport, registrar, conference, SQLite
store) runs in this process on 127.0.0.1:<free port>, and so does a small Trio client with one
UDP socket that plays every member: it REGISTERs them, sets the room up, then keeps ``window``
chat MESSAGEs (or ``#join``/``#exit`` pairs) in flight and answers every relayed MESSAGE with a
200. Everything shares one core and one event loop, so the result is not a throughput figure
for the server alone; it is a stable *cost* figure (CPU µs per delivered message, both sides
included) that changes only when the code does, unlike the SIPp runs on a shared machine.
Bounded: at most ``--messages`` requests and ``--timeout`` seconds.

``--transport tcp`` (fan-out only): every member but the sender REGISTERs over a TCP connection
of its own (its contact names that connection's port, ``;transport=tcp``) and gets its
deliveries over it, as a phone behind NAT does; the sender stays on the UDP socket.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import socket
import sys
import tempfile
import time

import trio

DOMAIN = "127.0.0.1"
_VIA = re.compile(rb"^(Via|v):[^\r\n]*\r\n", re.MULTILINE | re.IGNORECASE)


def _header_block(data: bytes, names: tuple[bytes, ...]) -> bytes:
    """The raw lines of ``names`` (Via, From, To, Call-ID, CSeq) to echo in a response."""
    head = data.split(b"\r\n\r\n", 1)[0]
    out = []
    for line in head.split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in names:
            out.append(line)
    return b"\r\n".join(out)


_ECHO = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")


def ok_for(request: bytes) -> bytes:
    """A 200 OK to ``request`` (its Via/From/To/Call-ID/CSeq echoed, a To tag added)."""
    block = _header_block(request, _ECHO)
    block = re.sub(rb"(?m)^(To|t):([^\r\n]*)$", lambda m: m.group(0) if b"tag=" in m.group(2) else m.group(0) + b";tag=m1", block)
    return b"SIP/2.0 200 OK\r\n" + block + b"\r\nContent-Length: 0\r\n\r\n"


class Client:
    """One UDP socket playing every member and the senders."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self.ids = itertools.count()
        self.pending: dict[bytes, trio.Event] = {}
        self.codes: dict[bytes, int] = {}
        self.deliveries = 0

    async def bind(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def request(self, method: str, ruri_user: str, from_user: str, body: bytes = b"",
                extra: str = "") -> tuple[bytes, bytes]:
        n = next(self.ids)
        call_id = f"mc{n}-{os.getpid()}".encode()
        data = (
            f"{method} sip:{ruri_user}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKmc{n}x{os.getpid()};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{from_user}@{DOMAIN}>;tag=t{n}\r\n"
            f"To: <sip:{ruri_user}@{DOMAIN}>\r\nCall-ID: {call_id.decode()}\r\nCSeq: 1 {method}\r\n"
            f"{extra}Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        return call_id, data

    async def send(self, method: str, ruri_user: str, from_user: str, body: bytes = b"",
                   extra: str = "") -> int:
        call_id, data = self.request(method, ruri_user, from_user, body, extra)
        done = self.pending[call_id] = trio.Event()
        self.sock.sendto(data, self.server)
        with trio.fail_after(10):
            await done.wait()
        return self.codes.pop(call_id)

    async def receive_loop(self) -> None:
        sock = self.sock
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if data.startswith(b"SIP/2.0 "):
                code = int(data[8:11])
                if code < 200:
                    continue
                m = re.search(rb"(?mi)^(?:Call-ID|i):\s*([^\r\n]+)", data)
                if m is None:
                    continue
                event = self.pending.pop(m.group(1).strip(), None)
                if event is not None:
                    self.codes[m.group(1).strip()] = code
                    event.set()
            elif data.startswith(b"MESSAGE "):
                self.deliveries += 1
                sock.sendto(ok_for(data), addr)

    def answered(self, data: bytes) -> None:
        """A response arrived (over UDP or a member's TCP connection): wake its sender."""
        if int(data[8:11]) < 200:
            return
        m = re.search(rb"(?mi)^(?:Call-ID|i):\s*([^\r\n]+)", data)
        if m is not None:
            event = self.pending.pop(m.group(1).strip(), None)
            if event is not None:
                self.codes[m.group(1).strip()] = int(data[8:11])
                event.set()

    async def tcp_member(self, address: tuple[str, int], user: str, nursery: trio.Nursery) -> None:
        """Register ``user`` over a TCP connection of its own and answer what comes over it."""
        from imc_actors.sip import parse_stream

        stream = await trio.open_tcp_stream(*address)
        port = stream.socket.getsockname()[1]
        extra = f"Contact: <sip:{user}@127.0.0.1:{port};transport=tcp>\r\nExpires: 3600\r\n"
        call_id, data = self.request("REGISTER", user, user, extra=extra)
        data = data.replace(b"SIP/2.0/UDP 127.0.0.1:%d" % self.port, b"SIP/2.0/TCP 127.0.0.1:%d" % port)
        done = self.pending[call_id] = trio.Event()

        async def read() -> None:
            buffer = bytearray()
            while chunk := await stream.receive_some(65536):
                buffer += chunk
                for frame in parse_stream(buffer):
                    if frame.startswith(b"SIP/2.0 "):
                        self.answered(frame)
                    elif frame.startswith(b"MESSAGE "):
                        self.deliveries += 1
                        await stream.send_all(ok_for(frame))

        nursery.start_soon(read)
        await stream.send_all(data)
        with trio.fail_after(10):
            await done.wait()
        assert self.codes.pop(call_id) == 200


async def run(members: int, messages: int, window: int, scenario: str, timeout: float,
              history_max: int | None = None, delivery_window: int = 0,
              rate: float = 0.0, transport: str = "udp") -> dict[str, float]:
    from imc_actors.config import Config
    from imc_actors.server import open_server

    db = os.path.join(tempfile.mkdtemp(prefix="imc-micro-"), "micro.db")
    overrides = {
        "listen": ["udp:127.0.0.1:0"] + (["tcp:127.0.0.1:0"] if transport == "tcp" else []),
        "domains": [DOMAIN], "db_url": f"sqlite:///{db}",
        "log_level": "warning"}
    if "flood_rate" in Config.names():  # one source (127.0.0.1) sends everything: no budget
        overrides["flood_rate"] = 0
    if history_max is not None:  # 0: no archive (chat writes nothing), as before issue 16
        overrides["history_max"] = history_max
    if delivery_window and "delivery_window" in Config.names():  # older trees: one lane for all
        overrides["delivery_window"] = delivery_window
    config = Config.from_sources(environ={}, overrides=overrides)
    with trio.fail_after(timeout):
        async with open_server(config) as server, trio.open_nursery() as nursery:
            from imc_actors import cli

            tune = getattr(cli, "_tune_gc", None)  # what `imc-actors serve` does, where it does
            if tune is not None:
                tune()
            address = next(a for a in server.addresses if a.transport == "udp")
            client = Client(("127.0.0.1", address.port))
            await client.bind()
            nursery.start_soon(client.receive_loop)
            users = [f"m{i}" for i in range(members)]
            contact = lambda u: f"Contact: <sip:{u}@127.0.0.1:{client.port}>\r\nExpires: 3600\r\n"  # noqa: E731
            tcp = next(((a.host, a.port) for a in server.addresses if a.transport == "tcp"), None)
            for index, user in enumerate(users):
                if tcp is not None and index > 0:  # members over TCP, the sender over UDP
                    await client.tcp_member(tcp, user, nursery)
                    continue
                assert await client.send("REGISTER", user, user, extra=contact(user)) == 200
            if scenario == "fanout":
                assert await client.send("MESSAGE", "room", users[0], b"#create") == 200
                for user in users[1:]:
                    assert await client.send("MESSAGE", "room", user, b"#join") == 200
            else:
                for i in range(window):
                    await client.send("REGISTER", f"owner{i}", f"owner{i}", extra=contact(f"owner{i}"))
                    await client.send("REGISTER", f"c{i}", f"c{i}", extra=contact(f"c{i}"))
                    assert await client.send("MESSAGE", f"room{i}", f"owner{i}", b"#create") == 200
            await trio.sleep(0.5)
            client.deliveries = 0
            failures = 0
            cpu0, t0 = time.process_time(), time.perf_counter()
            start = trio.current_time()
            sent = 0

            async def lane(i: int) -> None:
                nonlocal failures, sent
                while sent < messages:
                    if rate:  # paced: request k leaves at t0 + k / rate, not as fast as answers come
                        await trio.sleep_until(start + sent / rate)
                    sent += 1
                    if scenario == "fanout":
                        code = await client.send("MESSAGE", "room", users[0], b"hello room")
                        failures += code != 202
                    else:
                        a = await client.send("MESSAGE", f"room{i}", f"c{i}", b"#join")
                        b = await client.send("MESSAGE", f"room{i}", f"c{i}", b"#exit")
                        failures += (a != 200) + (b != 200)

            async with trio.open_nursery() as lanes:
                for i in range(window):
                    lanes.start_soon(lane, i)
            expected = messages * (members - 1) if scenario == "fanout" else messages * 4
            while client.deliveries < expected:
                await trio.sleep(0.01)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            nursery.cancel_scope.cancel()
    return {"messages": sent, "deliveries": client.deliveries, "failures": failures, "wall": wall,
            "cpu": cpu, "us_per_delivery": 1e6 * cpu / max(1, client.deliveries),
            "us_per_request": 1e6 * cpu / max(1, sent)}


def load_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A parser with the load's options (``--scenario --members --messages --repeat``), which
    :mod:`bench.threads` shares."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["fanout", "churn"], default="fanout")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = load_parser("python -m bench.micro", __doc__)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--history-max", type=int, default=None,
                        help="the server's history_max (0: no archive; default: the server's default)")
    parser.add_argument("--delivery-window", dest="delivery_window", type=int, default=0,
                        help="the server's delivery_window (default: its own default)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="pace the requests at this many a second (default: as fast as answered)")
    parser.add_argument("--transport", choices=["udp", "tcp"], default="udp",
                        help="how the members (all but the sender) are registered (fan-out)")
    args = parser.parse_args(argv)
    for _ in range(args.repeat):
        result = trio.run(run, args.members, args.messages, args.window, args.scenario, args.timeout,
                          args.history_max, args.delivery_window, args.rate, args.transport)
        print(f"{args.scenario} N={args.members} {args.transport}: {result['messages']} requests, {result['deliveries']} "
              f"deliveries in {result['wall']:.2f}s (cpu {result['cpu']:.2f}s): "
              f"{result['us_per_delivery']:.1f} µs/delivery, {result['us_per_request']:.0f} µs/request, "
              f"{result['failures']} failures", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
