"""The parser's fast paths read exactly what sipmessage's full grammar reads.

``_top_via`` and ``_address`` take a shortcut for the usual shapes (``SIP/2.0/UDP h:p;branch=…``,
``<uri>;tag=…``); for every input, the shortcut must give the same result as the slow path, or
the same refusal. Differential tests over generated inputs, plus the known tricky cases.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sipmessage import Via

from imc_actors.sip._guard import SipParseError
from imc_actors.sip.parse import _address, _address_slow, _top_via


def slow_via(value: str) -> tuple[str, int | None, str | None] | str:
    top = value if '"' in value else value.partition(",")[0]
    try:
        via = Via.parse_many(top)[0]
    except (ValueError, IndexError):
        return "error"
    if via.port is not None and not 0 < via.port <= 65535:  # no answer could go there
        return "error"
    return via.host, via.port, via.parameters.get("branch")


def fast_via(value: str) -> tuple[str, int | None, str | None] | str:
    try:
        return _top_via(value)
    except SipParseError:
        return "error"


def slow_address(value: str) -> tuple[str, str | None] | str:
    try:
        return _address_slow(value, "From")
    except SipParseError:
        return "error"


def fast_address(value: str) -> tuple[str, str | None] | str:
    try:
        return _address(value, "From")
    except SipParseError:
        return "error"


VIAS = [
    "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK776asdhds;rport",
    "SIP/2.0/UDP 127.0.0.1:5060 ;branch=z9hG4bK776asdhds",
    "SIP/2.0/UDP 127.0.0.1:5060; branch=z9hG4bK776asdhds",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=",
    "SIP/2.0/UDP 127.0.0.1:5060;;branch=x",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=a=b",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=%41",
    "SIP/2.0/UDP 127.0.0.1:5060;=x",
    "SIP/2.0/UDP 127.0.0.1:5060;BRANCH=x;branch=y",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=x;branch=y",
    "SIP/2.0/UDP [::1]:5060;branch=z9hG4bKx",
    "SIP/2.0/UDP host.example.com;branch=z9hG4bKx, SIP/2.0/UDP other;branch=y",
    "SIP/2.0/TCP -bad-.example;branch=x",
    "SIP/2.0/UDP 127.0.0.1:5060;received=\"1,2\";branch=x",
    "SIP/2.0/UDP 999.999.999.999;branch=x",
    "SIP/2.0/UDP 127.0.0.1:abc;branch=x",
    "SIP/2.0/UDP;branch=x",
    "SIP/2.0/UDP 127.0.0.1:5060\t;branch=x",
]

ADDRESSES = [
    "<sip:alice@example.com>;tag=1928301774",
    "<sip:alice@example.com>;tag=",
    "<sip:alice@example.com>;tag",
    "<sip:alice@example.com>;TAG=abc",
    "<sip:alice@example.com>;tag=a;tag=b",
    "<sip:alice@example.com>",
    "<sip:alice@example.com>;",
    "<sip:alice@example.com>x",
    "<sip:alice@example.com;transport=tcp>;tag=1",
    "<sip:alice@example.com>;tag=%41",
    "<>;tag=1",
    "<not a uri>;tag=1",
    "<http://example.com>;tag=1",
    "<sip:alice@example.com>>;tag=1",
    "\"Alice\" <sip:alice@example.com>;tag=1",
    "sip:alice@example.com;tag=1",
    "<sip:alice@example.com> ;tag=1",
]


@pytest.mark.parametrize("value", VIAS)
def test_via_cases(value: str) -> None:
    assert fast_via(value) == slow_via(value)


@pytest.mark.parametrize("value", ADDRESSES)
def test_address_cases(value: str) -> None:
    assert fast_address(value) == slow_address(value)


TOKENISH = st.text(alphabet="abcXYZ019-.!*_+`'~%=;, \t\"[]:<>@", max_size=12)


@settings(max_examples=400, deadline=None)
@given(
    transport=st.sampled_from(["UDP", "TCP", "udp", "U D"]),
    host=st.sampled_from(["127.0.0.1", "example.com", "[::1]", "a_b", "1.2.3", "x-"]),
    port=st.sampled_from(["", ":5060", ":0", ":99999", ":"]),
    params=TOKENISH,
)
def test_via_differential(transport: str, host: str, port: str, params: str) -> None:
    value = f"SIP/2.0/{transport} {host}{port};{params}"
    assert fast_via(value) == slow_via(value)


@settings(max_examples=400, deadline=None)
@given(
    uri=st.sampled_from(["sip:alice@example.com", "sip:a@b;lr", "SIP:a@b", "sip:", "x", ""]),
    params=TOKENISH,
)
def test_address_differential(uri: str, params: str) -> None:
    value = f"<{uri}>{params}"
    assert fast_address(value) == slow_address(value)


def test_the_memo_holds_a_working_set_of_thousands_of_users_and_rooms():
    # An LRU smaller than the working set, read in a cycle, hits nothing: with 1,024 entries a
    # churn over 3,000 users in 3,000 rooms re-parsed every URI and start line.
    import importlib

    parse_module = importlib.import_module("imc_actors.sip.parse")

    def message(i: int) -> bytes:
        return (
            f"MESSAGE sip:room{i}@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{i}\r\n"
            f"From: <sip:user{i}@example.com>;tag=t{i}\r\nTo: <sip:room{i}@example.com>\r\n"
            f"Call-ID: c{i}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    parse_module._uri.cache_clear()
    parse_module._start_line.cache_clear()
    users = 3000
    for _ in range(2):
        for i in range(users):
            parse_module.parse(message(i))
    uris = parse_module._uri.cache_info()
    lines = parse_module._start_line.cache_info()
    assert uris.misses == 2 * users and uris.hits == 2 * users  # second round: all hits
    assert lines.misses == users and lines.hits == users


# ---------------------------------------------------------------- quick_response (2xx to us)
def _response(status: str = "200 OK", via: str = "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKab12;rport=5060",
              lines: tuple[str, ...] = ("From: <sip:room@example.com>;tag=aa", "To: <sip:bob@example.com>;tag=bb",
                                        "Call-ID: c1@example.com", "CSeq: 1 MESSAGE"),
              end: str = "Content-Length: 0\r\n\r\n") -> bytes:  # fmt: skip
    return "\r\n".join([f"SIP/2.0 {status}", via, *lines, end]).encode()


def _parsed(data: bytes) -> tuple[int, str, str | None, str] | str:
    from imc_actors.sip.parse import parse

    try:
        message = parse(data)
    except SipParseError:
        return "error"
    return message.code, message.reason, message.branch, message.cseq_method  # type: ignore[union-attr]


QUICK = [
    _response(),
    _response("202 Accepted"),
    _response("200 Très bien"),
    _response(via="Via: SIP/2.0/UDP [::1]:5060;rport;branch=z9hG4bK.x-1"),
    _response(via="Via: SIP/2.0/TCP h.example.com;received=10.0.0.1;branch=z9hG4bKq;rport"),
    _response(via="Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa,SIP/2.0/UDP 10.0.0.2;branch=b"),
    _response(lines=("CSeq: 4711 MESSAGE", "Call-ID: x@y", "To: <sip:b@c>", "From: <sip:a@c>;tag=1",
                     "Via: SIP/2.0/UDP 10.0.0.9;branch=below")),
    _response(end="Content-Length: 2\r\n\r\nok"),
]
NOT_QUICK = [
    _response("180 Ringing"),
    _response("401 Unauthorized"),
    _response("2000 OK"),
    _response(via="v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKab12"),
    _response(via="via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKab12"),
    _response(via="Via: SIP/2.0/UDP 127.0.0.1:5060;rport"),  # no branch
    _response(via="Via: SIP/2.0/UDP 127.0.0.1:5060;xbranch=z9hG4bKab12"),
    _response(via="From: <sip:room@example.com>;tag=aa"),  # the Via is not the first header
    _response(lines=("From: <sip:a@c>;tag=1", "To: <sip:b@c>", "Call-ID: c1")),  # no CSeq
    _response(lines=("From: <sip:a@c>;tag=1", "To: <sip:b@c>", "Call-ID: c1", "CSeq: 1 MESSAGE",
                     "cseq: 2 MESSAGE")),
    _response(lines=("From: <sip:a@c>;tag=1", "To: <sip:b@c>", "CSeq: 1 MESSAGE")),  # no Call-ID
    _response(lines=("From: <sip:a@c>;tag=1", "To: <sip:b@c>", "i: c1", "CSeq: 1 MESSAGE")),
    _response(lines=("f: <sip:a@c>;tag=1", "To: <sip:b@c>", "Call-ID: c1", "CSeq: 1 MESSAGE")),
    _response(end="Content-Length: 0\r\n"),  # the head never ends
    _response().replace(b"200 OK", b"200 \xff"),  # not UTF-8
    b"SIP/2.0 200 OK\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa\nCSeq: 1 MESSAGE\n\n",
]


@pytest.mark.parametrize("data", QUICK)
def test_quick_response_reads_what_parse_reads(data: bytes) -> None:
    from imc_actors.sip.parse import quick_response

    quick = quick_response(data)
    assert quick is not None
    assert quick == _parsed(data)


@pytest.mark.parametrize("data", NOT_QUICK)
def test_quick_response_leaves_anything_else_to_parse(data: bytes) -> None:
    from imc_actors.sip.parse import quick_response

    assert quick_response(data) is None


@settings(max_examples=400, deadline=None)
@given(
    code=st.sampled_from(["200", "202", "299", "100", "486", "20", "2x0"]),
    reason=st.sampled_from(["OK", "", "Accepted now", "ok\tok"]),
    transport=st.sampled_from(["UDP", "TCP", "TLS", "udp", "U D"]),
    host=st.sampled_from(["127.0.0.1", "example.com", "[::1]", "h:5060", ""]),
    params=TOKENISH,
    order=st.permutations(["From: <sip:a@b>;tag=1", "To: <sip:c@b>", "Call-ID: x@y", "CSeq: 7 MESSAGE"]),
)
def test_quick_response_differential(code: str, reason: str, transport: str, host: str, params: str,
                                     order: list[str]) -> None:  # fmt: skip
    from imc_actors.sip.parse import quick_response

    data = _response(f"{code} {reason}", f"Via: SIP/2.0/{transport} {host};{params}", tuple(order))
    quick = quick_response(data)
    if quick is not None:  # what it reads, parse() reads the same (when it accepts the rest)
        parsed = _parsed(data)
        assert parsed == "error" or parsed == quick
