"""Who may use the management HTTP listener: ``rpc_token``, ``rpc_hosts``, ``metrics_public``.

:class:`AccessGuard` is an ASGI middleware in front of the whole app. In this order, every
request

1. must name this server in ``Host``: the address the client connected to (``host:port`` as
   bound, ``localhost:port`` too when that is a loopback address) or an entry of
   ``rpc_hosts`` (``name`` for any port, or ``name:port``); else **421 Misdirected Request**.
   A DNS-rebinding page (its own name, our address) gets nothing;
2. with an ``Origin`` header (a browser's cross-site request), must come from such a host
   too; else **403 Forbidden**;
3. for ``POST /RPC``, must carry ``Content-Type: application/json``; else **415 Unsupported
   Media Type** (a cross-site form cannot send that without a CORS preflight, which this
   server never allows);
4. with ``rpc_token`` set, on ``/RPC``, ``/api/*`` (except ``/api/chat``, the chat page's
   settings) and ``/metrics`` (unless ``metrics_public``), must carry ``Authorization: Bearer
   <rpc_token>``; else **401** with ``WWW-Authenticate: Bearer realm="imc-actors"``.

The status page (``/``) and its files, and the chat page (``/chat``, whose users authenticate
to SIP), need no token: they hold no data; the status page asks for the token and sends it with
every poll. The texts of the refusals are :data:`MISDIRECTED`, :data:`CROSS_ORIGIN`,
:data:`NOT_JSON`, :data:`NO_TOKEN` and :data:`BAD_TOKEN`.

The helpers :func:`token_problem` and :func:`check_host_entry` (and config's
:func:`~imc_actors.config.is_loopback_listen`) are
what :class:`~imc_actors.config.Config` validates those settings with (``rpc_token`` is
required when ``rpc_listen`` is not a loopback address).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from ..config import is_loopback_listen

__all__ = [
    "BAD_TOKEN",
    "CROSS_ORIGIN",
    "MISDIRECTED",
    "MIN_TOKEN_LENGTH",
    "NOT_JSON",
    "NO_TOKEN",
    "AccessGuard",
    "check_host_entry",
    "needs_token",
    "token_problem",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Shortest ``rpc_token`` accepted.
MIN_TOKEN_LENGTH = 16
#: RFC 6750's b64token: what may follow ``Bearer`` in an Authorization header.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HOST_ENTRY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(:[0-9]{1,5})?")

MISDIRECTED = "this server does not answer to Host {host!r} (add it to rpc_hosts)"
CROSS_ORIGIN = "cross-origin request from {origin!r} refused"
DUPLICATE = "more than one {name} header"
#: Headers the checks read, which a request may carry once: with two, a check could pass on
#: one while a later layer reads the other.
_ONCE = frozenset(("host", "origin", "content-type", "authorization"))
NOT_JSON = "POST /RPC needs Content-Type: application/json"
NO_TOKEN = "this server needs Authorization: Bearer <rpc_token>"
BAD_TOKEN = "wrong token"


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be ``rpc_token`` (None when it can)."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"must be at least {MIN_TOKEN_LENGTH} characters"
    if not _TOKEN.fullmatch(token):
        return "may hold letters, digits and - . _ ~ + / (and = at the end) only"
    return None


def check_host_entry(entry: str) -> str | None:
    """Why ``entry`` cannot be in ``rpc_hosts`` (None when it can): ``name``, ``name:port``,
    ``[v6]`` or ``[v6]:port``."""
    if not _HOST_ENTRY.fullmatch(entry.strip()):
        return f"expected host or host:port, got {entry!r}"
    return None


def _split_host(text: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) -> (lower-case host without brackets, port or None).
    Raises ValueError."""
    text = text.strip().lower()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(text)
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(text)  # a bare IPv6 address is not a Host
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(text)
    if port_text:
        if not port_text.isdigit():
            raise ValueError(text)
        return host, int(port_text)
    return host, None


def needs_token(path: str, metrics_public: bool) -> bool:
    """True for the paths ``rpc_token`` protects."""
    if path == "/RPC" or (path.startswith("/api/") and path != "/api/chat"):
        return True
    return path == "/metrics" and not metrics_public


class AccessGuard:
    """The ASGI middleware of this module's docstring, around ``app``."""

    def __init__(
        self,
        app: App,
        *,
        token: str | None = None,
        hosts: Sequence[str] = (),
        metrics_public: bool = False,
    ) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self._metrics_public = metrics_public
        self._any_port: set[str] = set()
        self._with_port: set[tuple[str, int]] = set()
        for entry in hosts:
            host, port = _split_host(entry)
            if port is None:
                self._any_port.add(host)
            else:
                self._with_port.add((host, port))

    def allowed(self, text: str, server: tuple[str, int] | None, default_port: int) -> bool:
        """True when ``text`` (a Host value, or an Origin's ``host[:port]``) names this server,
        which the client reached at ``server`` (ASGI's ``(host, port)``)."""
        try:
            host, port = _split_host(text)
        except ValueError:
            return False
        port = default_port if port is None else port
        if host in self._any_port or (host, port) in self._with_port:
            return True
        if server is None:
            return False
        bound_host, bound_port = str(server[0]).lower(), int(server[1])
        if port != bound_port:
            return False
        if host == bound_host:
            return True
        return host == "localhost" and is_loopback_listen(bound_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name in _ONCE and name in headers:  # which one would count? Neither (RFC 9110 §5.3)
                await _refuse(send, 400, DUPLICATE.format(name=name))
                return
            headers[name] = raw_value.decode("latin-1")
        server = scope.get("server")
        host = headers.get("host", "")
        if not self.allowed(host, server, 80):
            await _refuse(send, 421, MISDIRECTED.format(host=host))
            return
        origin = headers.get("origin")
        if origin is not None and not self._same_site(origin, server):
            await _refuse(send, 403, CROSS_ORIGIN.format(origin=origin))
            return
        path = scope.get("path", "")
        if path == "/RPC" and scope.get("method") == "POST":
            media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != "application/json":
                await _refuse(send, 415, NOT_JSON)
                return
        if self._token is not None and needs_token(path, self._metrics_public):
            scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                await _refuse(send, 401, NO_TOKEN, [(b"www-authenticate", b'Bearer realm="imc-actors"')])
                return
            if not hmac.compare_digest(credentials.strip().encode("latin-1"), self._token):
                challenge = b'Bearer realm="imc-actors", error="invalid_token"'
                await _refuse(send, 401, BAD_TOKEN, [(b"www-authenticate", challenge)])
                return
        await self.app(scope, receive, send)

    def _same_site(self, origin: str, server: tuple[str, int] | None) -> bool:
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            return False
        return self.allowed(rest.rstrip("/"), server, 443 if scheme.lower() == "https" else 80)


async def _refuse(
    send: Send, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A JSON ``{"error": message}`` answer with ``status``."""
    body = json.dumps({"error": message}, ensure_ascii=False).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
