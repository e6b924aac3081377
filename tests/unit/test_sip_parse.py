"""parse / parse_stream / salvage_response: fields, normalisation, guards, framing."""

from __future__ import annotations

import importlib

import pytest

from imc_actors.sip import (
    MAX_MESSAGE,
    Request,
    Response,
    SipParseError,
    parse,
    parse_stream,
    salvage_response,
)

parse_module = importlib.import_module("imc_actors.sip.parse")

MESSAGE = (
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
    b"hello"
)

RESPONSE = (
    b"SIP/2.0 202 Accepted\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKabc;received=192.0.2.9\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKdef\r\n"
    b"From: <sip:room@example.com>;tag=x1\r\n"
    b"To: <sip:bob@example.com>;tag=y2\r\n"
    b"Call-ID: c1@example.com\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def replace(old: bytes, new: bytes, data: bytes = MESSAGE) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


def reason_of(data: bytes) -> str:
    with pytest.raises(SipParseError) as info:
        parse(data)
    return info.value.reason


# --- fields ----------------------------------------------------------------------------


def test_request_fields() -> None:
    request = parse(MESSAGE)
    assert isinstance(request, Request)
    assert request.method == "MESSAGE"
    assert request.uri == "sip:room@example.com"
    assert request.body == b"hello"
    assert request.call_id == "a84b4c76e66710@pc33.example.com"
    assert (request.cseq, request.cseq_method) == (314159, "MESSAGE")
    assert request.from_uri == "sip:alice@example.com"
    assert request.from_tag == "1928301774"
    assert request.to_uri == "sip:room@example.com"
    assert request.to_tag is None
    assert request.branch == "z9hG4bK776asdhds"
    assert request.via_sent_by == "192.0.2.1:5060"
    assert request.max_forwards == 70
    assert request.headers[2] == ("From", '"Alice" <sip:alice@example.com>;tag=1928301774')
    assert [name for name, _ in request.headers] == [
        "Via",
        "Max-Forwards",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Content-Type",
        "Content-Length",
    ]


def test_response_fields() -> None:
    response = parse(RESPONSE)
    assert isinstance(response, Response)
    assert (response.code, response.reason) == (202, "Accepted")
    assert response.branch == "z9hG4bKabc"  # the top Via's
    assert (response.call_id, response.cseq, response.cseq_method) == (
        "c1@example.com",
        1,
        "MESSAGE",
    )
    assert response.header_list("via") == [
        "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKabc;received=192.0.2.9",
        "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKdef",
    ]
    assert response.body == b""


def test_response_reason_may_have_spaces_and_utf8() -> None:
    data = replace(b"202 Accepted", "202 Accepté pour relais".encode(), RESPONSE)
    assert parse(data).reason == "Accepté pour relais"  # type: ignore[union-attr]


def test_accepts_bytearray_and_memoryview() -> None:
    assert parse(bytearray(MESSAGE)).call_id == parse(memoryview(MESSAGE)).call_id


def test_sent_by_lower_cased_and_without_port() -> None:
    data = replace(b"192.0.2.1:5060", b"Client.Example.COM")
    assert parse(data).via_sent_by == "client.example.com"  # type: ignore[union-attr]


def test_to_tag_and_addr_spec_form() -> None:
    data = replace(b"To: <sip:room@example.com>", b"To: sip:room@example.com;tag=77")
    request = parse(data)
    assert isinstance(request, Request)
    assert (request.to_uri, request.to_tag) == ("sip:room@example.com", "77")


def test_tag_parameter_name_is_case_insensitive() -> None:
    data = replace(b";tag=1928301774", b";TAG=AbC")
    assert parse(data).from_tag == "AbC"  # type: ignore[union-attr]


def test_from_uri_is_text_as_written() -> None:
    data = replace(b"<sip:alice@example.com>", b"<sip:al%69ce@EXAMPLE.com:5070;transport=tcp>")
    assert parse(data).from_uri == "sip:al%69ce@EXAMPLE.com:5070;transport=tcp"  # type: ignore[union-attr]


def test_max_forwards_absent_is_none() -> None:
    assert parse(replace(b"Max-Forwards: 70\r\n", b"")).max_forwards is None  # type: ignore[union-attr]


def test_request_uri_with_upper_case_scheme() -> None:
    data = replace(b"MESSAGE sip:room@", b"MESSAGE SIP:room@")
    assert parse(data).uri == "SIP:room@example.com"  # type: ignore[union-attr]


# --- normalisation ---------------------------------------------------------------------


def test_compact_forms_expanded() -> None:
    data = (
        b"MESSAGE sip:room@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
        b"f: <sip:a@example.com>;tag=1\r\n"
        b"t: <sip:room@example.com>\r\n"
        b"i: cid\r\n"
        b"CSeq: 1 MESSAGE\r\n"
        b"c: text/plain\r\n"
        b"k: kamailio/imc\r\n"
        b"s: hi\r\n"
        b"m: <sip:a@192.0.2.1>\r\n"
        b"l: 2\r\n"
        b"\r\n"
        b"ok"
    )
    request = parse(data)
    assert [name for name, _ in request.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Content-Type",
        "Supported",
        "Subject",
        "Contact",
        "Content-Length",
    ]
    assert request.call_id == "cid"
    assert request.body == b"ok"
    assert request.header("Supported") == "kamailio/imc"
    assert request.header("k") == "kamailio/imc"  # compact query works too


def test_known_names_are_respelled_unknown_kept() -> None:
    data = replace(b"Call-ID:", b"call-id:")
    data = replace(
        b"Content-Type: text/plain\r\n", b"X-Weird-Case: 1\r\ncontent-TYPE: a/b\r\n", data
    )
    request = parse(data)
    names = [name for name, _ in request.headers]
    assert "Call-ID" in names and "call-id" not in names
    assert "Content-Type" in names and "X-Weird-Case" in names
    assert request.header("x-weird-case") == "1"
    assert request.header("CONTENT-type") == "a/b"
    assert request.header("Nope") is None
    assert request.header_list("x-weird-CASE") == ["1"]


def test_bare_lf_line_ends() -> None:
    head, body = MESSAGE.split(b"\r\n\r\n")
    request = parse(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert request.call_id == "a84b4c76e66710@pc33.example.com"
    assert request.body == b"hello"


def test_mixed_line_ends() -> None:
    data = MESSAGE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n")
    data = data.replace(b"Content-Length: 5\r\n\r\n", b"Content-Length: 5\n\r\n")
    request = parse(data)
    assert request.max_forwards == 70 and request.body == b"hello"


def test_body_line_ends_are_untouched() -> None:
    data = replace(b"Content-Length: 5\r\n\r\nhello", b"Content-Length: 6\n\na\nb\r\nc")
    assert parse(data).body == b"a\nb\r\nc"


def test_folded_lines_are_joined_with_one_space() -> None:
    data = replace(
        b"Content-Type: text/plain\r\n",
        b"Content-Type: text/plain\r\nSubject: first\r\n  second\r\n\tthird\r\n",
    )
    request = parse(data)
    assert request.header("Subject") == "first second third"


def test_folded_value_starting_on_next_line() -> None:
    data = replace(b"CSeq: 314159 MESSAGE", b"CSeq:\r\n 314159\r\n MESSAGE")
    request = parse(data)
    assert request.header("CSeq") == "314159 MESSAGE"
    assert request.cseq == 314159


def test_space_before_colon_and_around_value() -> None:
    data = replace(b"Call-ID: a84b", b"Call-ID \t :   a84b")
    data = replace(b"Max-Forwards: 70", b"Max-Forwards:70   ", data)
    request = parse(data)
    assert request.call_id == "a84b4c76e66710@pc33.example.com"
    assert request.header("Max-Forwards") == "70"


def test_leading_crlf_is_skipped() -> None:
    assert parse(b"\r\n\r\n" + MESSAGE).call_id == "a84b4c76e66710@pc33.example.com"  # type: ignore[union-attr]


# --- body and Content-Length -----------------------------------------------------------


def test_longer_body_is_truncated_to_content_length() -> None:
    assert parse(MESSAGE + b"garbage").body == b"hello"


def test_shorter_body_is_an_error() -> None:
    assert reason_of(MESSAGE[:-1]) == "Content-Length mismatch"


def test_no_content_length_means_rest_of_datagram() -> None:
    data = replace(b"Content-Length: 5\r\n", b"") + b" world"
    assert parse(data).body == b"hello world"


@pytest.mark.parametrize("value", [b"-5", b"five", b"5 5", b"\xd9\xa3", b"12345678901", b""])
def test_invalid_content_length(value: bytes) -> None:
    assert reason_of(replace(b"Content-Length: 5", b"Content-Length: " + value)) == (
        "Invalid Content-Length"
    )


def test_two_different_content_lengths() -> None:
    data = replace(b"Content-Length: 5\r\n", b"Content-Length: 5\r\nl: 4\r\n")
    assert reason_of(data) == "Multiple Content-Length headers"


def test_two_different_content_types() -> None:
    # was: accepted, the last one relayed and archived (a tour: application/x-evil)
    data = replace(b"Content-Type: text/plain\r\n", b"Content-Type: text/plain\r\nc: application/x-evil\r\n")
    assert reason_of(data) == "Multiple Content-Type headers"
    same = replace(b"Content-Type: text/plain\r\n", b"Content-Type: text/plain\r\nContent-Type: text/plain\r\n")
    assert parse(same).header("Content-Type") == "text/plain"  # the same value twice: no conflict


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n", "Missing Via"),
        (b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n', "Missing From"),
        (b"To: <sip:room@example.com>\r\n", "Missing To"),
        (b"Call-ID: a84b4c76e66710@pc33.example.com\r\n", "Missing Call-ID"),
        (b"CSeq: 314159 MESSAGE\r\n", "Missing CSeq"),
    ],
)
def test_missing_mandatory_header(line: bytes, reason: str) -> None:
    assert reason_of(replace(line, b"")) == reason


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"CSeq: 314159 MESSAGE", b"CSeq: 314159 REGISTER", "CSeq method mismatch"),
        (b"CSeq: 314159 MESSAGE", b"CSeq: abc MESSAGE", "Invalid CSeq"),
        (b"CSeq: 314159 MESSAGE", b"CSeq: 2147483648 MESSAGE", "Invalid CSeq"),
        (b"CSeq: 314159 MESSAGE", b"CSeq: 314159", "Invalid CSeq"),
        (b"CSeq: 314159 MESSAGE", b"CSeq: -1 MESSAGE", "Invalid CSeq"),
        (b"Max-Forwards: 70", b"Max-Forwards: seventy", "Invalid Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Invalid Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: -1", "Invalid Max-Forwards"),
        (b"Call-ID: a84b4c76e66710@pc33.example.com", b"Call-ID: a b", "Invalid Call-ID"),
        (b"Call-ID: a84b4c76e66710@pc33.example.com", b"Call-ID:", "Invalid Call-ID"),
        (b"SIP/2.0/UDP 192.0.2.1:5060;", b"SIP/2.0/UDP ;", "Invalid Via"),
        (b"SIP/2.0/UDP 192.0.2.1", b"HTTP/1.1 192.0.2.1", "Invalid Via"),
        (b"SIP/2.0/UDP 192.0.2.1:5060;", b"SIP/2.0/UDP 192.0.2.1:65536;", "Invalid Via"),
        (b"SIP/2.0/UDP 192.0.2.1:5060;", b"SIP/2.0/UDP 192.0.2.1:99999;", "Invalid Via"),
        (b"SIP/2.0/UDP 192.0.2.1:5060;", b"SIP/2.0/UDP 192.0.2.1:0;", "Invalid Via"),
        (b"SIP/2.0/UDP 192.0.2.1:5060;", b'SIP/2.0/UDP 192.0.2.1:70000;x="1";', "Invalid Via"),
        (b"<sip:alice@example.com>", b"<sip:alice@exa mple.com>", "Invalid From"),
        (b"<sip:alice@example.com>", b"<mailto:alice@example.com>", "Invalid From"),
        (b";tag=1928301774", b";tag", "Invalid From"),
        (b"To: <sip:room@example.com>", b"To: <sip:room@example.com", "Invalid To"),
        (b"To: <sip:room@example.com>", b"To: room", "Invalid To"),
        (b"MESSAGE sip:room@example.com SIP/2.0", b"MESSAGE sip:room@example.com SIP/3.0",
         "Unsupported SIP version"),
        (b"MESSAGE sip:room@example.com SIP/2.0", b"MESSAGE http://example.com SIP/2.0",
         "Unsupported URI scheme"),
        (b"MESSAGE sip:room@example.com SIP/2.0", b"MESSAGE sip:room@exa_mple.com SIP/2.0",
         "Invalid Request-URI"),
        (b"MESSAGE sip:room@example.com SIP/2.0", b"MESSAGE  sip:room@example.com SIP/2.0",
         "Malformed start line"),
        (b"MESSAGE sip:room@example.com SIP/2.0", b"MESSAGE sip:room@example.com",
         "Malformed start line"),
        (b"MESSAGE sip:room@example.com SIP/2.0", b"MES(SAGE sip:room@example.com SIP/2.0",
         "Malformed start line"),
        (b"Max-Forwards: 70", b"Max-Forwards 70", "Malformed header line"),
        (b"Max-Forwards: 70", b"Max Forwards: 70", "Invalid header name"),
        (b"Max-Forwards: 70", b": 70", "Invalid header name"),
        (b"Max-Forwards: 70", b"Max-Forwards: 7\r0", "Bad line ending"),
    ],
)  # fmt: skip
def test_invalid_values(old: bytes, new: bytes, reason: str) -> None:
    assert reason_of(replace(old, new)) == reason


