"""Bytes in, :class:`Request` / :class:`Response` out.

Three entry points, none of which raises anything but :class:`SipParseError`:

- :func:`parse` turns one complete message (a UDP datagram, or one frame cut by
  :func:`parse_stream`) into a validated record;
- :func:`parse_stream` cuts complete messages off the front of a TCP receive buffer;
- :func:`salvage_response` answers a request :func:`parse` refused, from its raw lines.

Division of labour: :mod:`._guard` bounds and normalises the input and splits the head into
header lines in one pass; sipmessage parses the start line (Request-URI included) and the
structured values (``Via``, ``From``/``To`` addresses and their URIs and parameters, ``CSeq``);
this module checks what RFC 3261 §8.1.1 makes mandatory and picks out the fields the server
routes on. The headers themselves are kept as received text, never re-serialised.
"""

from __future__ import annotations

import re
from functools import lru_cache

from sipmessage import URI, CSeq, Parameters, Via
from sipmessage.address import ADDRESS_EXCEPTION, ADDRESS_PATTERNS
from sipmessage.grammar import simplify_whitespace
from sipmessage.message import Message as _SipMessage
from sipmessage.message import Request as _SipRequest
from sipmessage.message import Response as _SipResponse
from sipmessage.via import VIA_EXCEPTION

from ._guard import (
    _BLANK_LINE,
    _TOKEN,
    KNOWN_NAMES,
    MAX_FIELD,
    MAX_HEADER_LINES,
    MAX_MESSAGE,
    SipParseError,
    forget_traceback,
    split_message,
)
from .build import new_tag, reason_phrase
from .message import Request, Response

__all__ = ["SipParseError", "parse", "parse_stream", "quick_response", "salvage_response"]

# The start line and the From/To values of the messages for one room repeat, and their
# parsing is most of the cost of parse(): both are memoised (results are immutable; errors
# are not cached). The start lines (one per room URI) and the URIs (one per user and per room)
# get MEMO_ENTRIES each: an LRU smaller than the working set hits nothing at all (3,000 users
# in 3,000 rooms more than doubled the cost of a parse with 1,024), and an entry is about
# 0.9 KB, so the two cost at most about 15 MB.
MEMO_ENTRIES = 8192

# Headers that RFC 3261 §7.3.1 allows only once; a second, different value is a 400
# (RFC 4475 §3.1.2.19).
_SINGLE = frozenset(["From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type"])
_SCHEMES = ("sip", "sips", "tel")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")  # RFC 3986 §3.1
_MAX_CSEQ = 2**31 - 1
# sipmessage's exceptions that are one instance, raised again and again (see forget_traceback).
_SHARED_ERRORS = (VIA_EXCEPTION, ADDRESS_EXCEPTION)  # RFC 3261 §8.1.1.5: "MUST be less than 2**31"


def parse(data: bytes) -> Request | Response:
    """Parse one complete SIP message.

    ``data`` is a whole datagram or one frame from :func:`parse_stream`. Returns a
    :class:`Request` or :class:`Response` whose mandatory headers (Via, From, To, Call-ID,
    CSeq) are present and well-formed. A body longer than Content-Length is cut to it
    (RFC 3261 §18.3); a shorter one is an error; without Content-Length the body is the rest
    of ``data``.

    Raises :class:`SipParseError` (and nothing else) with a ``reason`` fit for a 400.
    """
    try:
        return _parse(bytes(data))
    except SipParseError:
        raise
    except Exception as exc:  # sipmessage's ValueError/KeyError/IndexError, or our own bug
        if exc in _SHARED_ERRORS:
            forget_traceback(exc)
        raise SipParseError("Malformed message") from exc


#: A 2xx status line, then the top Via as the first header line, in the spelling this server
#: sends (and UAs copy back): ``Via: SIP/2.0/<transport> <sent-by>[;params];branch=<token>``.
_QUICK_HEAD = re.compile(
    rb"SIP/2\.0 (2[0-9][0-9]) ([^\r\n]*)\r\n"
    rb"Via: SIP/2\.0/[A-Za-z]+ [^;,\r\n]+;(?:[^,\r\n]*;)?branch=([A-Za-z0-9.!%*_+`'~-]+)[;,\r]"
)
_QUICK_CSEQ = re.compile(rb"\r\nCSeq: [0-9]{1,10} ([A-Za-z]{1,32})\r\n")
_QUICK_NEEDED = (b"\nfrom:", b"\nto:", b"\ncall-id:")


