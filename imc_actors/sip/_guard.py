"""Guard and normalisation run before sipmessage sees a byte.

sipmessage is a correct but trusting parser: its ``Headers.add`` is quadratic in the number of
header names and its grammars are regular expressions that can backtrack on long lines. This
module bounds the input (size, header lines, line length), then undoes the three liberties RFC
3261 allows that sipmessage does not (bare LF line ends, folded header lines, whitespace between
a header name and its colon), splitting the head into ``(canonical name, value)`` pairs in the
same single pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from sipmessage.message import COMPACT_FORMS

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_HEADER_LINES",
    "MAX_FIELD",
    "MAX_LINE",
    "MAX_MESSAGE",
    "ParserLimits",
    "SipParseError",
    "canonical_name",
    "forget_traceback",
    "split_message",
]

@dataclass(frozen=True)
class ParserLimits:
    """What the parser accepts (config ``sip_max_message``, ``sip_max_header_lines``,
    ``sip_max_line``, ``sip_max_field``); process-wide, see
    :func:`imc_actors.sip.set_parser_limits`.

    ``max_message``: largest message, in bytes (a UDP datagram is smaller). ``max_header_lines``:
    most header lines (physical lines after the start line, continuation lines included).
    ``max_line``: longest line, in bytes; also the longest header value once folded lines are
    joined. ``max_field``: longest Request-URI, top Via, From or To value handed to
    sipmessage's grammars, in characters: their regular expressions and parameter loops cost
    up to ~0.3 µs a character, so the default keeps the worst message, all four at the limit,
    within a couple of milliseconds.
    """

    max_message: int = 64 * 1024
    max_header_lines: int = 100
    max_line: int = 8 * 1024
    max_field: int = 2 * 1024

    #: The ranges each may be set in (the upper ends bound the parser's work per message).
    RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "max_message": (1024, 1024 * 1024),
        "max_header_lines": (16, 1000),
        "max_line": (256, 64 * 1024),
        "max_field": (256, 8 * 1024),
    }

    def problem(self) -> tuple[str, str] | None:
        """(field, why) for the first value out of its range or order, else None."""
        for name, (low, high) in self.RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                return name, f"must be from {low} to {high}"
        # named with its value: after a lower max_message it is the untouched default that fails
        if self.max_line > self.max_message:
            return "max_line", (
                f"must be at most max_message ({self.max_message}); it is {self.max_line}: "
                "lower it too"
            )
        if self.max_field > self.max_line:
            return "max_field", (
                f"must be at most max_line ({self.max_line}); it is {self.max_field}: lower it too"
            )
        return None


DEFAULT_LIMITS = ParserLimits()
# The limits in force (the module globals the parser reads; set_parser_limits changes them).
#: Largest message :func:`imc_actors.sip.parse` accepts, in bytes (a UDP datagram is smaller).
MAX_MESSAGE = DEFAULT_LIMITS.max_message
#: Most header lines (physical lines after the start line, continuation lines included).
MAX_HEADER_LINES = DEFAULT_LIMITS.max_header_lines
#: Longest line, in bytes; also the longest header value once folded lines are joined.
MAX_LINE = DEFAULT_LIMITS.max_line
#: Longest Request-URI, top Via, From or To value handed to sipmessage's grammars.
MAX_FIELD = DEFAULT_LIMITS.max_field


class SipParseError(ValueError):
    """A message that cannot be accepted.

    ``reason`` is a short phrase fit for the reason phrase of a 400 (``"Missing Call-ID"``,
    ``"Too many headers"``). ``code`` is the status RFC 3261 suggests for the fault: 400 unless
    the fault has its own code (413 too large, 416 unsupported URI scheme, 505 version).
    """

    def __init__(self, reason: str, code: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


# Canonical spelling of the header names this server reads or copies, keyed by lower case,
# plus every compact form sipmessage knows (RFC 3261 §7.3.3 and later RFCs).
_CANONICAL_NAMES = (
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "In-Reply-To",
    "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "Path", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Record-Route", "Reply-To",
    "Require", "Retry-After", "Route", "Server", "Subject", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)  # fmt: skip
KNOWN_NAMES: dict[str, str] = {name.lower(): name for name in _CANONICAL_NAMES}
KNOWN_NAMES.update(COMPACT_FORMS)
#: The same, keyed by the spellings seen on the wire (canonical, lower case, compact forms), so
#: that most header names are found without lower-casing them first.
_EXACT_NAMES: dict[str, str] = {**KNOWN_NAMES, **{name: name for name in KNOWN_NAMES.values()}}


def forget_traceback(exc: BaseException) -> None:
    """Cut ``exc``'s traceback once it is caught. sipmessage raises one shared ``ValueError``
    instance per grammar (``VIA_EXCEPTION``, ``ADDRESS_EXCEPTION``), and each raise chains the
    raising frames onto that instance's ``__traceback__``: without this, every refused Via or
    address would keep its frames, and the message bytes in them, alive for good."""
    exc.__traceback__ = None


_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")


def canonical_name(name: str) -> str:
    """The canonical spelling of header ``name``: compact forms expanded (``f`` -> ``From``),
    known names in RFC spelling (``call-id`` -> ``Call-ID``), other names unchanged."""
    return KNOWN_NAMES.get(name.lower(), name)


def split_message(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Guard, normalise and split ``data`` into ``(start line, headers, rest)``.

    ``headers`` is every header in received order as ``(canonical name, value)`` with folded
    lines joined by one space and the value stripped of SP/HTAB. ``rest`` is every byte after
    the blank line that ends the head (the body, not yet cut to Content-Length). Leading
    CRLFs are skipped. Raises :class:`SipParseError`; never anything else.
    """
    if len(data) > MAX_MESSAGE:
        raise SipParseError("Message too large", 513)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("Empty message")
    end = _BLANK_LINE.search(data)
    if end is None:
        if b"\n" not in data and b"\r" in data:
            raise SipParseError("Bad line ending")  # bare CRs only: no line is a line
        if data.count(b"\n") > MAX_HEADER_LINES:
            raise SipParseError("Too many headers")
        raise SipParseError("Missing end of headers")
    head = data[: end.start()]
    rest = data[end.end() :]
    if head.count(b"\n") > MAX_HEADER_LINES:
        raise SipParseError("Too many headers")
    if len(head) > MAX_LINE and any(
        len(line.rstrip(b"\r")) > MAX_LINE for line in head.split(b"\n")
    ):
        raise SipParseError("Line too long")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("Invalid UTF-8") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").removesuffix("\r")
        if "\r" in text:
            raise SipParseError("Bad line ending")
    lines = text.split("\n")
    headers: list[tuple[str, str]] = []
    append = headers.append
    known = KNOWN_NAMES
    exact = _EXACT_NAMES
    folded = "\n " in text or "\n\t" in text
    for line in lines[1:]:
        if folded and line[:1] in (" ", "\t"):
            # Continuation line (RFC 3261 §7.3.1): joined to the previous value by one space.
            if not headers:
                raise SipParseError("Invalid header folding")
            name, value = headers[-1]
            more = line.strip(" \t")
            if more:
                value = f"{value} {more}" if value else more
                if len(value) > MAX_LINE:
                    raise SipParseError("Line too long")
                headers[-1] = (name, value)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError("Malformed header line")
        canonical = exact.get(name)  # the usual spellings, without lower-casing each name
        if canonical is not None:
            append((canonical, value.strip(" \t")))
            continue
        name = name.rstrip(" \t")
        canonical = known.get(name.lower())
        if canonical is None:
            if _TOKEN.fullmatch(name) is None:
                raise SipParseError("Invalid header name")
            canonical = name
        append((canonical, value.strip(" \t")))
    return lines[0], headers, rest
