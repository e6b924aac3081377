"""SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): pure, no clock, no I/O.

The server side of a UAS (a 401 with ``WWW-Authenticate``, an ``Authorization`` in return):

- :class:`Nonces` makes and checks *stateless* nonces: ``base64url(issued, random, HMAC)``
  with a server secret, so any process that knows the secret can check a nonce, and a
  nonce older than its lifetime is *stale* (answered ``stale=true``: the client retries with
  a fresh nonce and the same password, without asking its user).
- :class:`NonceCounts` remembers the highest nonce-count seen per nonce, so a captured
  ``Authorization`` cannot be replayed; its memory is bounded (see the class).
- :func:`parse_credentials` reads an ``Authorization`` value, :func:`expected_response` computes
  the ``response`` the client must have sent, :func:`challenge` writes a
  ``WWW-Authenticate`` value.

The client side (for :mod:`imc_actors.chat`): :func:`parse_challenge` and
:func:`authorization`.

Algorithms: ``SHA-256`` and ``MD5`` (RFC 8760 §2: offered as two challenges, the preferred
first), ``qop=auth`` only. HA1 is ``H(username:realm:password)``; the database may hold it
instead of the password (Kamailio's ``ha1`` column is the MD5 one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "ALGORITHMS",
    "Challenge",
    "Credentials",
    "DigestError",
    "NonceCounts",
    "Nonces",
    "origin_of",
    "authorization",
    "challenge",
    "expected_response",
    "ha1",
    "parse_challenge",
    "parse_credentials",
]

#: The algorithms we speak, preferred first (the order of the challenges in a 401).
ALGORITHMS = ("SHA-256", "MD5")
_HASHES = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


class DigestError(ValueError):
    """An ``Authorization`` (or a challenge) that cannot be read; ``str()`` says why, short
    enough for a SIP reason phrase."""


def _hash(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """``H(username:realm:password)`` in lower-case hex (``algorithm`` from :data:`ALGORITHMS`)."""
    return _hash(algorithm, f"{username}:{realm}:{password}")


def expected_response(
    algorithm: str, ha1_hex: str, method: str, uri: str, nonce: str, nc: str, cnonce: str
) -> str:
    """The ``response`` for ``qop=auth`` (RFC 7616 §3.4.1): ``H(HA1:nonce:nc:cnonce:auth:HA2)``
    with ``HA2 = H(method:uri)``; ``nc`` is the 8 hex digits as sent."""
    ha2 = _hash(algorithm, f"{method}:{uri}")
    return _hash(algorithm, f"{ha1_hex.lower()}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


# ----------------------------------------------------------------------------------- params

#: One ``name=value`` of a challenge or credentials: a token, or a quoted string with
#: backslash escapes (RFC 3261 §25.1), then a comma or the end.
_PARAM = re.compile(
    r'[ \t]*([A-Za-z0-9_.!%*+`\'~-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^ \t,"]*)[ \t]*(?:,|\Z)',
    re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


#: The scheme and what follows: LWS (spaces or tabs, RFC 3261 §25.1) separates them.
_SCHEME = re.compile(r"([^ \t]*)[ \t]*(.*)", re.DOTALL)


def _params(value: str) -> dict[str, str]:
    """The ``Digest`` parameters of a header value, names lower-cased; DigestError when the
    scheme is not Digest, the syntax is broken, or a parameter comes twice."""
    scheme, rest = _SCHEME.match(value.strip()).groups()  # type: ignore[union-attr]
    if scheme.lower() != "digest":
        raise DigestError("Not a Digest authorization")
    params: dict[str, str] = {}
    position, rest = 0, rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            raise DigestError("Malformed Digest parameters")
        name, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = _UNESCAPE.sub(r"\1", raw[1:-1])
        if name in params:
            raise DigestError(f"Digest parameter {name} twice")
        params[name] = raw
        position = match.end()
    return params


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------ server side


@dataclass(frozen=True, slots=True)
class Credentials:
    """One ``Authorization: Digest …`` as sent. ``algorithm`` is one of :data:`ALGORITHMS`
    (MD5 when absent, RFC 7616 §3.4); ``nc`` is the nonce-count as an integer and
    ``nc_text`` its 8 hex digits as sent (the response is computed over the text)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    cnonce: str
    nc: int
    nc_text: str
    opaque: str | None


