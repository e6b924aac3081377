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
