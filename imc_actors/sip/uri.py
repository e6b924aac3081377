"""SIP URIs as identities: rooms, members and senders (spec §1).

A URI is read with sipmessage (``URI.parse``, or ``Address.parse`` for a name-addr such as
``"Bob" <sip:bob@x>``) and reduced to ``user@host``: scheme, password, port, parameters and
display name are dropped. The host keeps its spelling; the user part is put in its
**canonical form** (:func:`canonical_user`): percent-escapes are decoded, and only the
characters that may not stand unescaped in a user part are escaped again, as ``%XX`` with
upper-case hex. So ``sip:%61lice@x`` and ``sip:alice@x`` name the same member (RFC 3261
§19.1.4 says they are equal), and ``imc%2Dmanager`` is ``imc-manager``. Every function but
:func:`canonical_user` raises ValueError for a string that is not a ``sip:``/``sips:`` URI
with a user part.
"""

from __future__ import annotations

import re
import urllib.parse
from functools import lru_cache

from sipmessage import URI, Address
from sipmessage.address import ADDRESS_PATTERNS
from sipmessage.grammar import simplify_whitespace

from ._guard import forget_traceback

__all__ = [
    "USER_SAFE",
    "aor_key",
    "canonical",
    "canonical_user",
    "complete_argument",
    "parse_sip_uri",
    "split_addresses",
    "split_outside",
    "split_uri",
    "split_user_host",
]

#: Characters a canonical user part holds unescaped: RFC 3261's ``unreserved`` and
#: ``user-unreserved`` except ``;``, ``?`` and ``/``, which stay escaped because they would be
#: ambiguous with URI parameters and headers where these URIs go (From/To, database rows).
USER_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,"
)
_QUOTE_SAFE = "".join(sorted(USER_SAFE))

# The ``user@host[:port][;params|?headers]`` after the scheme that complete_argument accepts:
# a user of :data:`USER_SAFE` characters and ``%XX`` escapes, a host name or ``[IPv6]``.
_USER = rf"(?:[{re.escape(_QUOTE_SAFE)}]|%[0-9A-Fa-f]{{2}})+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_URI_REST = re.compile(rf"(?P<user>{_USER})@(?P<host>{_HOST})(?::[0-9]{{1,5}})?(?:[;?].*)?")


def canonical_user(user: str) -> str:
    """The canonical form of the user part ``user`` (as written in a URI, escapes and all).

    Escapes are decoded; then every byte that is not in :data:`USER_SAFE` is escaped as
    ``%XX`` (upper-case hex), so two spellings RFC 3261 §19.1.4 calls equal become one string:
    ``%63hat`` -> ``chat``, ``a%2db`` -> ``a-b``, ``a b``/``a%20b`` -> ``a%20b``, ``a;b`` ->
    ``a%3Bb``. A ``%`` not followed by two hex digits is a literal percent (``%25``). Never
    raises; a user that is already canonical comes back as it is.
    """
    if USER_SAFE.issuperset(user):
        return user
    return urllib.parse.quote_from_bytes(urllib.parse.unquote_to_bytes(user), safe=_QUOTE_SAFE)


def parse_sip_uri(text: str) -> URI:
    """``text`` (a bare URI, no ``<>``) read by sipmessage, its scheme case-insensitive; a
    ValueError unless it is a ``sip:`` or ``sips:`` URI. A user part is not required."""
    scheme, colon, rest = text.partition(":")
    if colon and scheme != scheme.lower():  # schemes are case-insensitive
        text = f"{scheme.lower()}:{rest}"
    try:
        parsed = URI.parse(text)
    except ValueError as exc:
        forget_traceback(exc)
        raise ValueError(f"not a SIP URI: {text!r}") from None
    if parsed.scheme not in ("sip", "sips"):
        raise ValueError(f"not a SIP URI: {text!r}")
    return parsed