def parse_credentials(value: str) -> Credentials:
    """Read an ``Authorization`` value; DigestError (with a short reason) when it is not a
    Digest answer we can check: another scheme, a missing parameter, an algorithm other than
    :data:`ALGORITHMS`, a qop other than ``auth`` (we offer nothing else), a bad nonce-count."""
    params = _params(value)
    for name in ("username", "realm", "nonce", "uri", "response"):
        if not params.get(name):
            raise DigestError(f"Digest {name} missing")
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        raise DigestError("Unsupported Digest algorithm")
    if params.get("qop", "").lower() != "auth":
        raise DigestError("Digest qop=auth required")
    nc_text, cnonce = params.get("nc", ""), params.get("cnonce", "")
    if not cnonce or not re.fullmatch(r"[0-9A-Fa-f]{8}", nc_text):
        raise DigestError("Digest nc and cnonce required")
    if nc_text == "00000000":  # counts start at 1 (RFC 7616 §3.4): 0 would be refused forever
        raise DigestError("Digest nc must be 1 or more")
    return Credentials(
        params["username"], params["realm"], params["nonce"], params["uri"],
        params["response"].lower(), algorithm, cnonce, int(nc_text, 16), nc_text,
        params.get("opaque"),
    )  # fmt: skip


def challenge(realm: str, nonce: str, algorithm: str, *, stale: bool = False) -> str:
    """A ``WWW-Authenticate`` value: ``Digest realm=…, nonce=…, algorithm=…, qop="auth"``
    (``stale=true`` when the client's nonce had only expired)."""
    text = f'Digest realm={_quote(realm)}, nonce={_quote(nonce)}, algorithm={algorithm}, qop="auth"'
    return text + (", stale=true" if stale else "")