def test_error_codes_for_special_faults() -> None:
    with pytest.raises(SipParseError) as info:
        parse(replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n"))
    assert info.value.code == 505
    with pytest.raises(SipParseError) as info:
        parse(replace(b"sip:room@example.com SIP", b"im:room@example.com SIP"))
    assert info.value.code == 416
    with pytest.raises(SipParseError) as info:
        parse(replace(b"CSeq: 1 MESSAGE", b"CSeq: x", RESPONSE))
    assert info.value.code == 400


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (b"SIP/2.0 2000 OK", "Invalid status code"),
        (b"SIP/2.0 099 Odd", "Invalid status code"),
        (b"SIP/2.0 7xx Odd", "Invalid status code"),
        (b"SIP/2.0 2_0 Odd", "Invalid status code"),
        (b"SIP/1.0 200 OK", "Unsupported SIP version"),
        (b"SIP/2.0 200", "Malformed start line"),
    ],
)
def test_invalid_status_line(status: bytes, reason: str) -> None:
    assert reason_of(replace(b"SIP/2.0 202 Accepted", status, RESPONSE)) == reason


def test_response_does_not_check_cseq_against_a_method() -> None:
    data = replace(b"CSeq: 1 MESSAGE", b"CSeq: 1 REGISTER", RESPONSE)
    assert parse(data).cseq_method == "REGISTER"  # type: ignore[union-attr]


