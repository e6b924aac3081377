"""The management HTTP listener (``rpc_listen``): JSON-RPC, ``/metrics`` and the status page.

One small Starlette app served by Hypercorn's Trio worker inside the server's nursery:

====================  =====================================================================
``POST /RPC``         JSON-RPC 2.0 (:mod:`imc_actors.control.jsonrpc`), batches included;
                      at most ``rpc_max_requests`` bodies read at once (then 503)
``GET /metrics``      Prometheus text exposition (:mod:`imc_actors.control.metrics`)
``GET /``             the status page (``static/index.html``; its script and style under
                      ``/static/``; nothing is loaded from elsewhere)
``GET /api/rooms``    what the page polls: the rooms (first ``?limit=``, default 1000) with
                      counts, owner and (``node`` set) the node holding each, the totals,
                      and ``nodes`` (``imc.nodes``; empty without ``node``)
``GET /api/room``     ``?uri=sip:room@domain``: one room's members with roles, its ``info``
                      (``imc.room_info``) and its last lines (``history``: up to
                      ``STATUS_LINES``, null when the archive is off or cannot be read)
``GET /chat``         the browser chat page over SIP-over-WebSocket (:mod:`.chat_page`)
====================  =====================================================================

Every handler is ``async`` and reads the rooms' committed snapshots in the Trio thread (never
in a worker thread). The listener binds 127.0.0.1 unless ``rpc_listen`` names another host.
Who may use it (``Host``, ``Origin``, ``Content-Type`` and ``rpc_token`` checks) is decided
before any route, by :class:`~.access.AccessGuard`, which the server wraps around this app.
"""

from __future__ import annotations

import json
import logging
import math
import time
from functools import partial
from importlib import resources
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..store.repository import StoreError
from ..transport.limits import LogInterval
from .chat_page import ChatSettings, chat_routes
from .jsonrpc import PARSE_ERROR, RpcDispatcher, RpcError, error_response
from .listen import connect_host, parse_listen
from .metrics import CONTENT_TYPE, ServerMetrics
from .views import (
    RoomLookupError,
    RoomSource,
    find_room,
    history_lines,
    node_rows,
    room_detail,
    room_info,
    room_node,
    room_row,
    snapshot_of,
)

__all__ = ["create_app", "serve_http"]

log = logging.getLogger("imc_actors.control.http")

#: Largest JSON-RPC request body accepted.
MAX_BODY = 1024 * 1024
#: Default of ``rpc_body_timeout``: seconds within which a JSON-RPC body must have arrived.
BODY_TIMEOUT = 10.0
#: Default of ``rpc_max_requests``: JSON-RPC requests whose bodies are read at once.
MAX_REQUESTS = 32
#: Seconds between two warnings that ``rpc_max_requests`` was reached.
BUSY_LOG_INTERVAL = 10.0
#: Archived lines the status page shows for the selected room.
STATUS_LINES = 20
#: Rooms the status page gets per poll by default (``?limit=`` up to ``MAX_PAGE_ROOMS``).
PAGE_ROOMS = 1000
MAX_PAGE_ROOMS = 20000

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# ---------------------------------------------------------------------------------- app
def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _api(data: Any, status: int = 200) -> Response:
    return Response(_json_bytes(data), status, _API_HEADERS, "application/json")


def _load_static() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC}


