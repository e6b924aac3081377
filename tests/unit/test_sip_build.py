"""build_response / build_request / new_*: raw copying, tags, header order, round trips."""

from __future__ import annotations

import re

import pytest
from sipmessage import Address

from imc_actors.sip import (
    Request,
    Response,
    build_request,
    build_response,
    is_own_branch,
    is_own_call_id,
    new_branch,
    new_call_id,
    new_mark,
    new_tag,
    parse,
    reason_phrase,
)

# The From tag holds characters sipmessage's Parameters.__str__ would percent-encode
# ("!", "'", "`", "~", "*", "%"), and the display name has spacing it would normalise.
REQUEST = (
    b"MESSAGE sip:room@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1;received=192.0.2.7\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport=5060\r\n"
    b"Max-Forwards: 69\r\n"
    b'f:   "Alice  A."   <sip:alice@example.com> ;tag=a!b\'c`d~e*f%41\r\n'
    b"t: <sip:room@example.com>\r\n"
    b"i: cid-1@pc33\r\n"
    b"CSeq:   42    MESSAGE\r\n"
    b"Content-Length: 2\r\n"
    b"\r\n"
    b"hi"
)


def parsed_request(data: bytes = REQUEST) -> Request:
    request = parse(data)
    assert isinstance(request, Request)
    return request


def parsed_response(data: bytes) -> Response:
    response = parse(data)
    assert isinstance(response, Response)
    return response


def lines(data: bytes) -> list[bytes]:
    head, _, _ = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")


def test_sipmessage_would_mangle_the_tag() -> None:
    """The premise of raw copying: a round trip through sipmessage changes the From text."""
    value = '"Alice  A."   <sip:alice@example.com> ;tag=a!b\'c`d~e*f%41'
    assert str(Address.parse(value)) != value
    assert "a!b'c`d~e*f%41" not in str(Address.parse(value))


def test_response_copies_headers_byte_for_byte() -> None:
    request = parsed_request()
    out = build_response(request, 200, to_tag="srv1")
    assert lines(out) == [
        b"SIP/2.0 200 OK",
        b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp1;received=192.0.2.7",
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport=5060",
        b'From: "Alice  A."   <sip:alice@example.com> ;tag=a!b\'c`d~e*f%41',
        b"To: <sip:room@example.com>;tag=srv1",
        b"Call-ID: cid-1@pc33",
        b"CSeq: 42    MESSAGE",
        b"Content-Length: 0",
    ]
    assert out.endswith(b"\r\n\r\n")


def test_response_round_trip_parses_with_the_same_identifiers() -> None:
    request = parsed_request()
    response = parsed_response(build_response(request, 202, to_tag="srv1"))
    assert (response.code, response.reason) == (202, "Accepted")
    assert response.call_id == request.call_id
    assert (response.cseq, response.cseq_method) == (request.cseq, request.cseq_method)
    assert response.branch == "z9hG4bKp1"
    assert response.header("From") == request.header("From")
    assert response.header("To") == "<sip:room@example.com>;tag=srv1"


def test_existing_to_tag_is_kept_and_not_doubled() -> None:
    request = parsed_request(
        REQUEST.replace(b"t: <sip:room@example.com>", b"t: <sip:room@example.com>;tag=dlg")
    )
    out = build_response(request, 200, to_tag="ignored")
    assert b"\r\nTo: <sip:room@example.com>;tag=dlg\r\n" in out
    assert b"ignored" not in out


def test_no_to_tag_on_100() -> None:
    out = build_response(parsed_request(), 100, to_tag="x")
    assert b"\r\nTo: <sip:room@example.com>\r\n" in out
    assert out.startswith(b"SIP/2.0 100 Trying\r\n")


def test_to_tag_generated_when_not_given() -> None:
    first = parsed_response(build_response(parsed_request(), 404))
    second = parsed_response(build_response(parsed_request(), 404))
    first_to, second_to = first.header("To"), second.header("To")
    assert first_to is not None and second_to is not None
    assert re.fullmatch(r"<sip:room@example\.com>;tag=[0-9a-f]{12}", first_to)
    assert first_to != second_to


def test_body_content_type_and_content_length_last() -> None:
    body = "3 members: ☃".encode()
    out = build_response(
        parsed_request(),
        200,
        "Fine",
        to_tag="t",
        headers=[("Supported", "kamailio/imc"), ("X-A", "1")],
        body=body,
        content_type="text/plain;charset=UTF-8",
    )
    head = lines(out)
    assert head[0] == b"SIP/2.0 200 Fine"
    assert head[-4:] == [
        b"Supported: kamailio/imc",
        b"X-A: 1",
        b"Content-Type: text/plain;charset=UTF-8",
        f"Content-Length: {len(body)}".encode(),
    ]
    assert out.endswith(b"\r\n\r\n" + body)
    assert parsed_response(out).body == body


def test_body_without_content_type_gets_text_plain_unless_headers_have_one() -> None:
    out = build_response(parsed_request(), 200, to_tag="t", body=b"x")
    assert b"\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\n\r\nx" in out
    out = build_response(
        parsed_request(), 200, to_tag="t", headers=[("Content-Type", "a/b")], body=b"x"
    )
    assert out.count(b"Content-Type") == 1
    assert b"\r\nContent-Type: a/b\r\nContent-Length: 1\r\n\r\nx" in out


