"""Torture messages in the style of RFC 4475 §3.1, for the methods this server takes.

Written for MESSAGE and REGISTER (RFC 4475's own are mostly INVITEs with SDP). Each valid
message checks the fields the server routes on; each invalid one checks the 400 reason.
Messages are written with ``\\n`` line ends for legibility and converted to CRLF by
:func:`wire` unless a test is about line ends.
"""

from __future__ import annotations

import pytest

from imc_actors.sip import (
    Request,
    Response,
    SipParseError,
    aor_key,
    build_response,
    parse,
    salvage_response,
    server_key,
    split_uri,
)


def wire(text: str, body: bytes = b"") -> bytes:
    """``text`` (a head written with ``\\n``) as CRLF bytes, a blank line, then ``body``."""
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def request(data: bytes) -> Request:
    parsed = parse(data)
    assert isinstance(parsed, Request)
    return parsed


# --- valid -----------------------------------------------------------------------------

# §3.1.1.1 style: short forms, folding, odd spacing and case everywhere.
WSINV = wire(
    """
MESSAGE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 10
cseq: 0009
  MESSAGE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;rport;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
c: text/plain
""",
    b"hello wsin",
)


def test_wsinv_short_forms_folding_spacing() -> None:
    req = request(WSINV)
    assert req.method == "MESSAGE"
    assert req.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert (req.to_uri, req.to_tag) == ("sip:vivekg@chair-dnrc.example.com", "1918181833n")
    assert (req.from_uri, req.from_tag) == ("sip:jdrosen@example.com", "98asjd8")
    assert req.max_forwards == 68
    assert (req.cseq, req.cseq_method) == (9, "MESSAGE")
    assert req.branch == "390skdjuw"  # no magic cookie: RFC 2543 matching applies
    assert req.via_sent_by == "192.0.2.2"
    assert req.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert req.header("Subject") == ""
    assert req.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert req.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert req.header("Via") == "SIP  /   2.0 /UDP 192.0.2.2;rport;branch=390skdjuw"
    assert req.body == b"hello wsin"
    assert server_key(req)[0] == "2543"


# §3.1.1.2 style: the widest legal alphabet in method, URI user/password, Call-ID, tags.
INTMETH = wire(
    """
!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\ufeff\u5927\u505c\u96fb
Content-Length: 0
"""
)


