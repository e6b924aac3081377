"""The browser chat page on the management HTTP listener: ``/chat`` and what it needs.

The page (``static/chat.html``, ``chat.js``, ``chat.css``) is a SIP user agent in the
browser, built on the vendored JsSIP (``static/vendor/jssip.min.js``): it registers over the
server's ``ws:`` (else ``wss:``) listener and speaks to rooms with MESSAGE like any phone. The server only
serves the files and tells the page where to connect:

====================  =====================================================================
``GET /chat``         the page (its Content-Security-Policy allows the WebSocket URL below)
``GET /api/chat``     ``{"ws": "ws[s]://host:port/" or null, "domain", "manager", "command_char"}``
``GET /static/...``   ``chat.js``, ``chat.css``; ``vendor/jssip.min.js`` and its
                      ``jssip.VERSION`` and ``jssip.LICENSE``
====================  =====================================================================

``ws`` is None when no ``ws:`` or ``wss:`` listen address is configured (the page then says so and how to
add one). A listener bound to a wildcard address is named by the host the browser used to
reach this page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import Config, ListenAddress
from ..transport.routing import WILDCARD
from .listen import connect_host

__all__ = ["ChatSettings", "chat_routes"]

_FILES = {
    "chat.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "vendor/jssip.min.js": "text/javascript; charset=utf-8",
    "vendor/jssip.LICENSE": "text/plain; charset=utf-8",
    "vendor/jssip.VERSION": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """What the chat page is told: the bound ``ws:`` and ``wss:`` listen addresses (real
    ports, ``ws:`` first), the SIP
    ``domain`` users sign in to, the ``manager`` URI and the ``command_char``."""

    ws: tuple[ListenAddress, ...]
    domain: str
    manager: str
    command_char: str = "#"

    @classmethod
    def of(cls, config: Config, bound: Sequence[ListenAddress]) -> ChatSettings:
        """The settings of a server with ``config`` whose transport bound ``bound``."""
        domain = config.served_domains[0]
        return cls(
            # plain ws: first (the page itself is served over plain HTTP), then wss:
            ws=tuple(sorted((a for a in bound if a.transport in ("ws", "wss")), key=lambda a: a.transport != "ws")),
            domain=domain,
            manager=f"sip:{config.manager_user}@{domain}",
            command_char=config.imc_cmd_start_char[:1],
        )

    def ws_url(self, page_host: str | None) -> str | None:
        """The URL of the first ``ws:`` listener (else the first ``wss:`` one), seen from a
        browser that reached the page at ``page_host`` (used for a wildcard bind); None without
        one."""
        if not self.ws:
            return None
        address = self.ws[0]
        if address.host in WILDCARD and page_host:
            host = f"[{page_host}]" if ":" in page_host else page_host
        else:
            host = connect_host(address.host)
        return f"{address.transport}://{host}:{address.port}/"


def _load() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(*name.split("/")).read_bytes() for name in _FILES}


def chat_routes(
    settings: ChatSettings | None, headers: dict[str, str], api_answer: Callable[[Any], Response]
) -> list[Route]:
    """The routes of the chat page; ``headers`` are the status page's security headers
    (their CSP is widened to let the page open the WebSocket), ``api_answer`` makes the JSON
    answer of ``/api/chat`` as every other ``/api/`` route's. Without ``settings`` (an app
    made without a transport) the page still loads and reports that there is no listener."""
    files = _load()

    def info(request: Request) -> dict[str, Any]:
        if settings is None:
            return {"ws": None, "domain": None, "manager": None, "command_char": "#"}
        return {
            "ws": settings.ws_url(request.url.hostname),
            "domain": settings.domain,
            "manager": settings.manager,
            "command_char": settings.command_char,
        }

    async def page(request: Request) -> Response:
        url = info(request)["ws"]
        csp = headers["Content-Security-Policy"]
        connect = "connect-src 'self'" + (f" {url}" if url else "")
        page_headers = dict(headers, **{"Content-Security-Policy": f"{csp}; {connect}"})
        return Response(files["chat.html"], headers=page_headers, media_type=_FILES["chat.html"])

    async def api(request: Request) -> Response:
        return api_answer(info(request))

    async def asset(request: Request) -> Response:
        name = request.url.path.removeprefix("/static/")
        if name not in files or name == "chat.html":
            return Response("not found\n", 404, media_type="text/plain")
        return Response(files[name], headers=headers, media_type=_FILES[name])

    return [
        Route("/chat", page, methods=["GET", "HEAD"]),
        Route("/api/chat", api, methods=["GET", "HEAD"]),
        Route("/static/chat.js", asset, methods=["GET", "HEAD"]),
        Route("/static/chat.css", asset, methods=["GET", "HEAD"]),
        Route("/static/vendor/{name}", asset, methods=["GET", "HEAD"]),
    ]