def _not_json(name: str) -> None:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (RFC 8259), though Python reads
    them (and would echo an id of ``NaN`` in a reply no strict client can read)."""
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number that is a float: ``1e999`` would be read as infinity, and echoed (an id)
    as ``Infinity``, which is no JSON: a parse error instead."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


def create_app(
    source: RoomSource,
    metrics: ServerMetrics | None = None,
    chat: ChatSettings | None = None,
    *,
    max_requests: int = MAX_REQUESTS,
    body_timeout: float = BODY_TIMEOUT,
) -> Starlette:
    """The ASGI app for ``source`` (a :class:`~imc_actors.conference.Conference`).

    ``metrics`` is served on ``/metrics`` (404 when None); ``chat`` tells the chat page
    (``/chat``) where the server's WebSocket listener is (None: it reports there is none).
    At most ``max_requests`` JSON-RPC bodies (each up to :data:`MAX_BODY`) are read at once;
    one more request gets 503 with ``Retry-After: 1`` before its body is read, so clients that
    send a body slowly, or never finish it, hold at most ``max_requests`` MiB, and a body not
    received within ``body_timeout`` seconds gets 408, so they cannot hold those places either.
    """
    dispatcher = RpcDispatcher(source)
    static = _load_static()
    reading = 0  # JSON-RPC bodies being read now
    busy_log = LogInterval(BUSY_LOG_INTERVAL)

    async def rpc(request: Request) -> Response:
        nonlocal reading
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return _api({"error": "request too large"}, 413)
        if reading >= max_requests:
            if busy_log.due(time.monotonic()):
                log.warning(
                    "rpc_max_requests %d reached: answering 503 (logged at most every %g s)",
                    max_requests, BUSY_LOG_INTERVAL,
                )  # fmt: skip
            answer = _api({"error": "too many requests at once; try again later"}, 503)
            answer.headers["Retry-After"] = "1"
            return answer
        reading += 1
        body = bytearray()
        try:
            with trio.move_on_after(body_timeout) as waited:
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BODY:
                        return _api({"error": "request too large"}, 413)
            if waited.cancelled_caught:  # a trickle holds a place of rpc_max_requests
                return _api({"error": f"request body not received within {body_timeout:g} s"}, 408)
        except ClientDisconnect:  # gone before its body came: nobody to answer
            return Response(status_code=400)
        finally:
            reading -= 1
        try:
            payload = json.loads(body, parse_constant=_not_json, parse_float=_finite)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
            return _api(error_response(RpcError(PARSE_ERROR, "Parse error")))
        answer = await dispatcher.handle(payload)
        if answer is None:
            return Response(status_code=204, headers=_API_HEADERS)
        return _api(answer)

    async def metrics_page(request: Request) -> Response:
        if metrics is None:
            return Response("metrics are off\n", 404, media_type="text/plain")
        return Response(metrics.exposition(), headers=_API_HEADERS, media_type=CONTENT_TYPE)

    async def index(request: Request) -> Response:
        return Response(static["index.html"], headers=_PAGE_HEADERS, media_type=_STATIC["index.html"])

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static or name == "index.html":
            return Response("not found\n", 404, media_type="text/plain")
        return Response(static[name], headers=_PAGE_HEADERS, media_type=_STATIC[name])

    async def api_rooms(request: Request) -> Response:
        text = request.query_params.get("limit", "")
        limit = min(max(int(text), 1), MAX_PAGE_ROOMS) if text.isdigit() else PAGE_ROOMS
        try:
            view = await snapshot_of(source)
        except StoreError:
            return _api({"error": "cluster view unavailable"}, 503)
        rooms = view.rooms()
        summary = {"rooms": len(rooms), "members": sum(len(room.members) for room in rooms)}
        rows = [room_row(room) | {"node": room_node(view, room)} for room in rooms[:limit]]
        return _api(
            {"rooms": rows, "summary": summary, "nodes": node_rows(view), "time": time.time()}
        )

    async def api_room(request: Request) -> Response:
        try:
            view = await snapshot_of(source)
            room = find_room(view, request.query_params.get("uri"))
        except StoreError:
            return _api({"error": "cluster view unavailable"}, 503)
        except RoomLookupError as exc:
            status = 404 if exc.kind == "not_found" else 400
            return _api({"error": exc.kind, "uri": exc.argument}, status)
        extra = {"info": room_info(room), "history": None, "node": room_node(view, room)}
        detail = room_detail(room) | extra
        read = getattr(source, "history", None)
        if read is not None:
            try:
                lines = await read(room.archive_key, STATUS_LINES)
            except StoreError:
                lines = None
            detail["history"] = history_lines(lines) if lines is not None else None
        return _api(detail)

    async def not_allowed(request: Request) -> Response:
        return JSONResponse({"error": "use POST"}, 405, {"Allow": "POST"})

    routes = [
        *chat_routes(chat, _PAGE_HEADERS, _api),
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/static/{name}", asset, methods=["GET", "HEAD"]),
        Route("/RPC", rpc, methods=["POST"]),
        Route("/RPC", not_allowed, methods=["GET", "HEAD", "PUT", "DELETE", "PATCH"]),
        Route("/metrics", metrics_page, methods=["GET", "HEAD"]),
        Route("/api/rooms", api_rooms, methods=["GET", "HEAD"]),
        Route("/api/room", api_room, methods=["GET", "HEAD"]),
    ]
    return Starlette(routes=routes)


# ---------------------------------------------------------------------------------- server
class _NotRunningOn(logging.Filter):
    """Hypercorn's "Running on <url> (CTRL + C to quit)": the URL is reported once, by
    :func:`serve_http`'s caller (``imc-actors serve`` prints ``management on <url>``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Running on ")


_HYPERCORN_LOG = logging.getLogger("imc_actors.control.http.server")
_HYPERCORN_LOG.addFilter(_NotRunningOn())


def _single_os_error(exc: BaseException) -> OSError | None:
    """``exc`` if it is an OSError, or the one OSError inside (nested) single-exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


async def serve_http(
    app: Any,
    listen: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with Hypercorn's Trio worker on ``listen`` until cancelled.

    Reports the base URL (``http://host:port``, the real port when ``listen`` asked for 0)
    through ``task_status``. Raises OSError naming ``rpc_listen`` when it cannot bind,
    :class:`ConfigError` when ``listen`` does not parse.
    """
    host, port = parse_listen(listen)
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.errorlog = _HYPERCORN_LOG
    config.accesslog = None
    config.graceful_timeout = 1.0
    config.include_server_header = False
    async with trio.open_nursery() as nursery:
        try:
            binds: list[str] = await nursery.start(partial(serve, app, config, mode="asgi"))
        except (OSError, BaseExceptionGroup) as exc:
            error = _single_os_error(exc)
            if error is None:
                raise
            raise OSError(error.errno, f"rpc_listen {listen}: {error.strerror or error}") from None
        if binds:  # the bound address, wildcards turned into something one can connect to
            host, port = parse_listen(binds[0])
        url = f"http://{connect_host(host)}:{port}"
        log.debug("management HTTP on %s (JSON-RPC %s/RPC, metrics %s/metrics)", url, url, url)
        task_status.started(url)
