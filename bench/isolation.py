"""Delivery isolation: does one dead member slow a busy room down? (issue 11's benchmark)

``python -m bench.isolation [--trials 3] [--duration 40] [--rate R] [--cost]``

The real server (``python -m imc_actors serve``, SQLite, ``IMC_FLOOD_RATE=0``) runs as a
subprocess on 127.0.0.1, fresh for every trial. A 10-member room chats: member ``m0`` sends
chat MESSAGEs at a fixed rate and the nine others, all registered at one UDP port served by a
separate *member* process, answer every relayed MESSAGE with a 200 at once. Each chat body
carries the monotonic time it was sent (``CLOCK_MONOTONIC`` is one clock for every process
on the machine), so the member process measures the *delivery latency* of every notice: from
the sender's MESSAGE leaving to the member receiving the relay.

A trial *with the dead member* adds a member ``dead`` that REGISTERed two contacts on UDP
sockets that are bound and never read: the kernel swallows the datagrams, no ICMP comes back,
so its deliveries really wait out Timer F (32 s) with their retransmissions. ``dead`` is in a
second room where ``talker`` sends 200 chat lines a second: 200 notices/s to the dead member
(they end in its lane, then in the pending store). The trial *without* is the same run with
neither ``dead`` nor ``talker``.

First the room's maximum rate is calibrated (no dead member, short trials, the rate raised by
half until a trial fails, then bisected: a trial passes when every chat got its 202, every
delivery arrived at most 1 s after the last one was sent, and the rate was held), then
``--trials`` pairs of trials at half of it alternate with and without the dead member.
Reported: median p50/p99 delivery latency of the live members, and the ratio of the medians
of the p99s (the issue's bar: within 2x).

``--cost`` also runs ``bench.micro`` (CPU µs per delivery at N=2 and N=10, ``delivery_window``
1 and 4) on this checkout and on an export of an older commit (``--baseline``, default
f368b2a, the delivery before per-member lanes), alternating, and prints the medians.

Every process started is stopped by its PID on any exit path (bench.procs); every trial is
bounded in time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .micro import ok_for
from .recovery import metrics
from .servers import REPO, ImcServer

DOMAIN = "127.0.0.1"
LIVE = [f"m{i}" for i in range(10)]
DEAD_RATE = 200.0
_STAMP = re.compile(rb"lat:(\d+):")
_CALL_ID = re.compile(rb"(?mi)^(?:Call-ID|i):\s*([^\r\n]+)")


def log(*args: object) -> None:
    print(*args, flush=True)


# ------------------------------------------------------------------------- member process
def _members(port: int, conn) -> None:  # type: ignore[no-untyped-def]
    """The live members' phone: answer every MESSAGE 200, record each chat's latency (ns).
    Runs until the parent sends anything; then sends back the latencies and a count."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((DOMAIN, port))
    sock.settimeout(0.1)
    latencies = array("q")
    notices = 0
    seen: set[bytes] = set()  # Call-IDs answered: a retransmission is answered, not counted
    conn.send("ready")
    checked = time.monotonic()
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            data = b""
        if time.monotonic() - checked >= 0.05:
            checked = time.monotonic()
            if conn.poll():
                conn.recv()
                conn.send((latencies.tobytes(), notices))
                latencies = array("q")
                notices = 0
        if not data.startswith(b"MESSAGE "):
            continue
        now = time.monotonic_ns()
        sock.sendto(ok_for(data), addr)
        call_id = _CALL_ID.search(data)
        if call_id is not None:
            if call_id.group(1) in seen:
                continue
            seen.add(call_id.group(1))
        notices += 1
        stamp = _STAMP.search(data)
        if stamp is not None:
            latencies.append(now - int(stamp.group(1)))