def test_folding_before_first_header_is_an_error() -> None:
    data = replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n continued\r\n")
    assert reason_of(data) == "Invalid header folding"


def test_non_utf8_head_is_an_error_but_body_may_be_anything() -> None:
    assert reason_of(replace(b"Alice", b"Al\xffce")) == "Invalid UTF-8"
    data = replace(b"Content-Length: 5\r\n\r\nhello", b"Content-Length: 3\r\n\r\n\xff\x00\xfe")
    assert parse(data).body == b"\xff\x00\xfe"


# --- guards ----------------------------------------------------------------------------


def test_too_large() -> None:
    data = replace(b"Content-Length: 5\r\n\r\nhello", b"\r\n" + b"x" * MAX_MESSAGE)
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert (info.value.reason, info.value.code) == ("Message too large", 513)


def test_header_line_limit_is_100() -> None:
    pad = b"X-Pad: 1\r\n" * 92  # 8 headers + 92 = 100 lines: allowed
    assert parse(replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + pad))
    data = replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + pad + b"X: 1\r\n")
    assert reason_of(data) == "Too many headers"


def test_continuation_lines_count_as_header_lines() -> None:
    folded = b"Subject: a\r\n" + b" b\r\n" * 93  # 7 + 94 = 101 lines
    assert reason_of(replace(b"Max-Forwards: 70\r\n", folded)) == "Too many headers"


