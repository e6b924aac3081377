"""Fuzzing guard + parse: whatever arrives, only SipParseError escapes, and fast.

Every call is timed with ``time.perf_counter`` and must finish within ``LIMIT`` (10 ms). The
parser memoises start lines and addresses, so the caches are cleared before each timed call:
the time measured is the cold cost. A call over the limit is re-run (caches cleared again)
up to twice and the best time counts, so a garbage-collection pause or a busy CI machine
does not fail the test, while algorithmic blow-up (which is slow every time) does.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imc_actors.sip import (
    Request,
    Response,
    SipParseError,
    build_response,
    parse,
    parse_stream,
    salvage_response,
)

parse_module = importlib.import_module("imc_actors.sip.parse")

LIMIT = 0.010  # seconds, per call

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def timed(function: Callable[..., Any], *args: Any, reset: Callable[[], None] | None = None) -> Any:
    """Call ``function(*args)`` cold; assert it took under LIMIT; return its result or the
    SipParseError it raised. Any other exception propagates and fails the test. ``reset``
    restores mutable arguments before each attempt."""
    best = float("inf")
    result: Any = None
    for _ in range(3):
        parse_module.clear_caches()
        if reset is not None:
            reset()
        start = time.perf_counter()
        try:
            result = function(*args)
        except SipParseError as error:
            result = error
        best = min(best, time.perf_counter() - start)
        if best <= LIMIT:
            break
    assert best <= LIMIT, f"{function.__name__} took {best * 1000:.1f} ms on {args!r:.200}"
    return result


def check_parse(data: bytes) -> Request | Response | SipParseError:
    result = timed(parse, data)
    assert isinstance(result, Request | Response | SipParseError)
    if isinstance(result, SipParseError):
        assert result.reason and "\r" not in result.reason and "\n" not in result.reason
    salvaged = timed(salvage_response, data, 400, "Bad Request")
    assert salvaged is None or salvaged.startswith(b"SIP/2.0 400 Bad Request\r\n")
    return result


# --- seeds -----------------------------------------------------------------------------

SEEDS = [
    b"MESSAGE sip:room@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
    b"To: <sip:room@example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 MESSAGE\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello",
    b"REGISTER sip:example.com SIP/2.0\n"
    b"v: SIP/2.0/TCP [2001:db8::1]:5060 ; branch = z9hG4bKr\n"
    b"f: sip:bob@example.com;tag=x\n"
    b"t: sip:bob@example.com\n"
    b"i: reg-1\n"
    b"CSeq:\n 2\n REGISTER\n"
    b"m: <sip:bob@192.0.2.4>;expires=60\n"
    b"l: 0\n"
    b"\n",
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP h;branch=z9hG4bKx, SIP/2.0/UDP g;branch=z9hG4bKy\r\n"
    b"From: <sip:a@b>;tag=1\r\n"
    b"To: <sip:c@d>;tag=2\r\n"
    b"Call-ID: x\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n",
]

SIP_BYTES = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"@",
     b"%", b"=", b"/", b"[", b"]", b"\x00", b"\xff", b"\xc3\xa9", b"sip:", b"SIP/2.0",
     b"tag=", b"branch=", b"z9hG4bK", b"l: ", b"v: ", b"-1", b"99999999999", b"\r\n\r\n"]
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with a few random edits: splice, delete, duplicate, or inflate."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "lines", "inflate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            piece = draw(st.one_of(SIP_BYTES, st.binary(max_size=8)))
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "replace":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=3))
        elif kind == "lines":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines[i:i] = [lines[i]] * draw(st.integers(1, 150))
            data = bytearray(b"\n".join(lines))
        else:  # repeat a short chunk into a long run: hits the line and field limits
            chunk = bytes(data[at : at + draw(st.integers(1, 4))]) or b"a"
            data[at:at] = chunk * draw(st.integers(100, 4000))
    return bytes(data[: 70 * 1024])


# --- properties ------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    result = check_parse(data)
    if not data.strip():
        assert isinstance(result, SipParseError)


@FUZZ
@given(st.lists(SIP_BYTES | st.binary(max_size=4), max_size=200).map(b"".join))
def test_sip_flavoured_bytes(data: bytes) -> None:
    check_parse(data)


@FUZZ
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    result = check_parse(data)
    if isinstance(result, Request):
        # Whatever parsed can be answered, and the answer parses with the same identifiers.
        answer = parse(build_response(result, 400, to_tag="t"))
        assert isinstance(answer, Response)
        assert (answer.call_id, answer.cseq, answer.cseq_method) == (
            result.call_id,
            result.cseq,
            result.cseq_method,
        )


def timed_stream(buffer: bytearray) -> list[bytes]:
    """parse_stream(buffer), timed; the buffer is restored before a re-run."""
    snapshot = bytes(buffer)

    def reset() -> None:
        buffer[:] = snapshot

    result = timed(parse_stream, buffer, reset=reset)
    if isinstance(result, SipParseError):
        raise result
    return result


@FUZZ
@given(mutated(), st.lists(st.integers(1, 200), max_size=20))
def test_stream_framing(data: bytes, cuts: list[int]) -> None:
    """Fed in arbitrary pieces, parse_stream only ever raises SipParseError, and its frames
    are the input cut in order, with nothing but CR/LF keep-alives between them."""
    whole = data + data
    buffer = bytearray()
    frames: list[bytes] = []
    rest = whole
    try:
        for size in [*cuts, len(rest)]:
            buffer += rest[:size]
            rest = rest[size:]
            frames.extend(timed_stream(buffer))
    except SipParseError:
        return
    position = 0
    for frame in frames:
        assert frame[:1] not in (b"\r", b"\n")
        index = whole.index(frame, position)
        assert whole[position:index].strip(b"\r\n") == b""
        position = index + len(frame)
    assert whole[position:].lstrip(b"\r\n") == bytes(buffer).lstrip(b"\r\n")


def test_mutation_strategy_reaches_valid_and_invalid() -> None:
    """Guard against a fuzzer that only ever produces garbage (or only valid input)."""
    outcomes: set[str] = set()

    @settings(FUZZ, max_examples=200)
    @given(mutated())
    def collect(data: bytes) -> None:
        try:
            parse(data)
            outcomes.add("ok")
        except SipParseError as error:
            outcomes.add(error.reason)

    collect()
    assert "ok" in outcomes
    assert len(outcomes) >= 8, outcomes


# --- explicit worst cases --------------------------------------------------------------

BASE = SEEDS[0]


def swap(old: bytes, new: bytes) -> bytes:
    assert old in BASE
    return BASE.replace(old, new, 1)


N = 2040  # just under MAX_FIELD: the longest values sipmessage's grammars ever see
WORST = {
    "10,000 headers": swap(b"Max-Forwards: 70\r\n", b"X: a\r\n" * 10_000),
    "10,000 headers, no end": b"MESSAGE sip:a@b SIP/2.0\r\n" + b"X: a\r\n" * 10_000,
    "10,000 bare-LF headers": swap(b"Max-Forwards: 70\r\n", b"X: a\n" * 10_000),
    "64 KiB one line": b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"a" * (64 * 1024 - 40),
    "CRLF flood": b"\r\n" * (32 * 1024),
    "folding flood": swap(b"Max-Forwards: 70\r\n", b"X: a\r\n" + b" a\r\n" * 10_000),
    "hostname labels": swap(b"sip:room@example.com SIP", b"sip:" + b"a." * (N // 2) + b"! SIP"),
    "URI params": swap(b"sip:room@example.com SIP", b"sip:room@x" + b";a" * (N // 2 - 8) + b" SIP"),
    "IPv6 junk": swap(b"sip:room@example.com SIP", b"sip:room@[" + b"1:" * (N // 2 - 8) + b" SIP"),
    "Via params": swap(b";rport", b";a = a" * (N // 6 - 12)),
    "many Vias": swap(b";rport", b",SIP/2.0/UDP a" * 500),
    "quoted display": swap(b'"Alice"', b'"' + b'\\"' * (N // 2 - 40)),
    "token display": swap(b'"Alice" <', b"a " * (N // 2 - 40)),
    "From params": swap(b";tag=1928301774", b";a" * (N // 2 - 40)),
    "all fields at the limit": (
        b"MESSAGE sip:room@x" + b";a" * (N // 2 - 10) + b" SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP a" + b";a" * (N // 2 - 10) + b"\r\n"
        b"From: <sip:a@b>" + b";a" * (N // 2 - 10) + b"\r\n"
        b"To: <sip:a@b>" + b";b" * (N // 2 - 10) + b"\r\n"
        b"Call-ID: x\r\nCSeq: 1 MESSAGE\r\n\r\n"
    ),
    "long CSeq": swap(b"314159 MESSAGE", b"1" * 8000 + b" MESSAGE"),
    # Found by test_stream_framing: a lazy group between two optional blank runs in the
    # Content-Length pattern of parse_stream backtracked cubically on a run of spaces.
    "spaces after l:": swap(b"Content-Length: 5", b"l:" + b" " * 1000 + b"\r" + b" " * 1000 + b"5"),
}


@pytest.mark.parametrize("case", list(WORST))
def test_worst_cases_are_fast(case: str) -> None:
    data = WORST[case]
    check_parse(data)
    try:
        timed_stream(bytearray(data))
    except SipParseError:
        pass


def test_ten_thousand_headers_refused() -> None:
    result = timed(parse, WORST["10,000 headers"])
    assert isinstance(result, SipParseError)
    assert result.reason == "Too many headers"


def test_all_fields_at_the_limit_parse() -> None:
    result = timed(parse, WORST["all fields at the limit"])
    assert isinstance(result, Request)
    assert result.branch is None