def test_extra_header_may_not_inject_lines() -> None:
    with pytest.raises(ValueError):
        build_response(parsed_request(), 200, headers=[("X", "a\r\nInjected: 1")])
    with pytest.raises(ValueError):
        build_response(parsed_request(), 200, "OK\r\nInjected: 1")
    with pytest.raises(ValueError):
        build_response(parsed_request(), 99)


@pytest.mark.parametrize(
    ("code", "phrase"),
    [(200, "OK"), (202, "Accepted"), (400, "Bad Request"), (403, "Forbidden"),
     (404, "Not Found"), (413, "Request Entity Too Large"), (423, "Interval Too Brief"),
     (481, "Call/Transaction Does Not Exist"), (503, "Service Unavailable"),
     (505, "Version Not Supported"), (299, "OK"), (499, "Client Error")],
)  # fmt: skip
def test_default_reason_phrases(code: int, phrase: str) -> None:
    assert reason_phrase(code) == phrase
    assert lines(build_response(parsed_request(), code, to_tag="t"))[0] == (
        f"SIP/2.0 {code} {phrase}".encode()
    )


def test_build_request_layout_and_round_trip() -> None:
    out = build_request(
        "MESSAGE",
        "sip:bob@192.0.2.5:5070;transport=tcp",
        from_uri="sip:room@example.com",
        from_tag="ft1",
        to_uri="sip:bob@example.com",
        call_id="cid@example.com",
        cseq=1,
        via_host="192.0.2.1",
        via_port=5060,
        via_transport="tcp",
        branch="z9hG4bKabc",
        headers=[("Supported", "kamailio/imc"), ("Content-Type", "text/plain;charset=UTF-8"),
                 ("In-Reply-To", "orig@x")],
        body=b"hello",
    )  # fmt: skip
    assert lines(out) == [
        b"MESSAGE sip:bob@192.0.2.5:5070;transport=tcp SIP/2.0",
        b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKabc;rport",
        b"Max-Forwards: 70",
        b"From: <sip:room@example.com>;tag=ft1",
        b"To: <sip:bob@example.com>",
        b"Call-ID: cid@example.com",
        b"CSeq: 1 MESSAGE",
        b"Supported: kamailio/imc",
        b"Content-Type: text/plain;charset=UTF-8",
        b"In-Reply-To: orig@x",
        b"Content-Length: 5",
    ]
    request = parsed_request(out)
    assert request.body == b"hello"
    assert (request.from_uri, request.from_tag) == ("sip:room@example.com", "ft1")
    assert (request.to_uri, request.to_tag) == ("sip:bob@example.com", None)
    assert request.branch == "z9hG4bKabc"
    assert request.via_sent_by == "192.0.2.1:5060"
    assert request.max_forwards == 70


def test_build_request_content_type_argument_ipv6_and_no_port() -> None:
    out = build_request(
        "MESSAGE",
        "sip:bob@example.com",
        from_uri="sip:room@example.com",
        from_tag="t",
        to_uri="sip:bob@example.com",
        call_id="c",
        cseq=7,
        via_host="2001:db8::1",
        via_port=None,
        via_transport="UDP",
        branch="z9hG4bKx",
        body=b"x",
        content_type="text/html",
    )
    head = lines(out)
    assert head[1] == b"Via: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKx;rport"
    assert head[-2:] == [b"Content-Type: text/html", b"Content-Length: 1"]
    assert parsed_request(out).via_sent_by == "[2001:db8::1]"


def test_build_request_without_body_has_no_content_type() -> None:
    out = build_request(
        "REGISTER", "sip:example.com", from_uri="sip:a@example.com", from_tag="t",
        to_uri="sip:a@example.com", call_id="c", cseq=2, via_host="h", via_port=5060,
        via_transport="udp", branch="z9hG4bKy",
    )  # fmt: skip
    assert b"Content-Type" not in out
    assert lines(out)[-1] == b"Content-Length: 0"
    assert parsed_request(out).cseq_method == "REGISTER"


def test_build_request_refuses_crlf() -> None:
    with pytest.raises(ValueError):
        build_request(
            "MESSAGE", "sip:b@x", from_uri="sip:a@x", from_tag="t", to_uri="sip:b@x",
            call_id="c\r\nX: 1", cseq=1, via_host="h", via_port=1, via_transport="udp",
            branch="z9hG4bKz",
        )  # fmt: skip


def test_identifiers_are_fresh_and_well_formed() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100
    assert all(re.fullmatch(r"z9hG4bK[0-9a-f]{16}", b) for b in branches)
    mark = new_mark()
    marked = new_branch(mark)
    assert re.fullmatch(r"z9hG4bK[0-9a-f]{24}", marked)
    assert is_own_branch(f"SIP/2.0/UDP a;branch=x, SIP/2.0/UDP h;branch={marked}", mark)
    assert not any(is_own_branch(f"SIP/2.0/UDP h;branch={b}", mark) for b in branches)
    assert not is_own_branch(f"SIP/2.0/UDP h;branch={marked}", "")
    tags = {new_tag() for _ in range(100)}
    assert len(tags) == 100 and all(re.fullmatch(r"[0-9a-f]{12}", t) for t in tags)
    call_id = new_call_id("example.com")
    assert re.fullmatch(r"[0-9a-f]{24}@example\.com", call_id)
    own = new_call_id("example.com", mark)
    assert is_own_call_id(own, mark) and is_own_call_id(f"other@x, {own}", mark)
    assert not is_own_call_id(call_id, mark)
    assert new_call_id("example.com") != call_id
