"""A fuzz harness for the parser and the whole request path: ``python -m bench.fuzz``.

``python -m bench.fuzz [--count 1000000] [--seed 0] [--out DIR] [--quiet]``

Hypothesis generates SIP requests from their parts: methods, Request-URIs, the mandatory
headers (sometimes missing, empty, doubled or garbled), Contact/Expires (huge digit strings
too), bodies that are commands with arguments (escapes, long names, the manager, roles) or
chat; then, for some, byte-level damage (splices, deletions, repeated lines, inflated runs,
other line ends). Each input goes where a datagram goes in the server:

1. :func:`imc_actors.sip.parse`; a refused one gets :func:`salvage_response`, as the
   transport answers it;
2. a parsed request (not an ACK) goes to the server's own router, :class:`SipCore` with the
   real :class:`Registrar` and the MESSAGE handler over a real :func:`open_conference` on
   SQLite in a temporary directory (notices are discarded), and the answer is built with
   :func:`build_response` exactly as the transport builds it.

A **crash** is anything the server must never do: an exception other than the documented
:class:`SipParseError` from the parser (or any from ``salvage_response``, the router or the
answer's building), a 5xx answer other than 503 with ``Retry-After`` (backpressure), an answer
that does not fit one UDP datagram (for an input that did), or an ERROR logged while the
input was handled. The
report gives the crashes (each input is written to ``--out`` when given), the outcomes, the
slowest inputs and the process's RSS. Exit status 1 when anything crashed.

Not a test (it is timed and long); ``tests/integration/test_fuzz.py`` runs a short seeded
pass of it. Inputs come from Hypothesis in runs of ``BATCH`` examples, each run seeded from
``--seed`` and its index, so a seed repeats the same inputs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from imc_actors.conference import open_conference
from imc_actors.config import Config
from imc_actors.imc.commands import COMMANDS
from imc_actors.registrar import Registrar
from imc_actors.server import message_handler
from imc_actors.sip import (
    Request,
    Response,
    SipParseError,
    build_response,
    parse,
    salvage_response,
)
from imc_actors.sipcore import SipCore
from imc_actors.transport import Source

# The module, not the function ``imc_actors.sip`` re-exports under the same name.
parse_module = importlib.import_module("imc_actors.sip.parse")

DOMAIN = "fuzz.example"
SOURCE = Source("udp", "127.0.0.1", 5060)
#: Largest datagram an answer may be (IPv4 UDP payload limit).
MAX_DATAGRAM = 65_507
#: Inputs generated (and then fed) at a time; with Hypothesis, inputs per example.
BATCH = 1000
INPUTS_PER_EXAMPLE = 10
#: How many slowest inputs and crashes the report keeps, and how many parse-layer candidates
#: are re-timed at the end (a single timing on a shared machine catches pauses).
KEEP = 5
RETIME = 50
KEEP_CRASHES = 20

T = TypeVar("T")

# --------------------------------------------------------------------------- what to send

_NAMES = [
    "chat", "chat", "Chat", "CHAT", "room1", "room-2", "private", "imc-manager", "IMC-Manager",
    "%63hat", "%43hat", "imc%2Dmanager", "imc%2dmanager", "a%20b", "a%40b", "r%3Bx",
    "caf%C3%A9", "a'b(c)&=+$,", "r" * 53, "r" * 70,
]  # fmt: skip
_BAD_NAMES = ["caf\u00e9", "a;b", "", "%", "%zz", "x" * 300, "a b", "<x>"]
_USERS = [
    "alice", "alice", "bob", "bob", "carol", "Alice", "%61lice", "BOB", "a%20b", "u" * 64,
    "m" * 65, "+4930123", "dave", "%FF",
]  # fmt: skip
_HOSTS = [DOMAIN] * 12 + [DOMAIN.upper(), "other.example", "127.0.0.1", "[::1]", "h" * 70]
_BAD_HOSTS = ["", "-bad", "a..b", "[1:", "h h"]
_WORDS = ["owner", "admin", "member", "private", "OWNER", "boss", "sip:", "@", ";", "<", ">"]
_METHODS = ["MESSAGE"] * 12 + ["REGISTER"] * 4 + ["OPTIONS", "CANCEL", "ACK", "INVITE", "FOO"]
_COMMAND_WORDS = [*COMMANDS, *COMMANDS, "deny", "exit", "list", "JOIN", "Create", "nope", ""]
_EXPIRES = ["0", "30", "60", "600", "3600", "99999", "soon", "", "-1", "9" * 5000, "0" * 50 + "7"]
_VIAS = [
    "SIP/2.0/UDP 127.0.0.1:5060;rport", "SIP/2.0/TCP [::1]:5061;branch=z9hG4bKx",
    "SIP/2.0/UDP host:99999;branch=z9hG4bKp", "SIP/2.0/UDP ;branch=x", "garbage", "",
    "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
]  # fmt: skip
_TOKENS = [
    b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@", b"%",
    b"=", b"\x00", b"\xff", b"\xc3\xa9", b"sip:", b"SIP/2.0", b"tag=", b"branch=", b"z9hG4bK",
    b"l: ", b"v: ", b"i: ", b"m: ", b"-1", b"99999999999", b"\r\n\r\n", b"#",
]  # fmt: skip
_COMPACT = {
    "Via": "v",
    "From": "f",
    "To": "t",
    "Call-ID": "i",
    "Contact": "m",
    "Content-Length": "l",
}


class Chooser(Protocol):
    """Where the generator's choices come from: a seeded :class:`random.Random`
    (:class:`RandomChooser`, fast) or Hypothesis (:class:`HypothesisChooser`)."""

    def pick(self, options: Sequence[T]) -> T: ...
    def below(self, n: int) -> int: ...
    def between(self, low: int, high: int) -> int: ...
    def blob(self, max_size: int) -> bytes: ...
    def text(self, alphabet: str, max_size: int) -> str: ...


class RandomChooser:
    """Choices from ``random.Random(seed)``: the same seed makes the same input."""

    def __init__(self, seed_value: int) -> None:
        self._random = random.Random(seed_value)

    def pick(self, options: Sequence[T]) -> T:
        return options[self._random.randrange(len(options))]

    def below(self, n: int) -> int:
        return self._random.randrange(n)

    def between(self, low: int, high: int) -> int:
        return self._random.randint(low, high)

    def blob(self, max_size: int) -> bytes:
        return self._random.randbytes(self._random.randint(0, max_size))

    def text(self, alphabet: str, max_size: int) -> str:
        return "".join(self._random.choices(alphabet, k=self._random.randint(0, max_size)))


class HypothesisChooser:
    """Choices drawn by Hypothesis (inside a ``@st.composite`` strategy)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def pick(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def below(self, n: int) -> int:
        return self._draw(st.integers(0, n - 1))

    def between(self, low: int, high: int) -> int:
        return self._draw(st.integers(low, high))

    def blob(self, max_size: int) -> bytes:
        return self._draw(st.binary(max_size=max_size))

    def text(self, alphabet: str, max_size: int) -> str:
        return self._draw(st.text(alphabet, max_size=max_size))


def _name(c: Chooser) -> str:
    roll = c.below(40)
    if roll == 0:
        return c.pick(_BAD_NAMES)
    if roll == 1:
        return c.text("abcXYZ019-_.%", 12)
    return c.pick(_NAMES)


def _user(c: Chooser) -> str:
    return c.text("abxyz01._-%", 10) if c.below(40) == 0 else c.pick(_USERS)


def _uri(c: Chooser, user: str) -> str:
    """A SIP URI, mostly well formed: scheme, user, host, sometimes a port and parameters."""
    scheme = "sip" if c.below(30) else c.pick(["sips", "SIP", "tel", "http"])
    host = c.pick(_HOSTS) if c.below(40) else c.pick(_BAD_HOSTS)
    text = f"{scheme}:{user}@{host}"
    if c.below(20) == 0:
        text += f":{c.pick(['5060', '0', '99999', 'x'])}"
    if c.below(20) == 0:
        text += c.pick([";transport=tcp", ";lr", ";a=b;c", "?x=y", ";"])
    return text


def _body(c: Chooser) -> bytes:
    """A command line with arguments (mostly), or chat, or anything."""
    kind = c.below(10)
    if kind <= 6:
        args: list[str] = []
        for _ in range(c.between(0, 4)):
            roll = c.below(4)
            args.append(
                _name(c) if roll == 0 else _user(c) if roll == 1
                else c.pick(_WORDS) if roll == 2 else _uri(c, _user(c))
            )  # fmt: skip
        sep = " " if c.below(4) else c.pick(["\t", "  "])
        line = sep.join([c.pick(_COMMAND_WORDS), *args])
        start = "#" if c.below(12) else c.pick(["!", " #"])
        return (start + line + ("" if c.below(8) else c.pick(["\r\nmore", "\x00x"]))).encode()
    if kind <= 8:
        return c.text("hello wrld,.!\u00e9\u4e16 ", 40).encode()
    if c.below(3):
        return c.blob(64)
    return b"x" * c.pick([32 * 1024, 32 * 1024 + 1, 40_000])


def make_request(c: Chooser) -> bytes:
    """One input: a whole request, well formed or damaged at the header or the byte level."""
    method = c.pick(_METHODS)
    ruri = f"sip:{c.pick(_HOSTS)}" if method == "REGISTER" else _uri(c, _name(c))
    sender = _uri(c, _user(c))
    call_id = (
        c.text("abcdef0123456789", 16) + "@fuzz" if c.below(40) else c.pick(["", "a b", "x" * 3000])
    )
    cseq = str(c.between(1, 1000)) if c.below(40) else c.pick(["0", "2147483648", "x", "9" * 5000])
    cseq_method = method if c.below(40) else c.pick(_METHODS)
    body = _body(c) if method == "MESSAGE" else b""
    via = f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{c.text('0123456789abcdef', 12)};rport"
    lines: list[tuple[str, str]] = [
        ("Via", via if c.below(40) else c.pick(_VIAS)),
        ("Max-Forwards", "70" if c.below(40) else c.pick(["0", "256", "x", ""])),
        ("From", f"<{sender}>" + (";tag=t" + c.text("abc123", 6) if c.below(40) else c.pick(["", ";tag="]))),
        ("To", f"<{_uri(c, _user(c)) if method == 'REGISTER' else ruri}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {cseq_method}"),
    ]  # fmt: skip
    if method == "REGISTER":
        for _ in range(c.between(0, 3)):
            roll = c.below(6)
            if roll == 0:
                lines.append(
                    ("Contact", c.pick(["*", "sip:x@127.0.0.1", "<sip:alice@127.0.0.1:5062>"]))
                )
            elif roll == 1:
                lines.append(("Contact", f"<sip:bob@127.0.0.1:5063>;expires={c.pick(_EXPIRES)}"))
            elif roll == 2:
                contact = f"sip:{'c' * c.between(100, 3000)}@127.0.0.1"
                lines.append(
                    ("Contact", ", ".join([f"<{contact}{i}>" for i in range(c.between(1, 20))]))
                )
            else:
                lines.append(("Contact", f"<{_uri(c, _user(c))}>"))
        if c.below(2):
            lines.append(("Expires", c.pick(_EXPIRES)))
    if c.below(10) == 0:
        lines.append(("Require", c.pick(["100rel", "", "a, b"])))
    if body:
        lines.append(("Content-Type", "text/plain" if c.below(10) else c.pick(["text/x-chat", ""])))
    length = "ok" if c.below(30) else c.pick(["none", "more", "less", "junk"])
    if length != "none":
        sizes = {"ok": len(body), "more": len(body) + 5, "less": max(0, len(body) - 1)}
        lines.append(("Content-Length", str(sizes.get(length, "1x"))))
    if c.below(8) == 0:  # header-level damage: drop, empty or double a line; reorder; compact
        for _ in range(c.between(1, 2)):
            i = c.below(len(lines))
            action = c.below(3)
            if action == 0:
                del lines[i]
            elif action == 1:
                lines[i] = (lines[i][0], "")
            else:
                lines.insert(i, lines[i])
        if c.below(5) == 0:
            lines = [lines[i] for i in sorted(range(len(lines)), key=lambda _: c.below(1000))]
    if c.below(6) == 0:
        lines = [(_COMPACT.get(name, name), value) for name, value in lines]
    end = "\r\n" if c.below(40) else c.pick(["\n", "\r"])
    head = end.join([f"{method} {ruri} SIP/2.0", *(f"{n}: {v}" for n, v in lines)])
    data = head.encode() + (end + end).encode() + body
    return damage(c, data) if c.below(10) == 0 else data


def damage(c: Chooser, data: bytes) -> bytes:
    """``data`` with a few byte-level edits: splice, delete, replace, repeat lines, inflate."""
    out = bytearray(data)
    for _ in range(c.between(1, 3)):
        kind = c.below(5)
        at = c.between(0, len(out))
        if kind == 0:
            out[at:at] = c.pick(_TOKENS) if c.below(2) else c.blob(6)
        elif kind == 1:
            del out[at : at + c.between(1, 16)]
        elif kind == 2:
            out[at : at + 1] = c.blob(3) or b"\x00"
        elif kind == 3:
            lines = bytes(out).split(b"\n")
            i = c.below(len(lines))
            lines[i:i] = [lines[i]] * c.between(1, 120)
            out = bytearray(b"\n".join(lines))
        else:
            chunk = bytes(out[at : at + c.between(1, 4)]) or b"a"
            out[at:at] = chunk * c.between(100, 3000)
    return bytes(out[: 70 * 1024])


def random_inputs(seed_value: int, first: int, count: int) -> Iterator[tuple[int, bytes]]:
    """Inputs ``first`` .. ``first + count - 1`` of ``seed_value``: ``(index, bytes)``. Each has
    its own generator, so any one can be made again alone (``--replay``)."""
    for index in range(first, first + count):
        yield index, make_request(RandomChooser(seed_value * 1_000_000_007 + index))


@st.composite
def hypothesis_requests(draw: st.DrawFn) -> bytes:
    """The same inputs as a Hypothesis strategy."""
    return make_request(HypothesisChooser(draw))


def hypothesis_inputs(seed_value: int, first: int, count: int) -> Iterator[tuple[int, bytes]]:
    """``count`` inputs from Hypothesis runs seeded from ``seed_value`` and ``first``."""
    out: list[bytes] = []

    @seed(seed_value * 1_000_003 + first)
    @settings(
        max_examples=max(1, count // INPUTS_PER_EXAMPLE),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(hypothesis_requests(), min_size=INPUTS_PER_EXAMPLE, max_size=INPUTS_PER_EXAMPLE)
    )
    def collect(batch: list[bytes]) -> None:
        out.extend(batch)

    collect()
    return enumerate(out, first)


# --------------------------------------------------------------------------- what came back


@dataclass
class Crash:
    """One input the server mishandled: ``kind`` (where), ``detail`` (what), the ``data``, and
    its ``index`` in the run (with the random engine, ``--seed S --replay INDEX`` makes it
    again)."""

    kind: str
    detail: str
    data: bytes
    index: int


@dataclass
class Report:
    """What a run found and measured (see :func:`fuzz`)."""

    engine: str = "random"
    seed: int = 0
    inputs: int = 0
    seconds: float = 0.0
    crashes: int = 0
    crash_kinds: Counter[str] = field(default_factory=Counter)
    examples: list[Crash] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    answers: Counter[int] = field(default_factory=Counter)
    slowest: list[tuple[float, str, int, bytes]] = field(default_factory=list)
    slowest_parse: list[tuple[float, str, int, bytes]] = field(default_factory=list)
    handle_seconds: float = 0.0
    rss_start: int = 0
    rss_max: int = 0
    rss_end: int = 0
    rss_series: list[tuple[int, int]] = field(default_factory=list)
    rooms: int = 0
    members: int = 0
    bindings: int = 0

    def lines(self) -> Iterator[str]:
        """The report as text (Markdown-friendly)."""
        mib = 1024 * 1024
        rate = self.inputs / self.seconds if self.seconds else 0.0
        yield (
            f"inputs: {self.inputs:,} ({self.engine} engine, seed {self.seed}) in "
            f"{self.seconds:.0f} s ({rate:,.0f}/s, generation included)"
        )
        kinds = ", ".join(f"{k} {n}" for k, n in self.crash_kinds.most_common())
        yield f"crashes: {self.crashes}" + (f" ({kinds})" if kinds else "")
        for crash in self.examples:
            yield f"  {crash.kind}: {crash.detail} (input {crash.index}): {crash.data[:160]!r}"
        yield "outcomes: " + ", ".join(f"{k} {n:,}" for k, n in self.outcomes.most_common())
        yield "parse errors: " + ", ".join(f"{k} {n:,}" for k, n in self.reasons.most_common(12))
        yield "answers: " + ", ".join(f"{k} {n:,}" for k, n in sorted(self.answers.items()))
        mean = self.handle_seconds / self.inputs * 1e6 if self.inputs else 0.0
        yield f"handling (parse + route + answer), mean: {mean:.0f} µs per input"
        for title, slowest in (
            ("slowest, whole path (includes waiting for the room and its commit)", self.slowest),
            ("slowest, parse + salvage only (re-timed: best of 3, cold)", self.slowest_parse),
        ):
            yield f"{title}:"
            for took, what, index, data in slowest:
                yield (
                    f"  {took * 1000:.2f} ms ({what}, input {index}, {len(data):,} bytes): "
                    f"{data[:100]!r}"
                )
        yield (
            f"RSS: {self.rss_start / mib:.0f} MiB at start, {self.rss_max / mib:.0f} MiB peak, "
            f"{self.rss_end / mib:.0f} MiB at the end"
        )
        if self.rss_series:
            yield "RSS (MiB) along the run: " + ", ".join(
                f"{n:,}: {value / mib:.0f}" for n, value in self.rss_series
            )
        yield (
            f"state at the end: {self.rooms} rooms, {self.members} members, "
            f"{self.bindings} registrar bindings"
        )


def rss() -> int:
    """This process's resident set size, in bytes (Linux ``/proc``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _Errors(logging.Handler):
    """Collects ERROR records (an ERROR while an input is handled is a crash)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _keep(
    slowest: list[tuple[float, str, int, bytes]],
    took: float,
    what: str,
    index: int,
    data: bytes,
    keep: int = KEEP,
) -> None:
    """Keep the ``keep`` slowest ``(seconds, what, index, data)``, slowest first."""
    if len(slowest) < keep or took > slowest[-1][0]:
        slowest.append((took, what, index, data))
        slowest.sort(key=lambda item: -item[0])
        del slowest[keep:]


def _parse_cost(data: bytes) -> float:
    """Best of three cold timings of what the transport does with ``data`` before routing:
    parse, and salvage_response when refused (memoised values forgotten each time)."""
    best = float("inf")
    for _ in range(3):
        parse_module.clear_caches()
        start = time.perf_counter()
        try:
            parse(data)
        except SipParseError as exc:
            salvage_response(data, exc.code, exc.reason)
        best = min(best, time.perf_counter() - start)
    return best


class _Harness:
    """Feeds inputs to one server's request path and fills in the :class:`Report`."""

    def __init__(self, core: SipCore, report: Report, out: Path | None) -> None:
        self.core = core
        self.report = report
        self.out = out
        self.errors = _Errors()

    def crash(self, kind: str, detail: str, data: bytes, index: int) -> None:
        report = self.report
        report.crashes += 1
        report.crash_kinds[kind] += 1
        if len(report.examples) < KEEP_CRASHES:
            report.examples.append(Crash(kind, detail, data, index))
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            name = f"crash-{report.engine}-{report.seed}-{index}-{kind.replace(' ', '_')}.sip"
            (self.out / name).write_bytes(data)

    async def feed(self, index: int, data: bytes) -> None:
        """Handle one input as the server would; record its outcome, time and any crash.
        Checkpoints when the input reaches the router."""
        report = self.report
        what = "parse"
        message: Request | Response | None = None
        start = time.perf_counter()
        try:
            message = parse(data)
        except SipParseError as exc:
            report.reasons[exc.reason] += 1
            what = "salvage"
            try:
                answer = salvage_response(data, exc.code, exc.reason)
            except Exception as error:  # any exception is the finding
                self.crash("salvage", repr(error), data, index)
                answer = None
            report.outcomes["refused, answered" if answer is not None else "refused, dropped"] += 1
            if answer is not None:
                report.answers[exc.code] += 1
                if len(answer) > MAX_DATAGRAM and len(data) <= MAX_DATAGRAM:
                    self.crash("salvage", f"answer of {len(answer)} bytes", data, index)
        except Exception as error:
            self.crash("parse", repr(error), data, index)
        _keep(report.slowest_parse, time.perf_counter() - start, what, index, data, RETIME)
        if isinstance(message, Response):
            report.outcomes["response"] += 1
        elif isinstance(message, Request):
            if message.method == "ACK":
                report.outcomes["ACK"] += 1
            else:
                what = message.method
                report.outcomes[f"{message.method} routed"] += 1
                await self._answer(message, data, index)
        took = time.perf_counter() - start
        report.handle_seconds += took
        _keep(report.slowest, took, what, index, data)
        if self.errors.records:
            self.crash("error log", self.errors.records[0].getMessage()[:200], data, index)
            self.errors.records.clear()

    async def _answer(self, request: Request, data: bytes, index: int) -> None:
        try:
            reply = await self.core(request, SOURCE)
        except Exception as error:
            self.crash("router", repr(error), data, index)
            return
        self.report.answers[reply.code] += 1
        retry = any(name == "Retry-After" for name, _ in reply.headers)
        if reply.code >= 500 and not (reply.code == 503 and retry):
            self.crash("5xx", f"{reply.code} {reply.reason}", data, index)
        try:
            wire = build_response(
                request, reply.code, reply.reason, headers=reply.headers, body=reply.body,
                content_type=reply.content_type,
            )  # fmt: skip
        except Exception as error:
            self.crash("answer", repr(error), data, index)
            return
        finally:
            self._sent(reply, data, index)
        if len(wire) > MAX_DATAGRAM and len(data) <= MAX_DATAGRAM:
            self.crash("answer", f"{reply.code} of {len(wire)} bytes", data, index)

    def _sent(self, reply: object, data: bytes, index: int) -> None:
        """What the transport does once the answer is on the wire: run the reply's ``after``
        hook, which releases the notices the request caused (answer first). Without it every
        notice would wait for delivery's stale-hold sweep."""
        after = getattr(reply, "after", None)
        if after is not None:
            try:
                after()
            except Exception as error:
                self.crash("after", repr(error), data, index)


Engine = Callable[[int, int, int], Iterator[tuple[int, bytes]]]
ENGINES: dict[str, Engine] = {"random": random_inputs, "hypothesis": hypothesis_inputs}


async def fuzz(
    count: int,
    *,
    seed_value: int = 0,
    engine: str = "random",
    out: Path | None = None,
    progress: bool = False,
) -> Report:
    """Feed ``count`` generated inputs through the parser and a fresh server's request path
    (see the module docstring) and return the :class:`Report`. ``engine`` is ``random`` (a
    seeded generator per input: fast, each input replayable) or ``hypothesis`` (the same
    structure drawn by Hypothesis). Crashing inputs are written to ``out`` when given.
    Checkpoints."""
    inputs = ENGINES[engine]
    report = Report(engine=engine, seed=seed_value, rss_start=rss())
    report.rss_max = report.rss_start
    with tempfile.TemporaryDirectory(prefix="imc-fuzz-") as tmp:
        config = Config(db_url=f"sqlite:///{tmp}/fuzz.db", domains=[DOMAIN])
        registrar = Registrar(
            config.served_domains,
            min_expires=config.min_expires,
            max_expires=config.max_expires,
            default_expires=config.default_expires,
        )
        async with open_conference(config) as conference:
            core = SipCore(config, registrar, message_handler(conference, config))
            harness = _Harness(core, report, out)
            root = logging.getLogger()
            root.addHandler(harness.errors)
            started = time.perf_counter()
            step = max(count // 10, 1)
            next_sample = step
            try:
                while report.inputs < count:
                    fed = report.inputs
                    for index, data in inputs(seed_value, fed, min(BATCH, count - fed)):
                        await harness.feed(index, data)
                        report.inputs += 1
                    if report.inputs == fed:
                        break  # the engine has nothing more to give
                    await trio.sleep(0)  # let the store and delivery catch up
                    if report.inputs >= next_sample:
                        now = rss()
                        report.rss_max = max(report.rss_max, now)
                        report.rss_series.append((report.inputs, now))
                        next_sample += step
                        if progress:
                            print(
                                f"  {report.inputs:,} inputs, {time.perf_counter() - started:.0f} s, "
                                f"{report.crashes} crashes, RSS {now / 2**20:.0f} MiB",
                                flush=True,
                            )
                report.seconds = time.perf_counter() - started
                retimed = [
                    (_parse_cost(data), what, i, data) for _, what, i, data in report.slowest_parse
                ]
                report.slowest_parse = sorted(retimed, key=lambda item: -item[0])[:KEEP]
                await conference.flush_notices()
            finally:
                root.removeHandler(harness.errors)
            rooms = conference.rooms()
            report.rooms = len(rooms)
            report.members = sum(len(room.members) for room in rooms)
            report.bindings = sum(len(v) for v in registrar.bindings(trio.current_time()).values())
    report.rss_end = rss()
    report.rss_max = max(report.rss_max, report.rss_end)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz", description=(__doc__ or "").split("\n", 1)[0]
    )
    parser.add_argument(
        "--count", type=int, default=100_000, help="inputs to feed (default 100000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="random",
                        help="random (default: fast, replayable) or hypothesis")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write each crashing input to a file here")
    parser.add_argument("--replay", type=int, metavar="INDEX",
                        help="print input INDEX of --seed (random engine) and feed only it")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # ERRORs are counted as crashes, not printed
    if args.replay is not None:
        ((_, data),) = random_inputs(args.seed, args.replay, 1)
        print(repr(data))
        report = trio.run(_replay, data)
    else:
        print(
            f"fuzzing {args.count:,} inputs ({args.engine}, seed {args.seed}) on "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
            flush=True,
        )
        report = trio.run(
            lambda: fuzz(args.count, seed_value=args.seed, engine=args.engine, out=args.out,
                         progress=not args.quiet)
        )  # fmt: skip
    for line in report.lines():
        print(line)
    return 1 if report.crashes else 0


async def _replay(data: bytes) -> Report:
    """A one-input run of ``data`` (for ``--replay``)."""
    ENGINES["replay"] = lambda seed_value, first, count: iter([(first, data)])
    try:
        return await fuzz(1, engine="replay")
    finally:
        del ENGINES["replay"]


if __name__ == "__main__":
    sys.exit(main())