def quick_response(data: bytes) -> tuple[int, str, str, str] | None:
    """``(code, reason, branch, CSeq method)`` of a 2xx response laid out as the answers to this
    server's own requests are (the status line; the top Via, first, as ``Via: SIP/2.0/…``; a
    ``CSeq: <n> <method>`` line; a blank line ending the head), read without parsing the rest:
    most datagrams a busy room's server receives are such 200s to its notices. None for
    anything else: then :func:`parse`. A response :func:`parse` accepts gives the same four
    values here; one it refuses for a header value read here only for presence (From, To,
    Call-ID) or not at all may pass. For matching a final response to a client transaction
    only (branch and method, RFC 3261 §17.1.3): a response is never answered, and such a 2xx
    ends its transaction as a well-formed one would."""
    head = _QUICK_HEAD.match(data)
    if head is None:
        return None
    start = head.end() - 1
    end = data.find(b"\r\n\r\n", start - 1)
    if end < 0 or end > MAX_MESSAGE:
        return None
    cseq = _QUICK_CSEQ.search(data, start - 1, end + 2)
    if cseq is None:
        return None
    rest = data[start - 1 : end + 2].lower()
    if rest.count(b"\ncseq:") != 1 or not all(name in rest for name in _QUICK_NEEDED):
        return None  # a second CSeq, or From, To or Call-ID missing or compact: parse() decides
    try:
        reason = head.group(2).decode()
    except UnicodeDecodeError:
        return None
    if "\x00" in reason:
        return None
    return int(head.group(1)), reason, head.group(3).decode(), cseq.group(1).decode()


def _parse(data: bytes) -> Request | Response:
    start, headers, rest = split_message(data)
    first_line = _start_line(start)

    first: dict[str, str] = {}
    for name, value in headers:
        if name in first:
            if name in _SINGLE and first[name] != value:
                raise SipParseError(f"Multiple {name} headers")
        else:
            first[name] = value
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in first:
            raise SipParseError(f"Missing {name}")

    via_host, via_port, branch = _top_via(first["Via"])
    call_id = first["Call-ID"]
    if not call_id or " " in call_id or "\t" in call_id:
        raise SipParseError("Invalid Call-ID")
    cseq = _cseq(first["CSeq"])
    body = _body(first.get("Content-Length"), rest)

    if isinstance(first_line, _SipRequest):
        method = first_line.method
        if cseq.method != method:
            raise SipParseError("CSeq method mismatch")
        from_uri, from_tag = _address(first["From"], "From")
        to_uri, to_tag = _address(first["To"], "To")
        sent_by = via_host if via_port is None else f"{via_host}:{via_port}"
        return Request(
            method=method,
            uri=start.split(" ", 2)[1],
            headers=tuple(headers),
            body=body,
            call_id=call_id,
            cseq=cseq.sequence,
            cseq_method=cseq.method,
            from_uri=from_uri,
            from_tag=from_tag,
            to_uri=to_uri,
            to_tag=to_tag,
            branch=branch,
            via_sent_by=sent_by.lower(),
            max_forwards=_max_forwards(first.get("Max-Forwards")),
        )
    return Response(
        code=first_line.code,
        reason=first_line.phrase,
        headers=tuple(headers),
        body=body,
        call_id=call_id,
        cseq=cseq.sequence,
        cseq_method=cseq.method,
        branch=branch,
    )