def test_line_limit_is_8k() -> None:
    fits = b"X-Long: " + b"a" * (8192 - 8) + b"\r\n"
    assert parse(replace(b"Max-Forwards: 70\r\n", fits)).header("X-Long") == "a" * 8184
    too_long = b"X-Long: " + b"a" * (8192 - 7) + b"\r\n"
    assert reason_of(replace(b"Max-Forwards: 70\r\n", too_long)) == "Line too long"


def test_folding_cannot_build_a_line_over_8k() -> None:
    folded = b"X-Long: " + b"a" * 5000 + b"\r\n " + b"b" * 5000 + b"\r\n"
    assert reason_of(replace(b"Max-Forwards: 70\r\n", folded)) == "Line too long"


def test_structured_fields_are_capped_before_sipmessage() -> None:
    long_user = b"u" * 3000
    assert reason_of(replace(b"sip:room@example.com SIP", b"sip:" + long_user + b"@x SIP")) == (
        "Request-URI too long"
    )
    assert reason_of(replace(b"<sip:alice@", b"<sip:" + long_user + b"@")) == "From too long"
    assert reason_of(replace(b"<sip:room@", b"<sip:" + long_user + b"@")) == "To too long"
    assert reason_of(replace(b";rport", b";x=" + long_user)) == "Via too long"