def _parse(uri: str) -> tuple[URI, str]:
    """``uri`` read by sipmessage, and the text of its user part as written."""
    text = uri.strip()
    try:
        if "<" in text:
            parsed = Address.parse(text).uri
            text = simplify_whitespace(text)
            for pattern in ADDRESS_PATTERNS:  # the patterns Address.parse just matched
                match = pattern.match(text)
                if match is not None:
                    text = match.group("uri")
                    break
        else:
            parsed = parse_sip_uri(text)
    except ValueError as exc:
        forget_traceback(exc)  # Address.parse raises a shared instance
        raise ValueError(f"not a SIP URI: {uri!r}") from None
    if parsed.scheme not in ("sip", "sips"):
        raise ValueError(f"not a SIP URI: {uri!r}")
    if not parsed.user:
        raise ValueError(f"SIP URI has no user part: {uri!r}")
    # userinfo ends at the first "@" (neither user nor password holds one unescaped), the user
    # at the first ":" in it (the password's separator).
    written = text.partition(":")[2].partition("@")[0].partition(":")[0]
    return parsed, written


@lru_cache(maxsize=65536)
def split_uri(uri: str) -> tuple[str, str]:
    """``(user, host)`` of a SIP URI: the user in canonical form (:func:`canonical_user`), the
    host as spelled (an IPv6 host keeps its brackets). Raises ValueError."""
    # split_user_host is the non-raising split of an already canonical Request-URI.
    parsed, written = _parse(uri)
    return canonical_user(written), parsed.host


def split_user_host(uri: str) -> tuple[str, str]:
    """``sip:user@host`` -> ``(user, host)``, the user in canonical form
    (:func:`canonical_user`: ``sip:%63hat@x`` names the room ``chat``);
    the user is empty when the URI has none."""
    # Not split_uri: that one raises for a URI without a user, which handle()/room() must not.
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    user, sep, host = rest.rpartition("@")
    return (canonical_user(user), host) if sep else ("", rest)


def canonical(uri: str) -> str:
    """``sip:user@host`` keeping case; port, parameters, password and display name dropped
    (a ``sips:`` URI becomes ``sip:`` too). Raises ValueError."""
    user, host = split_uri(uri)
    return f"sip:{user}@{host}"


def aor_key(uri: str) -> str:
    """``user@host`` lower-cased: the case-insensitive identity of an AOR, room or member.

    Equals ``imc.state.member_key(canonical(uri))``. Raises ValueError.
    """
    user, host = split_uri(uri)
    return f"{user}@{host}".lower()


def complete_argument(arg: str, default_host: str) -> str:
    """Complete a user or room argument into ``sip:user@host`` (spec §1).

    No ``:`` → ``sip:`` is prefixed; no ``@`` → ``@`` + ``default_host`` is appended. The
    result must be a ``sip:``/``sips:`` URI with a user part; port, parameters and headers
    are dropped and the scheme becomes ``sip:``; case is kept; the user is put in canonical
    form (:func:`canonical_user`: ``%63hat`` -> ``chat``), as the
    Request-URI and the sender are. Raises ``ValueError`` otherwise.
    """
    text = arg if ":" in arg else "sip:" + arg
    scheme, _, rest = text.partition(":")
    if scheme.lower() not in ("sip", "sips"):
        raise ValueError(f"not a SIP URI: {arg!r}")
    if "@" not in rest:
        rest = f"{rest}@{default_host}"
    match = _URI_REST.fullmatch(rest)
    if match is None:
        raise ValueError(f"not a SIP URI: {arg!r}")
    return f"sip:{canonical_user(match['user'])}@{match['host']}"


def split_outside(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside double quotes (backslash escapes honoured) and
    ``<...>``. Never raises."""
    parts: list[str] = []
    start = 0
    quoted = False
    angle = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == sep and not angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def split_addresses(value: str) -> list[str]:
    """The comma-separated name-addrs of one header value (P-Asserted-Identity, Contact, …),
    stripped, empty ones dropped. A comma inside a quoted display name (``"Doe, J." <sip:j@x>``,
    backslash escapes honoured) or inside ``<…>`` does not separate. Never raises."""
    return [part.strip() for part in split_outside(value, ",") if part.strip()]
