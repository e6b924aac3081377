"""The CLI's side of JSON-RPC: ``imc-actors rooms``, ``members ROOM``, ``nodes`` and ``rpc METHOD [ARGS]``.

Plain stdlib ``urllib`` (no proxy: the management listener is meant to be reached directly,
usually on loopback). Exit codes scripts can rely on:

====  ==================================================================================
0     success
1     the server answered with a JSON-RPC error (``Room not found``, unknown method, ...)
2     usage error (bad arguments, bad configuration, a URL that is not http://)
3     no JSON-RPC server could be reached at the URL (refused, timed out, not JSON-RPC);
      the message names the URL
4     the server wants a token (``rpc_token``) and none was sent, or refused the one sent
====  ==================================================================================

The token (``Authorization: Bearer <token>``) comes from ``--token``, else ``IMC_RPC_TOKEN``,
else ``rpc_token`` in the configuration file.
"""

from __future__ import annotations

import http.client
import json
import math
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = [
    "EXIT_DENIED",
    "EXIT_OK",
    "EXIT_RPC_ERROR",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "RpcClientError",
    "RpcDenied",
    "RpcFailure",
    "RpcUnreachable",
    "call",
    "run_members",
    "run_nodes",
    "run_rooms",
    "run_rpc",
]

PROG = "imc-actors"
EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4
#: Largest answer read from the server.
MAX_ANSWER = 64 * 1024 * 1024


class RpcClientError(Exception):
    """Base of the client's errors."""


class RpcUnreachable(RpcClientError):
    """Nothing usable answered at ``url``: ``reason`` says what happened."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the server at {url}: {reason}")
        self.url = url
        self.reason = reason


class RpcFailure(RpcClientError):
    """The server answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        text = f"{message} (error {code})"
        if data is not None:
            text += f": {data}"
        super().__init__(text)
        self.code = code
        self.message = message
        self.data = data


class RpcDenied(RpcClientError):
    """The server answered 401: it wants a token, or not the one sent."""

    def __init__(self, url: str, sent: bool) -> None:
        if sent:
            text = f"the server at {url} refused the token (wrong token)"
        else:
            text = (
                f"the server at {url} wants a token: pass --token, or set rpc_token "
                "(IMC_RPC_TOKEN or the configuration file)"
            )
        super().__init__(text)
        self.url = url
        self.sent = sent


class UsageError(RpcClientError):
    """The request cannot even be made (e.g. a URL that is not http://)."""


def call(
    url: str,
    method: str,
    params: Sequence[Any] = (),
    *,
    timeout: float = 10.0,
    token: str | None = None,
) -> Any:
    """Call ``method`` with positional ``params`` at ``url``; return its result. ``token`` is
    sent as ``Authorization: Bearer <token>``.

    Raises :class:`RpcFailure` for a JSON-RPC error, :class:`RpcDenied` for a 401,
    :class:`RpcUnreachable` when no JSON-RPC answer came back, :class:`UsageError` for a URL
    that is not ``http(s)://host...``.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        raise UsageError(f"--rpc: {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise UsageError(f"--rpc: expected an http:// URL, got {url!r}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout: expected a positive number of seconds, got {timeout:g}")
    if token is not None and (not token.isprintable() or not token.isascii()):
        raise UsageError("--token: a token is printable ASCII (no newline or control character)")
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            raw = response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise RpcDenied(url, bool(token)) from None
        status = f"HTTP {exc.code} {exc.reason or ''}".strip()
        why = _error_text(exc)
        raise RpcUnreachable(url, f"{status}{': ' + why if why else ''} (is this the /RPC URL?)") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise RpcUnreachable(url, text) from None
    except TimeoutError:
        raise RpcUnreachable(url, f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise RpcUnreachable(url, str(exc) or type(exc).__name__) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise RpcUnreachable(url, "the answer is not JSON (is this the /RPC URL?)") from None
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0":
        raise RpcUnreachable(url, "the answer is not a JSON-RPC 2.0 response")
    error = answer.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise RpcFailure(-32603, str(error))
        raise RpcFailure(int(error.get("code", -32603)), str(error.get("message", "")), error.get("data"))
    return answer.get("result")


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The ``error`` text of a refusal's JSON body (:mod:`.access`), or ''."""
    try:
        answer = json.loads(exc.read(4096))
    except (ValueError, OSError):
        return ""
    error = answer.get("error") if isinstance(answer, dict) else None
    return error if isinstance(error, str) else ""