class Members:
    """The member process (``multiprocessing``, fork: started before any thread)."""

    def __init__(self, port: int) -> None:
        self.parent, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_members, args=(port, child), daemon=True)
        self.proc.start()
        if not self.parent.poll(10):
            raise RuntimeError("the member process did not start")
        self.parent.recv()

    def collect(self, timeout: float = 10.0) -> tuple[list[float], int]:
        """Latencies (ms) and notices since the last collect."""
        self.parent.send("collect")
        if not self.parent.poll(timeout):
            raise RuntimeError("the member process did not answer")
        raw, notices = self.parent.recv()
        values = array("q")
        values.frombytes(raw)
        return [v / 1e6 for v in values], notices

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(5)


# ------------------------------------------------------------------------- the client side
class Client:
    """The senders: one UDP socket for every request, responses matched by Call-ID; an
    unanswered request is sent again after 0.5 s, then at doubling intervals up to 4 s (RFC
    3261's Timer E, as SIPp does), for at most 32 s."""

    def __init__(self, server_port: int) -> None:
        self.server = (DOMAIN, server_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((DOMAIN, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.setblocking(False)
        self.n = 0
        self.outstanding: dict[bytes, list] = {}  # Call-ID -> [datagram, next resend, interval, give up]
        self.codes: dict[int, int] = {}
        self._resend_check = 0.0

    def send(self, method: str, ruri: str, sender: str, body: str = "", extra: str = "") -> bytes:
        self.n += 1
        n, pid = self.n, os.getpid()
        call_id = f"iso{n}-{pid}"
        payload = body.encode()
        data = (
            f"{method} sip:{ruri}@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {DOMAIN}:{self.port};branch=z9hG4bKiso{n}x{pid};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{sender}@{DOMAIN}>;tag=t{n}\r\n"
            f"To: <sip:{ruri}@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
            f"{extra}Content-Type: text/plain\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        now = time.monotonic()
        self.outstanding[call_id.encode()] = [data, now + 0.5, 0.5, now + 32]
        self.sock.sendto(data, self.server)
        return call_id.encode()

    def poll(self) -> None:
        """Read every response waiting (never blocks)."""
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                break
            if not data.startswith(b"SIP/2.0 "):
                continue
            code = int(data[8:11])
            if code < 200:
                continue
            found = _CALL_ID.search(data)
            if found is not None and self.outstanding.pop(found.group(1).strip(), None) is not None:
                self.codes[code] = self.codes.get(code, 0) + 1
        now = time.monotonic()
        if now - self._resend_check >= 0.1:
            self._resend_check = now
            for call_id, entry in list(self.outstanding.items()):
                if entry[3] <= now:
                    del self.outstanding[call_id]
                    self.codes[0] = self.codes.get(0, 0) + 1  # never answered
                elif entry[1] <= now:
                    self.sock.sendto(entry[0], self.server)
                    entry[2] = min(4.0, entry[2] * 2)
                    entry[1] = now + entry[2]

    def wait(self, timeout: float) -> bool:
        """Until every request sent has its final answer (False on timeout)."""
        deadline = time.monotonic() + timeout
        while self.outstanding and time.monotonic() < deadline:
            time.sleep(0.002)
            self.poll()
        return not self.outstanding

    def request(self, method: str, ruri: str, sender: str, body: str = "", extra: str = "") -> int:
        """One request, awaited; its final code (0 on timeout)."""
        before = dict(self.codes)
        self.send(method, ruri, sender, body, extra)
        if not self.wait(10):
            return 0
        return next(code for code, count in self.codes.items() if count != before.get(code, 0))


def _contact(user: str, *ports: int) -> str:
    listed = ", ".join(f"<sip:{user}@{DOMAIN}:{port}>" for port in ports)
    return f"Contact: {listed}\r\nExpires: 3600\r\n"


@dataclass
class Result:
    dead: bool
    rate: float
    sent: int
    answered: int
    deliveries: int
    expected: int
    p50_ms: float
    p99_ms: float
    achieved: float
    lag_s: float
    cpu_percent: float

    @property
    def passed(self) -> bool:
        return self.deliveries == self.expected and self.answered == self.sent and \
            self.achieved >= 0.9 * self.rate and self.lag_s <= 1.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Rig:
    """One server (fresh per :meth:`start`), the member process and the client."""

    def __init__(self, workdir: Path, window: int) -> None:
        self.workdir = workdir
        self.window = window
        self.member_port = procs.free_port()
        self.members = Members(self.member_port)
        self.server: ImcServer | None = None
        self.dead_socks: list[socket.socket] = []

    def start(self, dead: bool) -> Client:
        port = procs.free_port(avoid=[self.member_port])
        os.environ["IMC_DELIVERY_WINDOW"] = str(self.window)  # no --flag for it; the child inherits it
        self.http = procs.free_port(avoid=[self.member_port, port])
        self.server = ImcServer(self.workdir, port, extra_args=("--rpc-listen", f"127.0.0.1:{self.http}"))
        self.server.start()
        client = Client(port)
        ports = [self.member_port]
        for user in LIVE:
            assert client.request("REGISTER", user, user, extra=_contact(user, *ports)) == 200
        assert client.request("MESSAGE", "room", LIVE[0], "#create") == 200
        for user in LIVE[1:]:
            assert client.request("MESSAGE", "room", user, "#join") == 200
        if dead:
            for sock in self.dead_socks:
                sock.close()
            self.dead_socks = []
            for _ in range(2):  # bound, never read: datagrams swallowed, no ICMP
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.bind((DOMAIN, 0))
                self.dead_socks.append(sock)
            dead_ports = [s.getsockname()[1] for s in self.dead_socks]
            assert client.request("REGISTER", "talker", "talker", extra=_contact("talker", *ports)) == 200
            assert client.request("REGISTER", "dead", "dead", extra=_contact("dead", *dead_ports)) == 200
            assert client.request("MESSAGE", "deadroom", "talker", "#create") == 200
            assert client.request("MESSAGE", "deadroom", "dead", "#join") == 200
        time.sleep(0.5)
        self.members.collect()  # forget the setup's notices
        return client

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.members.stop()
        for sock in self.dead_socks:
            sock.close()

    def load(self, client: Client, rate: float, duration: float, dead: bool) -> Result:
        """Chat at ``rate`` for ``duration`` s (and 200/s to the dead member's room)."""
        assert self.server is not None
        client.codes.clear()
        pids = [self.server.pid]
        cpu0, wall0 = procs.cpu_seconds(pids), time.monotonic()
        t0 = time.monotonic()
        chats = round(rate * duration)
        talks = round(DEAD_RATE * duration) if dead else 0
        schedule = sorted([(i / rate, 0) for i in range(chats)] + [(i / DEAD_RATE, 1) for i in range(talks)])
        sent = 0
        for at, which in schedule:
            delay = t0 + at - time.monotonic()
            if delay > 0.0005:
                time.sleep(delay)
            if which == 0:
                client.send("MESSAGE", "room", LIVE[0], f"lat:{time.monotonic_ns()}: hello room")
                sent += 1
            else:
                client.send("MESSAGE", "deadroom", "talker", "hello, anybody there?")
            client.poll()
        last_sent = time.monotonic()
        client.wait(35)
        achieved = sent / max(1e-9, last_sent - t0)
        expected = chats * (len(LIVE) - 1)
        # deliveries may trail the last send by at most 1 s: collect after at most 1 s more
        latencies: list[float] = []
        deadline = last_sent + 6.0
        while time.monotonic() < deadline:
            time.sleep(0.25)
            got, _ = self.members.collect()
            latencies.extend(got)
            if len(latencies) >= expected:
                break
        lag = (time.monotonic() - last_sent) if len(latencies) >= expected else float("inf")
        cpu = (procs.cpu_seconds(pids) - cpu0) / max(1e-9, time.monotonic() - wall0) * 100
        self.metrics = metrics(self.http)
        answered = sum(client.codes.values()) - client.codes.get(0, 0)
        ok_answers = client.codes.get(202, 0) + client.codes.get(200, 0)
        client.codes.clear()
        return Result(dead, rate, chats + talks, min(ok_answers, answered), len(latencies), expected,
                      _percentile(latencies, 0.5), _percentile(latencies, 0.99), achieved,
                      max(0.0, lag - 0.25), cpu)  # fmt: skip


def calibrate(rig: Rig, start: float, duration: float) -> float:
    """The highest rate (chat MESSAGEs/s) whose short trial passes, to about 10 %."""
    lo, hi, rate = 0.0, None, start
    for _ in range(8):
        client = rig.start(dead=False)
        result = rig.load(client, rate, duration, dead=False)
        rig.stop()
        log(f"  calibrate {rate:7.0f}/s: {'pass' if result.passed else 'FAIL'} "
            f"{result.deliveries}/{result.expected} deliveries, achieved {result.achieved:.0f}/s, "
            f"p99 {result.p99_ms:.1f} ms, cpu {result.cpu_percent:.0f}%")  # fmt: skip
        if result.passed:
            lo = rate
            rate = rate * 1.5 if hi is None else (lo * hi) ** 0.5
        else:
            hi = rate
            rate = rate / 2 if not lo else (lo * hi) ** 0.5
        if lo and hi and hi / lo < 1.1:
            break
    return lo


# ------------------------------------------------------------------------- fan-out cost
#: bench.micro's pace per room size (chat MESSAGEs/s): below what one member's lane delivers
#: at delivery_window 1 in one process (unpaced, the sender outruns it, the lane overflows
#: into the store and drops past pending_max, and the run never gets all its deliveries).
MICRO_RATE = {2: 1500.0, 10: 500.0}


def micro_cost(
    source: Path, members: int, window: int, messages: int, extra: Sequence[str] = ()
) -> float:
    """One paced ``bench.micro`` fan-out run on ``source`` (``extra``: more of its flags): CPU
    µs per delivery."""
    cmd = [sys.executable, "-m", "bench.micro", "--members", str(members), "--messages", str(messages),
           "--repeat", "1", "--delivery-window", str(window), "--rate", str(MICRO_RATE[members]),
           "--timeout", "120", *extra]  # fmt: skip
    out = subprocess.run(cmd, cwd=source, capture_output=True, text=True, timeout=600, check=False)
    found = re.search(r"([\d.]+) µs/delivery", out.stdout)
    if found is None:
        raise RuntimeError(f"bench.micro on {source} failed:\n{out.stdout}\n{out.stderr[-2000:]}")
    return float(found.group(1))


def export(commit: str, workdir: Path) -> Path:
    """``commit``'s tree in ``workdir``, with this checkout's bench.micro (same client)."""
    target = workdir / f"src-{commit}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    (target / "bench" / "micro.py").write_bytes((REPO / "bench" / "micro.py").read_bytes())
    return target


def cost(baseline: str, workdir: Path, repeat: int, messages: int) -> None:
    old = export(baseline, workdir)
    cases = [(2, 1), (10, 1), (2, 4), (10, 4)]
    figures: dict[tuple[str, int, int], list[float]] = {}
    for round_ in range(repeat):
        for members, window in cases:
            order = [("new", REPO), ("old", old)] if round_ % 2 == 0 else [("old", old), ("new", REPO)]
            for name, source in order:
                us = micro_cost(source, members, window, messages)
                figures.setdefault((name, members, window), []).append(us)
                log(f"  micro {name} N={members} window={window}: {us:.1f} µs/delivery")
    log(f"\nfan-out cost, CPU µs per delivery (bench.micro, medians of {repeat}):")
    log(f"| case | {baseline} | this checkout | change |\n|---|---:|---:|---:|")
    for members, window in cases:
        a = statistics.median(figures[("old", members, window)])
        b = statistics.median(figures[("new", members, window)])
        log(f"| N={members}, delivery_window {window} | {a:.1f} | {b:.1f} | {100 * (b - a) / a:+.0f} % |")


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="trials with and without (default 3 each)")
    parser.add_argument("--duration", type=float, default=40.0,
                        help="seconds of load per trial (default 40: past Timer F's 32 s)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="the room's rate (chat MESSAGEs/s) instead of half the calibrated maximum")
    parser.add_argument("--calibrate-from", dest="start", type=float, default=400.0)
    parser.add_argument("--window", type=int, default=1, help="delivery_window of the server (default 1)")
    parser.add_argument("--cost", action="store_true", help="also the fan-out cost against --baseline")
    parser.add_argument("--no-isolation", dest="isolation", action="store_false")
    parser.add_argument("--baseline", default="f368b2a")
    parser.add_argument("--cost-repeat", type=int, default=3)
    parser.add_argument("--cost-messages", type=int, default=2000)
    args = parser.parse_args(argv)
    procs.install_cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="imc-isolation-"))
    log(f"isolation: work directory {workdir}; {os.cpu_count()} CPUs")
    try:
        if args.isolation:
            isolation(args, workdir)
        if args.cost:
            cost(args.baseline, workdir, args.cost_repeat, args.cost_messages)
    finally:
        procs.stop_all()
    return 0


def isolation(args: argparse.Namespace, workdir: Path) -> None:
    rig = Rig(workdir, args.window)
    try:
        rate = args.rate
        if not rate:
            top = calibrate(rig, args.start, duration=5.0)
            if not top:
                log("isolation: no calibration rate passed")
                return
            rate = top / 2
            log(f"isolation: maximum {top:.0f} chat MESSAGEs/s ({top * 9:.0f} deliveries/s); "
                f"the trials run at {rate:.0f}/s")  # fmt: skip
        results: list[Result] = []
        for index in range(2 * args.trials):
            dead = (index % 2 == 0) == (index // 2 % 2 == 0)  # with, without, without, with, ...
            client = rig.start(dead=dead)
            result = rig.load(client, rate, args.duration, dead=dead)
            rig.stop()
            results.append(result)
            log(f"  {'with' if dead else 'without':7} dead member: {result.deliveries}/{result.expected} "
                f"live deliveries, {result.answered}/{result.sent} answered, p50 {result.p50_ms:.2f} ms "
                f"p99 {result.p99_ms:.2f} ms, achieved {result.achieved:.0f}/s, server cpu "
                f"{result.cpu_percent:.0f}%")  # fmt: skip
            log(f"    server after it: {rig.metrics}")
        with_ = [r for r in results if r.dead]
        without = [r for r in results if not r.dead]

        def med(rows: list[Result], field: str) -> float:
            return statistics.median(getattr(r, field) for r in rows)

        ratio = med(with_, "p99_ms") / med(without, "p99_ms")
        log(f"\nroom at {rate:.0f} chat MESSAGEs/s ({rate * 9:.0f} deliveries/s), {args.duration:g} s per "
            f"trial, medians of {args.trials}:")
        log("| trial | p50 ms | p99 ms | server CPU % | live deliveries |\n|---|---:|---:|---:|---:|")
        for name, rows in (("without the dead member", without), ("with the dead member", with_)):
            log(f"| {name} | {med(rows, 'p50_ms'):.2f} | {med(rows, 'p99_ms'):.2f} | "
                f"{med(rows, 'cpu_percent'):.0f} | {sum(r.deliveries for r in rows)}/"
                f"{sum(r.expected for r in rows)} |")
        log(f"p99 ratio with/without: {ratio:.2f}x (bar: within 2x)")
    finally:
        rig.close()


if __name__ == "__main__":
    sys.exit(main())
