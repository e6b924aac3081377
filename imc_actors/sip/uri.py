"""SIP URIs as identities: rooms, members and senders (spec §1).

A URI is read with sipmessage (``URI.parse``, or ``Address.parse`` for a name-addr such as
``"Bob" <sip:bob@x>``) and reduced to ``user@host``: scheme, password, port, parameters and
display name are dropped. The user part is percent-decoded and re-escaped the way sipmessage
writes it, so ``sip:%61lice@x`` and ``sip:alice@x`` name the same member (RFC 3261 §19.1.4);
the host keeps its spelling. Every function raises ValueError for a string that is not a
``sip:``/``sips:`` URI with a user part.
"""

from __future__ import annotations

import urllib.parse
from functools import lru_cache

from sipmessage import URI, Address
from sipmessage.grammar import C_USER_SAFE

__all__ = ["aor_key", "canonical", "complete_argument", "split_uri"]


def _parse(uri: str) -> URI:
    text = uri.strip()
    try:
        if "<" in text:
            parsed = Address.parse(text).uri
        else:
            scheme, colon, rest = text.partition(":")
            if colon and scheme != scheme.lower():  # schemes are case-insensitive
                text = f"{scheme.lower()}:{rest}"
            parsed = URI.parse(text)
    except ValueError:
        raise ValueError(f"not a SIP URI: {uri!r}") from None
    if parsed.scheme not in ("sip", "sips"):
        raise ValueError(f"not a SIP URI: {uri!r}")
    if not parsed.user:
        raise ValueError(f"SIP URI has no user part: {uri!r}")
    return parsed


@lru_cache(maxsize=65536)
def split_uri(uri: str) -> tuple[str, str]:
    """``(user, host)`` of a SIP URI: the user with escapes normalised, the host as spelled
    (an IPv6 host keeps its brackets). Raises ValueError."""
    # conference.split_user_host is the non-raising split of an already canonical Request-URI.
    parsed = _parse(uri)
    assert parsed.user is not None  # _parse checked
    return urllib.parse.quote(parsed.user, safe=C_USER_SAFE), parsed.host


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
    """Complete a user or room argument of a command (spec §1) to ``sip:user@host``.

    No ``:`` -> ``sip:`` is prefixed; no ``@`` -> ``@default_host`` is added after the user
    (before any ``;params``). The result is :func:`canonical`: ``bob`` ->
    ``sip:bob@<default_host>``, ``bob@x.org`` -> ``sip:bob@x.org``,
    ``sip:bob@x.org;transport=tcp`` -> ``sip:bob@x.org``. Raises ValueError when the completed
    text is not a SIP URI with a user part (``bad uri``, ``sip:@x``, ``@@``, ``""``).
    """
    text = arg
    if ":" not in text:
        text = "sip:" + text
    if "@" not in text:
        scheme, _, rest = text.partition(":")
        user, semi, params = rest.partition(";")
        text = f"{scheme}:{user}@{default_host}{semi}{params}"
    return canonical(text)