# ---------------------------------------------------------------------------------- output
def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> list[str]:
    """Left-aligned columns (right-aligned for ``numeric`` column indexes), two spaces apart."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _fail(exc: RpcClientError, err: TextIO) -> int:
    err.write(f"{PROG}: {exc}\n")
    if isinstance(exc, RpcUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, RpcDenied):
        return EXIT_DENIED
    return EXIT_RPC_ERROR


def room_argument(text: str) -> str:
    """A room as typed on the command line: ``chat@example.com`` gets its ``sip:`` prefix."""
    if "@" in text and not text.lower().startswith(("sip:", "sips:")):
        return "sip:" + text
    return text


def _answer(
    url: str, method: str, params: list[Any], as_json: bool, timeout: float,
    token: str | None, out: TextIO, err: TextIO | None,
) -> tuple[Any, int | None]:  # fmt: skip
    """Call ``method``: ``(result, None)`` for the caller to print, or ``(None, exit code)``
    once the error was reported on ``err`` or the JSON result printed (``as_json``)."""
    try:
        result = call(url, method, params, timeout=timeout, token=token)
    except RpcClientError as exc:
        return None, _fail(exc, err or sys.stderr)
    if as_json:
        _print_json(result, out)
        return None, EXIT_OK
    expected = _SHAPES.get(method)
    if expected is not None and not _shaped(result, expected):
        failure = RpcUnreachable(url, f"the answer to {method} is not what it returns (is this an imc-actors server?)")
        return None, _fail(failure, err or sys.stderr)
    return result, None


#: What the table commands read from each method's result: a list of objects, or an object.
_SHAPES: dict[str, type] = {"imc.list_rooms": list, "imc.nodes": list, "imc.list_members": dict}


def _shaped(result: Any, expected: type) -> bool:
    if expected is dict:
        return isinstance(result, dict) and isinstance(result.get("members", []), list)
    return isinstance(result, list) and all(isinstance(item, dict) for item in result)


def run_rooms(
    url: str,
    *,
    as_json: bool = False,
    timeout: float = 10.0,
    token: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``imc-actors rooms``: every room with its member count and owner."""
    out = out or sys.stdout
    rooms, code = _answer(url, "imc.list_rooms", [], as_json, timeout, token, out, err)
    if code is not None:
        return code
    rows = [(r.get("room", ""), r.get("members", 0), r.get("owner") or "-") for r in rooms]
    heads: tuple[str, ...] = ("ROOM", "MEMBERS", "OWNER")
    if any("node" in r for r in rooms):  # a cluster (issue 13): the node holding each room
        rows = [(*row, r.get("node") or "-") for row, r in zip(rows, rooms, strict=True)]
        heads += ("NODE",)
    for line in _table(heads, rows, {1}):
        out.write(line + "\n")
    if not rows:
        out.write("(no rooms)\n")
    return EXIT_OK


def run_nodes(
    url: str,
    *,
    as_json: bool = False,
    timeout: float = 10.0,
    token: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``imc-actors nodes``: the nodes of the cluster (``imc.nodes``)."""
    out = out or sys.stdout
    nodes, code = _answer(url, "imc.nodes", [], as_json, timeout, token, out, err)
    if code is not None:
        return code
    rows = [
        (
            n.get("name", ""), "yes" if n.get("live") else "no", n.get("rooms", 0),
            "-" if n.get("age") is None else f"{n['age']:.1f}", " ".join(n.get("addresses", [])) or "-",
        )
        for n in nodes
    ]  # fmt: skip
    for line in _table(("NODE", "LIVE", "ROOMS", "AGE", "ADDRESSES"), rows, {2, 3}):
        out.write(line + "\n")
    if not rows:
        out.write("(no nodes: the server has no node name)\n")
    return EXIT_OK


def run_members(
    url: str,
    room: str,
    *,
    as_json: bool = False,
    timeout: float = 10.0,
    token: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``imc-actors members ROOM``: the room's listed members in joining order."""
    out = out or sys.stdout
    params = [room_argument(room)]
    answer, code = _answer(url, "imc.list_members", params, as_json, timeout, token, out, err)
    if code is not None:
        return code
    members = answer.get("members", [])
    count = answer.get("count", len(members))
    out.write(f"{answer.get('room', room)}: {count} member{'' if count == 1 else 's'}\n")
    for line in _table(("#", "MEMBER"), [(i, uri) for i, uri in enumerate(members, 1)], {0}):
        out.write(line + "\n")
    return EXIT_OK


def parse_argument(text: str) -> Any:
    """An ``rpc`` argument: a JSON value when it parses as one (``3``, ``true``, ``{"a": 1}``,
    ``"quoted"``), else the text itself as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_rpc(
    url: str,
    method: str,
    args: Sequence[str],
    *,
    timeout: float = 10.0,
    token: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``imc-actors rpc METHOD [ARGS...]``: any method; the result is printed as JSON."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        result = call(url, method, [parse_argument(a) for a in args], timeout=timeout, token=token)
    except RpcClientError as exc:
        return _fail(exc, err)
    _print_json(result, out)
    return EXIT_OK
