"""Requests and responses as wire bytes.

Everything is plain text assembly: the headers a response must echo (Via, From, To, Call-ID,
CSeq) are copied from :attr:`Request.headers` exactly as received, never re-serialised
through sipmessage (whose ``Parameters.__str__`` percent-encodes tags). ``Content-Length``
is always the last header.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from .message import Request

__all__ = [
    "build_request",
    "build_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "reason_phrase",
]

#: Default body type when a body is given without one.
DEFAULT_CONTENT_TYPE = "text/plain;charset=UTF-8"

_REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
_CLASS_REASONS = {
    1: "Trying",
    2: "OK",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def reason_phrase(code: int) -> str:
    """RFC 3261 §21 reason phrase for ``code`` (the class's name for unlisted codes)."""
    return _REASONS.get(code) or _CLASS_REASONS.get(code // 100, "Unknown")


class _RandomPool:
    """Random hex from the OS's CSPRNG, read 4 KiB at a time: one ``getrandom`` system call
    per few hundred identifiers instead of one each (three per outgoing request)."""

    __slots__ = ("_data", "_pos")

    def __init__(self) -> None:
        self._data = b""
        self._pos = 0

    def hex(self, nbytes: int) -> str:
        pos = self._pos
        end = pos + nbytes
        if end > len(self._data):
            self._data = secrets.token_bytes(4096)
            pos, end = 0, nbytes
        self._pos = end
        return self._data[pos:end].hex()


_random = _RandomPool()

def new_mark() -> str:
    """A fresh mark for :func:`new_branch` and :func:`new_call_id`: 32 random bits in hex. An
    endpoint that puts its own mark in every branch and Call-ID it makes recognises its own
    requests when they come back (a loop; see :func:`is_own_branch`)."""
    return secrets.token_hex(4)


def new_branch(mark: str = "") -> str:
    """A fresh Via branch: the RFC 3261 magic cookie ``z9hG4bK``, ``mark``, then 64 random
    bits in hex."""
    return "z9hG4bK" + mark + _random.hex(8)


def is_own_branch(via: str, mark: str) -> bool:
    """True when the Via header value ``via`` (one or several comma-joined Vias) holds a
    branch made by :func:`new_branch` with ``mark``."""
    return bool(mark) and ("z9hG4bK" + mark) in via


def is_own_call_id(text: str, mark: str) -> bool:
    """True when ``text`` (a Call-ID, or an In-Reply-To list of them) names a Call-ID made by
    :func:`new_call_id` with ``mark``."""
    return bool(mark) and any(part.strip().startswith(mark) for part in text.split(","))


def new_tag() -> str:
    """A fresh From/To tag: 48 random bits in hex (RFC 3261 §19.3 asks for at least 32)."""
    return _random.hex(6)


def new_call_id(host: str, mark: str = "") -> str:
    """A fresh Call-ID ``<mark><96 random bits in hex>@host``."""
    return f"{mark}{_random.hex(12)}@{host}"


def _check(text: str, what: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError(f"{what} contains CR or LF: {text!r}")
    return text


def _tail(
    lines: list[str], headers: Iterable[tuple[str, str]], body: bytes, content_type: str | None
) -> bytes:
    """Append ``headers``, Content-Type, Content-Length and the body; return the bytes."""
    has_type = False
    for name, value in headers:
        lines.append(f"{_check(name, 'header name')}: {_check(value, 'header value')}")
        has_type = has_type or name.lower() in ("content-type", "c")
    if content_type is not None:
        lines.append(f"Content-Type: {_check(content_type, 'content type')}")
    elif body and not has_type:
        lines.append(f"Content-Type: {DEFAULT_CONTENT_TYPE}")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode() + body


def build_response(
    request: Request,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """The bytes of a ``code`` response to ``request`` (RFC 3261 §8.2.6).

    Copies the received text of every Via (in order), From, To, Call-ID and CSeq. When To
    has no tag and ``code`` > 100, appends ``;tag=<to_tag>`` (a fresh :func:`new_tag` when
    ``to_tag`` is None: RFC 3261 §8.2.6.2 requires one). ``reason`` defaults to
    :func:`reason_phrase`. Then ``headers`` in order, then ``Content-Type`` (``content_type``,
    or text/plain when there is a body and ``headers`` has none), then ``Content-Length``.

    Raises ValueError for a code outside 100-699 or CR/LF in any text given.
    """
    if not 100 <= code <= 699:
        raise ValueError(f"status code out of range: {code}")
    phrase = reason_phrase(code) if reason is None else _check(reason, "reason")
    lines = [f"SIP/2.0 {code} {phrase}"]
    from_ = to = call_id = cseq = None
    for name, value in request.headers:
        if name == "Via":
            lines.append(f"Via: {value}")
        elif name == "From":
            from_ = from_ or value
        elif name == "To":
            to = to or value
        elif name == "Call-ID":
            call_id = call_id or value
        elif name == "CSeq":
            cseq = cseq or value
    if to is None:  # a Request built by hand; parse() guarantees To
        to = f"<{request.to_uri}>"
    if code > 100 and request.to_tag is None:
        to = f"{to};tag={to_tag or new_tag()}"
    lines.append(f"From: {from_ if from_ is not None else f'<{request.from_uri}>'}")
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {call_id if call_id is not None else request.call_id}")
    lines.append(f"CSeq: {cseq if cseq is not None else f'{request.cseq} {request.cseq_method}'}")
    return _tail(lines, headers, body, content_type)


def build_request(
    method: str,
    request_uri: str,
    *,
    from_uri: str,
    from_tag: str,
    to_uri: str,
    call_id: str,
    cseq: int,
    via_host: str,
    via_port: int | None,
    via_transport: str,
    branch: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """The bytes of a new out-of-dialog request (RFC 3261 §8.1.1).

    Header order: ``Via: SIP/2.0/<via_transport> <via_host>[:<via_port>];branch=<branch>;rport``
    (an IPv6 ``via_host`` is bracketed), ``Max-Forwards: 70``, ``From: <from_uri>;tag=<from_tag>``,
    ``To: <to_uri>``, ``Call-ID``, ``CSeq: <cseq> <method>``, then ``headers`` in order, then
    ``Content-Type`` (``content_type``, or text/plain when there is a body and ``headers`` has
    none), then ``Content-Length``.

    Raises ValueError for CR/LF in any text given.
    """
    for text, what in (
        (method, "method"),
        (request_uri, "request URI"),
        (from_uri, "From URI"),
        (from_tag, "From tag"),
        (to_uri, "To URI"),
        (call_id, "Call-ID"),
        (via_host, "Via host"),
        (via_transport, "Via transport"),
        (branch, "branch"),
    ):
        _check(text, what)
    host = f"[{via_host}]" if ":" in via_host and not via_host.startswith("[") else via_host
    sent_by = host if via_port is None else f"{host}:{via_port}"
    lines = [
        f"{method} {request_uri} SIP/2.0",
        f"Via: SIP/2.0/{via_transport.upper()} {sent_by};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag={from_tag}",
        f"To: <{to_uri}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
    ]
    return _tail(lines, headers, body, content_type)