@lru_cache(maxsize=MEMO_ENTRIES)
def _start_line(start: str) -> _SipRequest | _SipResponse:
    """sipmessage's reading of the start line, or the reason it is unacceptable."""
    parts = start.split(" ", 2)
    if len(parts) != 3:
        raise SipParseError("Malformed start line")
    if parts[0].startswith("SIP/"):
        if parts[0] != "SIP/2.0":
            raise SipParseError("Unsupported SIP version", 505)
        code = parts[1]
        if not (len(code) == 3 and code.isascii() and code.isdigit() and code[0] in "123456"):
            raise SipParseError("Invalid status code")
    else:
        if _TOKEN.fullmatch(parts[0]) is None:
            raise SipParseError("Malformed start line")
        if parts[2] != "SIP/2.0":
            if parts[2].startswith("SIP/") and " " not in parts[2]:
                raise SipParseError("Unsupported SIP version", 505)
            raise SipParseError("Malformed start line")
        if len(parts[1]) > MAX_FIELD:
            raise SipParseError("Request-URI too long", 414)
    try:
        return _SipMessage.parse(start.encode() + b"\r\n\r\n")
    except Exception:
        pass
    if parts[0].startswith("SIP/"):
        raise SipParseError("Malformed start line")
    # sipmessage wants a lower-case scheme; RFC 3261 §19.1.4 says schemes are case-insensitive.
    scheme, colon, _ = parts[1].partition(":")
    if colon and scheme.lower() in _SCHEMES:
        try:
            return _SipRequest(method=parts[0], uri=_uri(parts[1]))
        except ValueError:
            pass
    elif colon and _SCHEME.fullmatch(scheme):
        raise SipParseError("Unsupported URI scheme", 416)
    raise SipParseError("Invalid Request-URI")


def _top_via(value: str) -> tuple[str, int | None, str | None]:
    """``(host, port, branch)`` of the first element of the first Via line; later elements are
    not this hop's business (a port outside 1-65535 is refused: the answer could not be sent
    there). (A quoted parameter may hold a comma, so then the whole line is parsed.)

    Fast path, for the usual ``SIP/2.0/UDP host:port;branch=…;rport``: the protocol and
    sent-by part repeats from message to message and its sipmessage reading is memoised; the
    parameters are split here when every one is a plain token (or ``token=token``), which
    is exactly what sipmessage's grammar reads the same way. Anything else (quotes, escapes,
    whitespace, IPv6) takes sipmessage's full parse.
    """
    top = value if '"' in value else value.partition(",")[0]
    if len(top) > MAX_FIELD:
        raise SipParseError("Via too long")
    head, semi, params = top.partition(";")
    if semi and head[-1:] not in (" ", "\t") and " " not in params and "\t" not in params:
        parsed = _plain_params(params)
        if parsed is not None:
            host, port = _sent_by(head)
            return host, _port(port), parsed.get("branch")
    try:
        via = Via.parse_many(top)[0]
    except (ValueError, IndexError) as exc:
        forget_traceback(exc)
        raise SipParseError("Invalid Via") from None
    return via.host, _port(via.port), via.parameters.get("branch")


def _port(port: int | None) -> int | None:
    if port is not None and not 0 < port <= 65535:
        raise SipParseError("Invalid Via")
    return port


