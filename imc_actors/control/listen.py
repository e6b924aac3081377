"""``rpc_listen`` addresses and the URLs that reach them (kept free of heavy imports: the CLI
client uses this without loading the HTTP server)."""

from __future__ import annotations

import ipaddress

from ..config import ConfigError

__all__ = ["DEFAULT_RPC_URL", "connect_host", "parse_listen", "rpc_url_for"]

#: Where the CLI looks for the server when neither ``--rpc`` nor ``rpc_listen`` says.
DEFAULT_RPC_URL = "http://127.0.0.1:5080/RPC"


def parse_listen(text: str) -> tuple[str, int]:
    """``rpc_listen`` -> ``(host, port)``.

    Accepts ``host:port``, ``[v6]:port``, ``:port`` or ``port`` (host 127.0.0.1), with or
    without a leading ``http://``. Port 0 picks a free port. Raises :class:`ConfigError`.
    """
    raw = text.strip().removeprefix("http://").rstrip("/")
    host, port_text = "127.0.0.1", raw
    if raw.startswith("["):
        inner, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError("rpc_listen", f"expected [address]:port, got {text!r}")
        host, port_text = inner, rest[1:]
    elif ":" in raw:
        host, _, port_text = raw.rpartition(":")
        host = host or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError("rpc_listen", f"expected host:port, got {text!r}") from None
    if not 0 <= port <= 65535 or not host or any(c in host for c in "/ []"):
        raise ConfigError("rpc_listen", f"expected host:port, got {text!r}")
    return host, port


def connect_host(host: str) -> str:
    """The host part of a URL reaching a listener bound on ``host`` (wildcards -> loopback;
    IPv6 literals bracketed)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def rpc_url_for(listen: str) -> str:
    """The JSON-RPC URL of a server whose ``rpc_listen`` is ``listen``."""
    host, port = parse_listen(listen)
    return f"http://{connect_host(host)}:{port}/RPC"