def test_many_vias_in_one_line_only_top_one_parsed() -> None:
    data = replace(b";rport", b";rport, SIP/2.0/UDP second.example.com;branch=z9hG4bK2")
    request = parse(data)
    assert request.branch == "z9hG4bK776asdhds"
    assert request.header_list("Via") == [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport, "
        "SIP/2.0/UDP second.example.com;branch=z9hG4bK2"
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "Empty message"),
        (b"\r\n\r\n", "Empty message"),
        (MESSAGE.split(b"\r\n\r\n")[0], "Missing end of headers"),
        (MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n", "Missing end of headers"),
        (b"X" * 100, "Missing end of headers"),
        (b"hello\r\n\r\n", "Malformed start line"),
    ],
)
def test_not_a_message(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_ten_thousand_headers_without_end_of_headers() -> None:
    assert reason_of(b"MESSAGE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 10_000) == "Too many headers"


def test_any_internal_exception_becomes_sip_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(value: str) -> object:
        raise KeyError("boom")

    monkeypatch.setattr(parse_module, "_cseq", explode)
    with pytest.raises(SipParseError) as info:
        parse(MESSAGE)
    assert info.value.reason == "Malformed message"
    assert isinstance(info.value.__cause__, KeyError)


def test_sip_parse_error_is_a_value_error() -> None:
    error = SipParseError("Missing Call-ID")
    assert isinstance(error, ValueError)
    assert (str(error), error.reason, error.code) == ("Missing Call-ID", "Missing Call-ID", 400)


# --- parse_stream ----------------------------------------------------------------------


def test_stream_cuts_complete_messages_and_keeps_the_rest() -> None:
    buffer = bytearray(MESSAGE + RESPONSE + MESSAGE[:50])
    assert parse_stream(buffer) == [MESSAGE, RESPONSE]
    assert buffer == MESSAGE[:50]
    buffer += MESSAGE[50:]
    assert parse_stream(buffer) == [MESSAGE]
    assert buffer == b""


def test_stream_waits_for_the_body() -> None:
    buffer = bytearray(MESSAGE[:-2])
    assert parse_stream(buffer) == []
    assert buffer == MESSAGE[:-2]


def test_stream_byte_by_byte() -> None:
    buffer = bytearray()
    out: list[bytes] = []
    for byte in MESSAGE + RESPONSE:
        buffer.append(byte)
        out.extend(parse_stream(buffer))
    assert out == [MESSAGE, RESPONSE]
    assert buffer == b""


def test_stream_skips_keepalives() -> None:
    buffer = bytearray(b"\r\n\r\n" + MESSAGE + b"\r\n\r\n")
    assert parse_stream(buffer) == [MESSAGE]
    assert buffer == b""


def test_stream_compact_content_length_and_bare_lf() -> None:
    data = b"MESSAGE sip:a@b SIP/2.0\nl : 3\n\nabcREST"
    buffer = bytearray(data)
    assert parse_stream(buffer) == [data[:-4]]
    assert buffer == b"REST"


def test_stream_requires_content_length() -> None:
    buffer = bytearray(replace(b"Content-Length: 5\r\n", b""))
    with pytest.raises(SipParseError, match="Missing Content-Length"):
        parse_stream(buffer)


def test_stream_two_content_lengths_that_differ_are_refused_at_once() -> None:
    # the first one larger than the body: waiting for it would hang the connection
    for first, second in ((b"50", b"5"), (b"5", b"50")):
        buffer = bytearray(replace(b"Content-Length: 5", b"Content-Length: " + first + b"\r\nl: " + second))
        with pytest.raises(SipParseError, match="Multiple Content-Length headers"):
            parse_stream(buffer)
    same = replace(b"Content-Length: 5", b"Content-Length: 5\r\nContent-Length: 5")
    assert parse_stream(bytearray(same)) == [same]  # parse() decides about an exact repeat


def test_stream_invalid_content_length() -> None:
    buffer = bytearray(replace(b"Content-Length: 5", b"Content-Length: -5"))
    with pytest.raises(SipParseError, match="Invalid Content-Length"):
        parse_stream(buffer)


def test_stream_head_too_large() -> None:
    buffer = bytearray(b"MESSAGE sip:a@b SIP/2.0\r\nX: " + b"a" * MAX_MESSAGE)
    with pytest.raises(SipParseError, match="Message too large"):
        parse_stream(buffer)


def test_stream_body_too_large() -> None:
    buffer = bytearray(replace(b"Content-Length: 5", b"Content-Length: 70000"))
    with pytest.raises(SipParseError, match="Message too large"):
        parse_stream(buffer)


def test_stream_frames_parse() -> None:
    buffer = bytearray(MESSAGE * 3)
    assert [parse(frame).body for frame in parse_stream(buffer)] == [b"hello"] * 3


# --- salvage_response ------------------------------------------------------------------

BROKEN = (
    b"MESSAGE sip:room@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP first.example.com;branch=z9hG4bK1\r\n"
    b"Via  : SIP/2.0/UDP second.example.com;branch=z9hG4bK2\r\n"
    b"f: <sip:alice@example.com>;tag=a%41\xff\r\n"
    b"t: <sip:room@example.com>\r\n"
    b"Call-ID: broken@example.com\r\n"
    b"CSeq: one MESSAGE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def test_salvage_copies_raw_lines_and_adds_a_to_tag() -> None:
    with pytest.raises(SipParseError):
        parse(BROKEN)
    out = salvage_response(BROKEN, 400, "Invalid CSeq")
    assert out is not None
    lines = out.split(b"\r\n")
    assert lines[0] == b"SIP/2.0 400 Invalid CSeq"
    assert lines[1] == b"Via: SIP/2.0/UDP first.example.com;branch=z9hG4bK1"
    assert lines[2] == b"Via: SIP/2.0/UDP second.example.com;branch=z9hG4bK2"
    assert lines[3] == b"From: <sip:alice@example.com>;tag=a%41\xff"
    assert lines[4].startswith(b"To: <sip:room@example.com>;tag=")
    assert len(lines[4]) > len(b"To: <sip:room@example.com>;tag=")
    assert lines[5:] == [b"Call-ID: broken@example.com", b"CSeq: one MESSAGE",
                         b"Content-Length: 0", b"", b""]  # fmt: skip


def test_salvage_keeps_an_existing_to_tag_and_joins_folds() -> None:
    data = BROKEN.replace(b"t: <sip:room@example.com>", b"t: <sip:room@example.com>\r\n ;tag=x")
    out = salvage_response(data, 400, "Bad Request")
    assert out is not None
    assert b"\r\nTo: <sip:room@example.com> ;tag=x\r\n" in out
    assert out.count(b"tag=") == 2  # From's and To's only


def test_salvage_default_reason_and_no_tag_for_100() -> None:
    out = salvage_response(BROKEN, 100, "")
    assert out is not None
    assert out.startswith(b"SIP/2.0 100 Trying\r\n")
    assert b"\r\nTo: <sip:room@example.com>\r\n" in out


def test_salvage_works_without_end_of_headers() -> None:
    out = salvage_response(BROKEN.rstrip(b"\r\n"), 400, "Missing end of headers")
    assert out is not None and b"Call-ID: broken@example.com" in out


@pytest.mark.parametrize(
    "data",
    [
        RESPONSE,
        BROKEN.replace(b"MESSAGE sip:room@example.com", b"ACK sip:room@example.com"),
        BROKEN.replace(b"v: SIP/2.0/UDP first.example.com;branch=z9hG4bK1\r\n", b"").replace(
            b"Via  : SIP/2.0/UDP second.example.com;branch=z9hG4bK2\r\n", b""
        ),
        BROKEN.replace(b"v: SIP/2.0/UDP first.example.com;branch=z9hG4bK1", b"v:").replace(
            b"Via  : SIP/2.0/UDP second.example.com;branch=z9hG4bK2", b"Via:  "
        ),
        b"\x00\x01\x02 binary junk",
        b"",
        RESPONSE.replace(b"SIP/2.0 ", b"sip/2.0 ", 1),  # a response in lower case
        b" \t" + RESPONSE,  # a response behind blanks
        BROKEN.replace(b"MESSAGE sip:room@example.com SIP/2.0", b"\xff\xfe junk").replace(
            b"CSeq: one MESSAGE", b"CSeq: 1 ack"
        ),  # an ACK behind a broken first line: never answered
    ],
)
def test_salvage_declines(data: bytes) -> None:
    """Nobody to answer: a response, an ACK, no (non-empty) Via, no request line."""
    assert salvage_response(data, 400, "Bad Request") is None


@pytest.mark.parametrize(
    ("line", "header"),
    [
        (b"Call-ID: broken@example.com\r\n", b"Call-ID"),
        (b"CSeq: one MESSAGE\r\n", b"CSeq"),
        (b"t: <sip:room@example.com>\r\n", b"To"),
        (b"f: <sip:alice@example.com>;tag=a%41\xff\r\n", b"From"),
    ],
)
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_salvage_answers_without_a_mandatory_header(line: bytes, header: bytes, how: str) -> None:
    """A Via is enough for a 400 (as Kamailio's sanity module answers); a missing or empty
    header is left out of it, everything else is copied."""
    data = BROKEN.replace(line, b"" if how == "missing" else line.split(b":")[0] + b":\r\n")
    out = salvage_response(data, 400, f"Missing {header.decode()}")
    assert out is not None
    assert out.startswith(f"SIP/2.0 400 Missing {header.decode()}\r\n".encode())
    names = [raw.split(b":")[0] for raw in out.split(b"\r\n")[1:] if raw]
    expected = [b"Via", b"Via", b"From", b"To", b"Call-ID", b"CSeq", b"Content-Length"]
    assert names == [name for name in expected if name != header]


def test_salvage_answers_with_nothing_but_a_via() -> None:
    out = salvage_response(
        b"MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKv\r\n", 400, "x"
    )
    assert (
        out == b"SIP/2.0 400 x\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKv\r\nContent-Length: 0\r\n\r\n"
    )


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n"])
def test_salvage_reads_any_line_end(end: bytes) -> None:
    """Bare CRs (which no line-based reader splits) are line ends too, for the 400."""
    data = BROKEN.replace(b"\r\n", end)
    with pytest.raises(SipParseError) as info:
        parse(data)
    out = salvage_response(data, 400, info.value.reason)
    assert out is not None
    assert b"\r\nCall-ID: broken@example.com\r\nCSeq: one MESSAGE\r\n" in out
    assert out.count(b"\r\nVia: ") == 2


def test_bare_cr_line_ends_are_a_bad_line_ending() -> None:
    with pytest.raises(SipParseError, match="Bad line ending"):
        parse(MESSAGE.replace(b"\r\n", b"\r"))


def test_salvage_rejects_bad_status() -> None:
    with pytest.raises(ValueError):
        salvage_response(BROKEN, 99, "x")
    with pytest.raises(ValueError):
        salvage_response(BROKEN, 400, "x\r\nInjected: yes")


def test_refused_vias_and_addresses_keep_no_frames_alive() -> None:
    """sipmessage raises one shared ValueError per grammar; each raise used to chain its frames
    (and the message bytes in them) onto that instance for good: found by bench.fuzz as RSS
    growing with every refused Via."""
    from sipmessage.address import ADDRESS_EXCEPTION
    from sipmessage.via import VIA_EXCEPTION

    from imc_actors.sip import split_uri

    bad_via = MESSAGE.replace(b"SIP/2.0/UDP", b"SIP/2.0/UDP ;", 1)
    for i in range(50):
        with pytest.raises(SipParseError, match="Invalid Via"):
            parse(bad_via.replace(b"hello", f"{i:05}".encode()))
        with pytest.raises(ValueError):
            split_uri(f'"x <sip:bad{i}@')
    assert VIA_EXCEPTION.__traceback__ is None
    assert ADDRESS_EXCEPTION.__traceback__ is None