@lru_cache(maxsize=1024)
def _sent_by(head: str) -> tuple[str, int | None]:
    """``(host, port)`` of a Via's ``SIP/2.0/<transport> <sent-by>`` part, by sipmessage."""
    try:
        via = Via.parse_many(head)[0]
    except (ValueError, IndexError) as exc:
        forget_traceback(exc)
        raise SipParseError("Invalid Via") from None
    return via.host, via.port


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!*_+`'~")


def _plain_params(text: str) -> dict[str, str | None] | None:
    """``name[=value]`` parameters separated by ``;`` (``text`` after the first ``;``) when every
    name and value is a non-empty plain token (no escapes); None otherwise. For such text this
    is what sipmessage's ``Parameters.parse`` returns."""
    result: dict[str, str | None] = {}
    plain = _PLAIN
    for bit in text.split(";"):
        name, eq, val = bit.partition("=")
        if not name or not plain.issuperset(name):
            return None
        if eq:
            if not val or not plain.issuperset(val):
                return None
            result[name] = val
        else:
            result[name] = None
    return result


@lru_cache(maxsize=1024)
def _cseq(value: str) -> CSeq:
    try:
        cseq = CSeq.parse(value)
    except ValueError:
        raise SipParseError("Invalid CSeq") from None
    if not value.isascii() or cseq.sequence > _MAX_CSEQ:
        raise SipParseError("Invalid CSeq")
    return cseq


def _address(value: str, name: str) -> tuple[str, str | None]:
    """``(URI text, tag)`` of a From/To value (see :func:`_address_slow`).

    Fast path for ``<uri>;tag=…`` with plain-token parameters and no whitespace (the tag
    changes with every dialog, so memoising the whole value would not help): the URI's check
    is memoised, the parameters are split here, as sipmessage's grammar would.
    """
    if value[:1] == "<" and len(value) <= MAX_FIELD and " " not in value and "\t" not in value:
        end = value.find(">")
        if end > 1:
            rest = value[end + 1 :]
            params = _plain_params(rest[1:]) if rest[:1] == ";" else ({} if not rest else None)
            if params is not None:
                uri = value[1:end]
                try:
                    _uri(uri)
                except ValueError:
                    raise SipParseError(f"Invalid {name}") from None
                for key, param in params.items():
                    if key.lower() == "tag":
                        if not param:
                            raise SipParseError(f"Invalid {name}")
                        return uri, param
                return uri, None
    return _address_slow(value, name)


@lru_cache(maxsize=1024)
def _address_slow(value: str, name: str) -> tuple[str, str | None]:
    """``(URI text, tag)`` of a From/To value, checked by sipmessage's address grammar.

    The patterns are sipmessage's own (``Address.parse`` runs the same ones); matching them
    here keeps the URI as written instead of sipmessage's re-quoted ``str(URI)``, and lets the
    URI check be memoised apart from the (per-dialog) tag.
    """
    if len(value) > MAX_FIELD:
        raise SipParseError(f"{name} too long")
    text = simplify_whitespace(value)
    for pattern in ADDRESS_PATTERNS:
        match = pattern.match(text)
        if match is not None:
            break
    else:
        raise SipParseError(f"Invalid {name}")
    if match.end() != len(text):
        raise SipParseError(f"Invalid {name}")
    uri, params = match.group("uri", "parameters")
    try:
        _uri(uri)
        parameters = Parameters.parse(params) if params else None
    except ValueError:
        raise SipParseError(f"Invalid {name}") from None
    if not parameters:
        return uri, None
    for key, param in parameters.items():
        if key.lower() == "tag":
            if not param:
                raise SipParseError(f"Invalid {name}")
            return uri, param
    return uri, None


@lru_cache(maxsize=MEMO_ENTRIES)
def _uri(text: str) -> URI:
    """sipmessage's ``URI.parse``, also accepting an upper-case scheme (RFC 3261 §19.1.4)."""
    try:
        return URI.parse(text)
    except ValueError:
        scheme, colon, tail = text.partition(":")
        if colon and scheme != scheme.lower() and scheme.lower() in _SCHEMES:
            return URI.parse(f"{scheme.lower()}:{tail}")
        raise


def _max_forwards(value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 10 and int(value) <= 255):
        raise SipParseError("Invalid Max-Forwards")
    return int(value)


def _body(value: str | None, rest: bytes) -> bytes:
    if value is None:
        return rest
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise SipParseError("Invalid Content-Length")
    length = int(value)
    if length > len(rest):
        raise SipParseError("Content-Length mismatch")
    return rest if length == len(rest) else rest[:length]


def clear_caches() -> None:
    """Forget the memoised start lines, addresses and URIs (for honest timing in tests)."""
    _start_line.cache_clear()
    _address_slow.cache_clear()
    _uri.cache_clear()
    _sent_by.cache_clear()
    _cseq.cache_clear()


# --- TCP framing -------------------------------------------------------------------------

# Linear by construction: one greedy run per line, stripped afterwards (a pattern with
# optional blanks on both sides of a lazy group backtracks cubically on a run of spaces).
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:([^\r\n]*)", re.I | re.M)


def parse_stream(buffer: bytearray) -> list[bytes]:
    """Cut the complete messages off the front of a stream receive buffer.

    ``buffer`` is the bytes received so far on one TCP connection; complete messages (head,
    blank line, then exactly Content-Length body bytes) are removed from it and returned in
    order, ready for :func:`parse`. An incomplete message stays in ``buffer`` for the next
    call. CRs and LFs before a start line (RFC 5626 keep-alives) are dropped.

    Raises :class:`SipParseError` when framing is impossible: no Content-Length (mandatory on
    streams, RFC 3261 §18.3), an invalid one, two that differ, or a head or message over 64 KiB. The
    connection cannot be resynchronised after that; close it.
    """
    messages: list[bytes] = []
    while buffer:
        if buffer[0] in b"\r\n":
            del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
            if not buffer:
                break
        end = _BLANK_LINE.search(buffer)
        if end is None:
            if len(buffer) > MAX_MESSAGE:
                raise SipParseError("Message too large", 513)
            break
        match = _CONTENT_LENGTH.search(buffer, 0, end.start() + 1)
        if match is None:
            raise SipParseError("Missing Content-Length")
        value = match.group(1).strip(b" \t")
        again = _CONTENT_LENGTH.search(buffer, match.end(), end.start() + 1)
        if again is not None and again.group(1).strip(b" \t") != value:
            # which one frames the message? Waiting for the longer could hang the connection
            raise SipParseError("Multiple Content-Length headers")
        if not value.isdigit() or len(value) > 10:
            raise SipParseError("Invalid Content-Length")
        total = end.end() + int(value)
        if total > MAX_MESSAGE:
            raise SipParseError("Message too large", 513)
        if len(buffer) < total:
            break
        messages.append(bytes(buffer[:total]))
        del buffer[:total]
    return messages


# --- Salvage -----------------------------------------------------------------------------

_TAG_PARAM = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)
# Any line end: CRLF, or a bare LF or CR (RFC 3261 asks for CRLF; a peer that sends bare CRs
# still gets its 400).
_ANY_LINE_END = re.compile(rb"\r\n|\n|\r")
_SALVAGED = ("Via", "From", "To", "Call-ID", "CSeq")


def salvage_response(data: bytes, code: int, reason: str) -> bytes | None:
    """A ``code reason`` response to a request that :func:`parse` refused, or None.

    ``data`` is the raw message, with any line ends (CRLF, bare LF or bare CR). The response
    copies its raw Via lines (all, in order), then those of From, To (a tag added when it has
    none and ``code`` > 100), Call-ID and CSeq that are present and not empty, and ends with
    ``Content-Length: 0``. A missing or empty one is left out: RFC 3261 §8.2.6.2 has the
    response copy them, so what the request lacks the response lacks too (as Kamailio's
    sanity module answers). A first line that is no request line at all (binary junk, a
    truncated method) still gets its answer when a Via follows: the Via is what routes it
    back. Returns None only when there is nobody to answer: a response (a first line
    starting ``SIP/`` in any case, after any blanks), an ACK (by its first line or its CSeq;
    never answered), or no non-empty Via (the answer could not be routed back). Works on
    bytes; never raises for any ``data``.
    """
    if not 100 <= code <= 699 or "\r" in reason or "\n" in reason:
        raise ValueError(f"bad status {code} {reason!r}")
    data = bytes(data[:MAX_MESSAGE]).lstrip(b"\r\n")
    if data.lstrip(b" \t")[:4].upper() in (b"SIP/", b"ACK "):  # any case, any leading blanks
        return None
    lines = _ANY_LINE_END.split(data, MAX_HEADER_LINES + 1)[1 : MAX_HEADER_LINES + 1]
    found: dict[str, list[bytes]] = {}
    last: list[bytes] | None = None
    for line in lines:
        if not line:
            break  # the blank line that ends the head
        if line[:1] in (b" ", b"\t"):
            if last is not None and line.strip():
                last[-1] = (last[-1] + b" " + line.strip(b" \t")).strip(b" ")
            continue
        last = None
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        canonical = KNOWN_NAMES.get(name.rstrip(b" \t").decode("latin-1").lower())
        if canonical in _SALVAGED and (canonical == "Via" or canonical not in found):
            last = found.setdefault(canonical, [])
            last.append(value.strip(b" \t"))
    vias = [via for via in found.get("Via", ()) if via]
    if not vias:
        return None
    cseq = found.get("CSeq", (b"",))[0].split()
    if len(cseq) == 2 and cseq[1].upper() == b"ACK":  # an ACK behind a broken first line
        return None
    out = [f"SIP/2.0 {code} {reason or reason_phrase(code)}".encode()]
    out.extend(b"Via: " + via for via in vias)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = found.get(name, (b"",))[0]
        if not value:
            continue
        if name == "To" and code > 100 and _TAG_PARAM.search(value) is None:
            value += b";tag=" + new_tag().encode()
        out.append(name.encode() + b": " + value)
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)