class Nonces:
    """Stateless nonces: ``base64url(issued (8 bytes, ms) + origin (4) + 4 random bytes +
    HMAC-SHA-256[:16])``.

    ``secret`` keys the HMAC (every process sharing it can read the others' nonces);
    ``lifetime`` is how many seconds a nonce is good for. Times are seconds since the epoch,
    passed in (wall clock). ``origin`` names the process that makes them (:func:`origin_of`
    its node name): nonce-counts are remembered per process, so a process must take only its
    own nonces (:meth:`made_here`), or an answer captured at one worker or node would pass
    once more at each of the others.
    """

    def __init__(self, secret: bytes, lifetime: float, origin: bytes = bytes(4)) -> None:
        if len(origin) != 4:
            raise ValueError("a nonce origin is 4 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self.origin = origin

    def _mac(self, head: bytes) -> bytes:
        return hmac.new(self._secret, head, hashlib.sha256).digest()[:16]

    def make(self, now: float) -> str:
        """A fresh nonce issued at ``now``."""
        head = struct.pack(">Q", int(now * 1000)) + self.origin + secrets.token_bytes(4)
        return base64.urlsafe_b64encode(head + self._mac(head)).decode().rstrip("=")

    def issued(self, nonce: str) -> float | None:
        """When ``nonce`` was issued (epoch seconds), or None when we did not make it."""
        if len(nonce) != 43:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except ValueError:
            return None
        if len(raw) != 32 or not hmac.compare_digest(raw[16:], self._mac(raw[:16])):
            return None
        return struct.unpack(">Q", raw[:8])[0] / 1000

    def made_here(self, nonce: str) -> bool:
        """True when ``nonce`` (one :meth:`issued` accepts) was made with this origin."""
        return base64.urlsafe_b64decode(nonce + "=")[8:12] == self.origin

    def is_stale(self, issued: float, now: float) -> bool:
        """True when a nonce issued at ``issued`` is past its lifetime (or from the future)."""
        return not (now - self.lifetime <= issued <= now + 1)


#: How far below the highest nonce-count seen for a nonce a count may still be used once.
#: A client may send requests back to back (RFC 3428 lets a UA send a MESSAGE before the last
#: one is answered), and a network or a server's tasks may deliver them in another order: a
#: count within the window that was not seen yet is fresh, as in IPsec's anti-replay window
#: (RFC 4303 §3.4.3). Older counts, and every count seen once, are replays.
NC_WINDOW = 64


def origin_of(node: str | None) -> bytes:
    """The 4-byte nonce origin of a process named ``node`` (None: a server of its own)."""
    return zlib.crc32((node or "").encode()).to_bytes(4, "big")


class NonceCounts:
    """The nonce-counts seen per nonce, for at most ``limit`` nonces (a bound on memory,
    whatever arrives: about 200 bytes per entry): the highest, and which of the
    :data:`NC_WINDOW` counts below it were seen (one integer used as a bitmap).

    Only answers that passed verification are recorded (:meth:`record`), so garbage
    ``Authorization`` headers add nothing. When the table is full the least recently used
    nonce is forgotten and ``floor`` rises to its issue time: from then on a nonce issued at
    or before ``floor`` that is not in the table counts as used up (:meth:`fresh` is False),
    so forgetting a nonce never lets its counts be replayed. The price of a small table is
    only more ``stale=true`` round trips for clients. ``floor`` may start above 0: the server
    starts it at its own start time, since the counts of the nonces issued before went with
    the previous process (a client answers one ``stale=true`` after a restart).
    """

    def __init__(self, limit: int, floor: float = 0.0) -> None:
        self.limit = limit
        self.floor = floor
        # nonce -> (highest count, bitmap: bit i set = count highest - i seen, issue time)
        self._seen: OrderedDict[str, tuple[int, int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def fresh(self, nonce: str, issued: float, nc: int) -> bool:
        """True when ``nc`` was not used with ``nonce`` yet and is above the highest count
        seen less :data:`NC_WINDOW` (a first use of a nonce issued after :attr:`floor` is
        fresh for any ``nc`` ≥ 1)."""
        if nc < 1:
            return False
        last = self._seen.get(nonce)
        if last is None:
            return issued > self.floor
        highest, seen, _ = last
        if nc > highest:
            return True
        below = highest - nc
        return below < NC_WINDOW and not (seen >> below) & 1

    def forgotten(self, nonce: str, issued: float) -> bool:
        """True when ``nonce`` is not in the table and was issued at or before :attr:`floor`:
        its counts are gone (issued before this process started, or dropped to make room), so
        any answer with it counts as used; not a replay seen here."""
        return nonce not in self._seen and issued <= self.floor

    def record(self, nonce: str, issued: float, nc: int) -> None:
        """Remember that ``nc`` was used with ``nonce`` (after it verified and was
        :meth:`fresh`)."""
        last = self._seen.get(nonce)
        if last is None:
            entry = (nc, 1, issued)
        elif nc > last[0]:
            entry = (nc, ((last[1] << (nc - last[0])) | 1) & _WINDOW_MASK, last[2])
        else:
            entry = (last[0], last[1] | (1 << (last[0] - nc)), last[2])
        self._seen[nonce] = entry
        self._seen.move_to_end(nonce)
        while len(self._seen) > self.limit:
            _, (_, _, forgotten) = self._seen.popitem(last=False)
            self.floor = max(self.floor, forgotten)


_WINDOW_MASK = (1 << NC_WINDOW) - 1


# ------------------------------------------------------------------------------ client side


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate``/``Proxy-Authenticate`` Digest challenge."""

    realm: str
    nonce: str
    algorithm: str
    qop: tuple[str, ...]
    opaque: str | None
    stale: bool


def parse_challenge(value: str) -> Challenge:
    """Read a challenge; DigestError when it is not Digest or lacks realm or nonce."""
    params = _params(value)
    if not params.get("realm") or not params.get("nonce"):
        raise DigestError("Digest challenge without realm or nonce")
    qop = tuple(part.strip().lower() for part in params.get("qop", "").split(",") if part.strip())
    return Challenge(
        params["realm"], params["nonce"], params.get("algorithm", "MD5").upper(), qop,
        params.get("opaque"), params.get("stale", "").lower() == "true",
    )  # fmt: skip


def authorization(
    chosen: Challenge, method: str, uri: str, username: str, password: str, nc: int
) -> str:
    """The ``Authorization`` value answering ``chosen`` (``qop=auth``, a fresh cnonce);
    DigestError when ``chosen`` needs an algorithm or qop we do not speak."""
    if chosen.algorithm not in _HASHES:
        raise DigestError("Unsupported Digest algorithm")
    if "auth" not in chosen.qop:
        raise DigestError("Digest challenge without qop=auth")
    cnonce, nc_text = secrets.token_hex(8), f"{nc:08x}"
    secret = ha1(chosen.algorithm, username, chosen.realm, password)
    response = expected_response(chosen.algorithm, secret, method, uri, chosen.nonce, nc_text, cnonce)
    parts = [
        f"username={_quote(username)}", f"realm={_quote(chosen.realm)}",
        f"nonce={_quote(chosen.nonce)}", f"uri={_quote(uri)}", f"response={_quote(response)}",
        f"algorithm={chosen.algorithm}", f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={nc_text}",
    ]  # fmt: skip
    if chosen.opaque is not None:
        parts.append(f"opaque={_quote(chosen.opaque)}")
    return "Digest " + ", ".join(parts)