def test_intmeth_wide_range_of_valid_characters() -> None:
    req = request(INTMETH)
    assert req.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert req.cseq_method == req.method
    assert req.branch == "z9hG4bK-.!f*_+`'~"  # parameter values come percent-decoded
    assert req.from_tag == "_token~1'+`*%!-."
    assert req.from_uri == "sip:mundane@example.com"
    assert req.to_uri == "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com"
    assert req.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert req.max_forwards == 255
    assert req.header("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    assert req.body == b""


# §3.1.1.3 style: escaped characters in URIs.
ESC01 = wire(
    """
MESSAGE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 MESSAGE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
c: text/plain
l: 5
""",
    b"hi %!",
)


def test_esc01_escaped_uris() -> None:
    req = request(ESC01)
    assert req.uri == "sip:sips%3Auser%40example.com@example.net"
    assert req.to_uri == "sip:%75se%72@example.com"
    assert req.from_uri == "sip:I%20have%20spaces@example.net"
    assert split_uri(req.uri) == ("sips%3Auser%40example.com", "example.net")
    assert aor_key(req.to_uri) == "user@example.com"  # escapes of unreserved chars decoded
    assert aor_key(req.from_uri) == "i%20have%20spaces@example.net"
    assert req.body == b"hi %!"


# §3.1.1.4 style: an escaped NUL in a URI is legal.
ESCNULL = wire(
    """
REGISTER sip:example.com SIP/2.0
To: sip:null-%00-null@example.com
From: sip:null-%00-null@example.com;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw
Contact: <sip:%00@host5.example.com>
Contact: <sip:%00%00@host5.example.com>
L:0
"""
)


def test_escnull_register() -> None:
    req = request(ESCNULL)
    assert req.method == "REGISTER" and req.uri == "sip:example.com"
    assert (req.from_uri, req.from_tag) == ("sip:null-%00-null@example.com", "839923423")
    assert req.header_list("Contact") == [
        "<sip:%00@host5.example.com>",
        "<sip:%00%00@host5.example.com>",
    ]


# §3.1.1.6 style: no LWS between display name and <, and a quoted name with escapes.
LWSDISP = wire(
    """
MESSAGE sip:example.com SIP/2.0
To: "Room \\"one\\""<sip:room@example.com>
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 MESSAGE
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0
"""
)


def test_lwsdisp_display_names_without_space() -> None:
    req = request(LWSDISP)
    assert (req.from_uri, req.from_tag) == ("sip:caller@example.com", "323")
    assert req.to_uri == "sip:room@example.com"


# §3.1.1.7 style: long (but within the guards) values and many Vias.
LONGREQ = wire(
    "MESSAGE sip:room@example.com SIP/2.0\n"
    'To: "I have a user name of ' + "extreme" * 40 + ' proportion" <sip:room@example.com>\n'
    "From: sip:" + "amazinglylongcallername" * 20 + "@example.net;tag=12982424\n"
    "Call-ID: longreq.one" + "really" * 120 + "longcallid\n"
    "CSeq: 3882340 MESSAGE\n"
    "Max-Forwards: 70\n"
    "X-Very-Long: "
    + "v" * 7000
    + "\n"
    + "".join(f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{i}\n" for i in range(30))
    + "Content-Length: 0"
)


def test_longreq_long_values_and_thirty_vias() -> None:
    req = request(LONGREQ)
    assert req.branch == "z9hG4bK0"
    assert req.via_sent_by == "sip0.example.com"
    assert len(req.header_list("Via")) == 30
    assert req.from_uri == "sip:" + "amazinglylongcallername" * 20 + "@example.net"
    assert len(req.header("X-Very-Long") or "") == 7000
    response = build_response(req, 200, to_tag="t")
    assert response.count(b"\r\nVia: ") == 30


# §3.1.1.9 style: a semicolon-separated parameter inside the user part.
SEMIURI = wire(
    """
MESSAGE sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 MESSAGE
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0
"""
)


def test_semiuri_user_with_semicolon() -> None:
    req = request(SEMIURI)
    assert req.uri == "sip:user;par=u%40example.net@example.com"
    assert split_uri(req.uri)[1] == "example.com"


# §3.1.1.10 style: several transports in one Via header, with odd spacing.
TRANSPORTS = wire(
    """
MESSAGE sip:room@example.com SIP/2.0
To: sip:room@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: transports.kijh4akdnaqjkwendsasfdj
CSeq: 60 MESSAGE
Via: SIP/2.0/UDP t1.example.com ; branch = z9hG4bKkdjuw ; rport, SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf,
 SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
v: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
l: 0
"""
)


def test_transports_in_one_via() -> None:
    req = request(TRANSPORTS)
    assert req.branch == "z9hG4bKkdjuw"
    assert req.via_sent_by == "t1.example.com"
    assert len(req.header_list("Via")) == 2
    assert server_key(req) == ("3261", "z9hG4bKkdjuw", "t1.example.com", "MESSAGE")


# §3.1.1.11 style: a multipart body that itself holds blank lines.
MPART_BODY = (
    b"--boundary42\r\nContent-Type: text/plain\r\n\r\nhello\r\n\r\n"
    b"--boundary42\r\nContent-Type: text/html\r\n\r\n<b>hello</b>\r\n--boundary42--\r\n"
)
MPART = wire(
    f"""
MESSAGE sip:room@example.com SIP/2.0
To: sip:room@example.com
From: Alice <sip:alice@example.com>;tag=a
Max-Forwards: 70
Call-ID: mpart01.0ha0isndaksdjweiafasdk3
CSeq: 8 MESSAGE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw
Content-Type: multipart/alternative;boundary=boundary42
Content-Length: {len(MPART_BODY)}
""",
    MPART_BODY,
)


def test_mpart_body_with_blank_lines_kept_whole() -> None:
    assert request(MPART).body == MPART_BODY


# §3.1.1.12/13 style: odd reason phrases.
def test_unreason_and_noreason_responses() -> None:
    base = """
SIP/2.0 {status}
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 MESSAGE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 0
"""
    odd = parse(wire(base.format(status="200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e")))
    assert isinstance(odd, Response)
    assert (odd.code, odd.reason) == (200, "= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e")
    empty = parse(wire(base.format(status="100 ")))
    assert isinstance(empty, Response)
    assert (empty.code, empty.reason) == (100, "")


# IPv6 references in the Request-URI and Via (RFC 5118 style).
IPV6 = wire(
    """
REGISTER sip:[2001:db8::10] SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=81x2
Via: SIP/2.0/UDP [2001:DB8::9:1]:6050;branch=z9hG4bKas3-111
Call-ID: SSG9559905523997077@hlau_4100
Max-Forwards: 70
Contact: "Caller" <sip:caller@[2001:db8::1]>
CSeq: 98176 REGISTER
Content-Length: 0
"""
)


def test_ipv6_references() -> None:
    req = request(IPV6)
    assert req.uri == "sip:[2001:db8::10]"
    assert req.via_sent_by == "[2001:db8::9:1]:6050"


def test_bare_lf_everywhere_and_zero_max_forwards() -> None:
    data = (
        b"MESSAGE sip:room@example.com SIP/2.0\n"
        b"Via: SIP/2.0/UDP 192.0.2.1 ; branch = z9hG4bKlf ; received = 192.0.2.1\n"
        b"Max-Forwards: 0\n"
        b"From: <sip:a@example.com>;tag=1\n"
        b"To: <sip:room@example.com>\n"
        b"cAlL-iD: lf@x\n"
        b"CSeq: 1 MESSAGE\n"
        b"Content-Length: 3\n"
        b"\n"
        b"a\nb"
    )
    req = request(data)
    assert req.max_forwards == 0
    assert req.branch == "z9hG4bKlf"
    assert req.call_id == "lf@x"
    assert req.body == b"a\nb"


# --- invalid ---------------------------------------------------------------------------

VALID = """
MESSAGE sip:room@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKtorture
Max-Forwards: 70
From: <sip:alice@example.com>;tag=t1
To: <sip:room@example.com>
Call-ID: torture@192.0.2.1
CSeq: 1 MESSAGE
Content-Type: text/plain
Content-Length: 5
"""


def test_the_base_of_the_invalid_cases_is_valid() -> None:
    assert request(wire(VALID, b"hello")).call_id == "torture@192.0.2.1"


def mutate(old: str, new: str, body: bytes = b"hello", base: str = VALID) -> bytes:
    assert old in base, old
    return wire(base.replace(old, new, 1), body)


INVALID = {
    # §3.1.2.1 badinv01 style: a mandatory header missing.
    "missing Call-ID": (mutate("Call-ID: torture@192.0.2.1\n", ""), "Missing Call-ID"),
    "missing From": (mutate("From: <sip:alice@example.com>;tag=t1\n", ""), "Missing From"),
    "missing To": (mutate("To: <sip:room@example.com>\n", ""), "Missing To"),
    "missing Via": (mutate("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKtorture\n", ""),
                    "Missing Via"),
    "missing CSeq": (mutate("CSeq: 1 MESSAGE\n", ""), "Missing CSeq"),
    # §3.1.2.2 clerr style: Content-Length larger than the body.
    "clerr": (mutate("Content-Length: 5", "Content-Length: 9999"), "Content-Length mismatch"),
    # §3.1.2.4 ncl style: negative Content-Length.
    "ncl": (mutate("Content-Length: 5", "Content-Length: -999"), "Invalid Content-Length"),
    "non-numeric Content-Length": (mutate("Content-Length: 5", "l: five"),
                                   "Invalid Content-Length"),
    # §3.1.2.5 scalar02 style: scalars out of range.
    "overlarge Max-Forwards": (mutate("Max-Forwards: 70", "Max-Forwards: 300"),
                               "Invalid Max-Forwards"),
    "overlarge CSeq": (mutate("CSeq: 1 MESSAGE", "CSeq: 36893488147419103232 MESSAGE"),
                       "Invalid CSeq"),
    "non-numeric Max-Forwards": (mutate("Max-Forwards: 70", "Max-Forwards: 7O"),
                                 "Invalid Max-Forwards"),
    # §3.1.2.6 non-numeric CSeq.
    "non-numeric CSeq": (mutate("CSeq: 1 MESSAGE", "CSeq: caser MESSAGE"), "Invalid CSeq"),
    "CSeq without method": (mutate("CSeq: 1 MESSAGE", "CSeq: 1"), "Invalid CSeq"),
    # §3.1.2.9 / §3.4.1 style: method and CSeq disagree.
    "CSeq method mismatch": (mutate("CSeq: 1 MESSAGE", "CSeq: 1 REGISTER"),
                             "CSeq method mismatch"),
    "CSeq method case": (mutate("CSeq: 1 MESSAGE", "CSeq: 1 message"), "CSeq method mismatch"),
    # §3.1.2.7 / §3.1.2.10 style: whitespace or brackets in the Request-URI.
    "LWS in Request-URI": (mutate("sip:room@example.com SIP", "sip:room@example.com; lr SIP"),
                           "Malformed start line"),
    "bracketed Request-URI": (
        mutate("sip:room@example.com SIP", "<sip:room@example.com> SIP"),
        "Invalid Request-URI",
    ),
    # §3.3.3 style: unknown scheme in the Request-URI (RFC 3261 would say 416).
    "unknown scheme": (mutate("sip:room@example.com SIP", "nobarr:room@example.com SIP"),
                       "Unsupported URI scheme"),
    # §3.1.2.15 / §3.3.? style: bad SIP version.
    "bad version": (mutate(" SIP/2.0\n", " SIP/7.0\n"), "Unsupported SIP version"),
    # §3.1.2.16 style: unterminated quoted display name.
    "unbalanced quote": (mutate("From: <sip:alice", 'From: "Alice <sip:alice'), "Invalid From"),
    "empty From": (mutate("From: <sip:alice@example.com>;tag=t1", "From:"), "Invalid From"),
    "unknown scheme in To": (mutate("To: <sip:room@example.com>", "To: <http://x.example>"),
                             "Invalid To"),
    # §3.1.2.19 style: two different values in a single-value header.
    "two Call-IDs": (mutate("Call-ID: torture@192.0.2.1\n",
                            "Call-ID: torture@192.0.2.1\ni: other@192.0.2.1\n"),
                     "Multiple Call-ID headers"),
    "two To": (mutate("To: <sip:room@example.com>\n",
                      "To: <sip:room@example.com>\nt: <sip:other@example.com>\n"),
               "Multiple To headers"),
    "Via without sent-by": (mutate("SIP/2.0/UDP 192.0.2.1;", "SIP/2.0/UDP ;"), "Invalid Via"),
    "Via without version": (mutate("SIP/2.0/UDP", "SIP/UDP"), "Invalid Via"),
    "space in header name": (mutate("Max-Forwards:", "Max Forwards:"), "Invalid header name"),
    "no colon": (mutate("Max-Forwards: 70", "Max-Forwards 70"), "Malformed header line"),
    "trailing space in start line": (mutate(" SIP/2.0\n", " SIP/2.0 \n"), "Malformed start line"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid(case: str) -> None:
    data, reason = INVALID[case]
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert info.value.reason == reason
    # A 400 can be salvaged whenever there is a Via to answer along (a missing or empty
    # header is left out of it).
    salvaged = salvage_response(data, 400, info.value.reason)
    assert (salvaged is None) == (case == "missing Via")
    if salvaged is not None:
        assert salvaged.startswith(f"SIP/2.0 400 {reason}\r\n".encode())


def test_missing_body_separator() -> None:
    data = wire(VALID).removesuffix(b"\r\n\r\n")
    with pytest.raises(SipParseError, match="Missing end of headers"):
        parse(data)


def test_folded_start_line() -> None:
    data = mutate("MESSAGE sip:room@example.com SIP/2.0\n",
                  "MESSAGE sip:room@example.com SIP/2.0\n extra\n")  # fmt: skip
    with pytest.raises(SipParseError, match="Invalid header folding"):
        parse(data)
