"""JSON-RPC 2.0 for the management methods (spec §10), as Kamailio's jsonrpcs answers them.

:class:`RpcDispatcher` takes the decoded request body (one request object, or a batch list)
and returns the response object(s) to encode, or None when nothing is to be sent (only
notifications). The HTTP side (:mod:`imc_actors.control.http`) does the bytes. Methods are
read-only; :meth:`RpcDispatcher.handle` awaits those that read the database (``imc.history``).

Methods:

- ``imc.list_rooms`` (no params) -> ``[{"room": uri, "members": n, "owner": uri}, ...]``;
- ``imc.list_members`` ``[room_uri]`` (or ``{"room": room_uri}``) ->
  ``{"room": uri, "members": [uri, ...], "count": n}``; a room that cannot be listed is a
  JSON-RPC error with code 500 and message ``No room name``, ``Empty room name``,
  ``Invalid room name`` or ``Room not found`` (Kamailio's codes and texts);
- ``imc.room_info`` ``[room_uri]`` (or ``{"room": …}``) -> ``{"room", "name", "domain",
  "topic", "topic_by", "topic_time", "private", "owners": [uri…], "members": active count,
  "invited": n, "created": epoch seconds or null}``; errors as for ``imc.list_members``;
- ``imc.history`` ``[room_uri, limit, before]`` (or ``{"room", "limit", "before"}``; limit
  default 20, at most ``history_lines_max``; ``before`` a ``seq``, for the page before it) ->
  ``{"room": uri, "lines": [{"seq", "sender", "time", "content_type", "body"}…]}`` oldest
  first; errors as above, plus code 500 ``History is off`` (``history_max = 0``) and
  ``History unavailable`` (the database cannot be read now);
- ``imc.nodes`` (no params) -> ``[{"name", "addresses": [...], "heartbeat": epoch seconds or
  null, "age": seconds or null, "live": bool, "rooms": n}, ...]``, the nodes of the cluster
  (``[]`` without ``node``; null times: the node shut down cleanly);
- ``system.listMethods`` -> the method names.

With ``node`` set (issue 13) every method answers for every room of the cluster (from
:meth:`Conference.snapshot <imc_actors.conference.Conference.snapshot>`: the rooms this node
serves from memory, the others from the database), ``imc.list_rooms`` entries and
``imc.room_info`` also give ``"node"``: the node holding the room now (null: none). When the
database cannot be read for that, the answer is error 500 ``Cluster view unavailable``.

Admin actions (when the source can carry them out, i.e. a
:class:`~imc_actors.conference.Conference`), run by the room's actor like a command and
durable before the answer:

- ``imc.destroy_room`` ``[room_uri]`` (or ``{"room": …}``) -> ``{"room": uri, "destroyed": true}``;
- ``imc.kick`` ``[room_uri, user, reason?]`` (or ``{"room", "user", "reason"}``) ->
  ``{"room": uri, "user": uri, "kicked": true}``;
- ``imc.ban`` ``[room_uri, user, reason?]`` (``user`` may be ``*@domain``) ->
  ``{"room": uri, "user": uri, "banned": true}``.

A room that cannot be found is the error of ``imc.list_members``; a refusal by the room is an
error whose code is the SIP code (400, 403, 404) and whose message is the notice text without
``*** `` (``The room's owner cannot be kicked``). An action for a room another node holds is
not forwarded: error 503 ``Room is held by node <name>; send the request to that node``.

Protocol errors use the JSON-RPC codes: -32700 parse error, -32600 invalid request, -32601
method not found, -32602 invalid params, -32603 internal error.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from ..store.repository import StoreError
from .views import (
    HistorySource,
    RoomLookupError,
    RoomSource,
    find_room,
    history_lines,
    in_cluster,
    node_rows,
    room_info,
    room_node,
    room_summary,
    snapshot_of,
)

__all__ = ["RpcDispatcher", "RpcError", "RoomAdmin", "error_response", "PARSE_ERROR"]

log = logging.getLogger("imc_actors.control.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_LOOKUP_TEXTS = {
    "missing": "No room name",
    "empty": "Empty room name",
    "invalid": "Invalid room name",
    "not_found": "Room not found",
}


class RpcError(Exception):
    """A JSON-RPC error object: ``code`` and ``message`` (and optional ``data``)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.data = data

    def as_object(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def error_response(error: RpcError, request_id: Any = None) -> dict[str, Any]:
    """A complete error response object."""
    return {"jsonrpc": "2.0", "error": error.as_object(), "id": request_id}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


#: A method: ``(view, params)``, ``view`` being what the rooms are read from (the cluster's
#: snapshot, or the source itself).
Method = Callable[[RoomSource, list[Any] | dict[str, Any]], Any]


@runtime_checkable
class RoomAdmin(Protocol):
    """A source that can also act on rooms (:meth:`Conference.administer`)."""

    def administer(
        self, room_uri: str, action: str, user: str | None = None, reason: str = ""
    ) -> Awaitable[Any]: ...


class RpcDispatcher:
    """Answers JSON-RPC requests about the rooms of ``source``.

    Every method, the admin actions included, goes through :meth:`handle` and :meth:`call`
    (one place to guard them all). Read-only methods answer between two checkpoints; the
    admin actions wait for the room's actor.
    """

    def __init__(self, source: RoomSource) -> None:
        self.source = source
        self.methods: dict[str, Method] = {
            "imc.list_rooms": self._list_rooms,
            "imc.list_members": self._list_members,
            "imc.room_info": self._room_info,
            "imc.nodes": self._nodes,
            "system.listMethods": self._list_methods,
        }
        if isinstance(source, RoomAdmin):
            self.methods |= {
                "imc.destroy_room": self._destroy_room,
                "imc.kick": self._kick,
                "imc.ban": self._ban,
            }
        if hasattr(source, "history"):
            self.methods["imc.history"] = self._history

    # ------------------------------------------------------------------ protocol
    async def handle(self, payload: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
        """Answer a decoded request body: one object, or a batch (list) of them.

        Returns the response (a list for a batch), or None when every request was a
        notification (then nothing is sent back, as JSON-RPC 2.0 asks).
        """
        if isinstance(payload, list):
            if not payload:
                return error_response(RpcError(INVALID_REQUEST, "Invalid Request", "empty batch"))
            responses = [r for r in [await self._one(item) for item in payload] if r is not None]
            return responses or None
        return await self._one(payload)

    async def _one(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict):
            return error_response(RpcError(INVALID_REQUEST, "Invalid Request", "not an object"))
        request_id = request.get("id")
        if not _valid_id(request_id):
            return error_response(RpcError(INVALID_REQUEST, "Invalid Request", "bad id"))
        notification = "id" not in request
        method = request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return error_response(
                RpcError(INVALID_REQUEST, "Invalid Request", "need jsonrpc '2.0' and a method name"),
                request_id,
            )
        try:
            result = await self.call(method, request.get("params", []))
        except RpcError as exc:
            return None if notification else error_response(exc, request_id)
        except Exception:
            log.exception("JSON-RPC method %s raised", method)
            return None if notification else error_response(RpcError(INTERNAL_ERROR, "Internal error"), request_id)
        if notification:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": request_id}

    async def call(self, method: str, params: Any) -> Any:
        """Run one method; raises :class:`RpcError`. Checkpoints for the admin actions, and
        where the rooms are read from the database (a cluster)."""
        function = self.methods.get(method)
        if function is None:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", method)
        if not isinstance(params, list | dict):
            raise RpcError(INVALID_PARAMS, "Invalid params", "params must be an array or an object")
        if not _encodable(params):
            raise RpcError(INVALID_PARAMS, "Invalid params", "strings must be valid Unicode (a lone surrogate is not)")
        view = self.source
        if method != "system.listMethods":
            try:
                view = await snapshot_of(self.source)
            except StoreError:
                raise RpcError(500, "Cluster view unavailable") from None
        result = function(view, params)
        if inspect.isawaitable(result):
            result = await result
        return result

    # ------------------------------------------------------------------ methods
    def _list_rooms(
        self, view: RoomSource, params: list[Any] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        if params:
            raise RpcError(INVALID_PARAMS, "Invalid params", "imc.list_rooms takes no parameters")
        if in_cluster(view):
            return [room_summary(room) | {"node": room_node(view, room)} for room in view.rooms()]
        return [room_summary(room) for room in view.rooms()]

    def _nodes(self, view: RoomSource, params: list[Any] | dict[str, Any]) -> list[dict[str, Any]]:
        if params:
            raise RpcError(INVALID_PARAMS, "Invalid params", "imc.nodes takes no parameters")
        return node_rows(view)

    def _room_arg(
        self, view: RoomSource, method: str, params: list[Any] | dict[str, Any],
        names: tuple[str, ...] = ("room",),
    ) -> tuple[Any, list[Any]]:  # fmt: skip
        """The room named by the first parameter (as ``find_room`` finds it in ``view``) and
        the rest of the positional parameters ``names`` lists (missing ones are left out)."""
        args = _positional(method, params, names)
        if args and not isinstance(args[0], str):
            raise RpcError(INVALID_PARAMS, "Invalid params", "the room must be a string")
        return _find(view, args[0] if args else None), args[1:]

    def _list_members(self, view: RoomSource, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
        room, _ = self._room_arg(view, "imc.list_members", params)
        return {
            "room": room.uri,
            "members": [member.uri for member in room.members],
            "count": len(room.members),
        }

    def _room_info(self, view: RoomSource, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
        room, _ = self._room_arg(view, "imc.room_info", params)
        if in_cluster(view):
            return room_info(room) | {"node": room_node(view, room)}
        return room_info(room)

    async def _history(
        self, view: RoomSource, params: list[Any] | dict[str, Any]
    ) -> dict[str, Any]:
        room, rest = self._room_arg(view, "imc.history", params, ("room", "limit", "before"))
        source: HistorySource = self.source  # type: ignore[assignment]
        cap = source.history_limit
        if cap <= 0:
            raise RpcError(500, "History is off")
        limit, before = (rest + [None, None])[:2]
        for name, value, top in (("limit", limit, math.inf), ("before", before, 2**63)):
            # a limit of any size is capped below (10^26 was refused as "not positive"); a
            # seq above 2^63-1 is one no row has
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < top
            ):
                what = "a positive integer" if top == math.inf else "an integer from 1 to 2^63-1"
                raise RpcError(INVALID_PARAMS, "Invalid params", f"{name} must be {what}")
        limit = min(limit or min(20, cap), cap)
        try:
            lines = await source.history(room.archive_key, limit, before)
        except StoreError:
            raise RpcError(500, "History unavailable") from None
        return {"room": room.uri, "lines": history_lines(lines or [])}

    def _list_methods(self, view: RoomSource, params: list[Any] | dict[str, Any]) -> list[str]:
        return sorted(self.methods)

    # ------------------------------------------------------------------ admin actions
    async def _destroy_room(
        self, view: RoomSource, params: list[Any] | dict[str, Any]
    ) -> dict[str, Any]:
        room, _, _ = _action_params("imc.destroy_room", params, ("room",))
        uri = await self._act(view, room, "destroy")
        return {"room": uri, "destroyed": True}

    async def _kick(self, view: RoomSource, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
        room, user, reason = _action_params("imc.kick", params, ("room", "user", "reason"))
        uri = await self._act(view, room, "kick", user, reason)
        return {"room": uri, "user": user, "kicked": True}

    async def _ban(self, view: RoomSource, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
        room, user, reason = _action_params("imc.ban", params, ("room", "user", "reason"))
        uri = await self._act(view, room, "ban", user, reason)
        return {"room": uri, "user": user, "banned": True}

    async def _act(
        self,
        view: RoomSource,
        room: str | None,
        action: str,
        user: str | None = None,
        reason: str = "",
    ) -> str:
        """Carry out ``action`` in the room ``room`` names; its URI, or :class:`RpcError`."""
        state = _find(view, room)
        assert isinstance(self.source, RoomAdmin)
        answer = await self.source.administer(state.uri, action, user, reason)
        if answer.code >= 300:
            text = (answer.body or answer.reason.encode()).decode("utf-8", "replace")
            if answer.code == 404 and text == "*** Room not found":  # gone meanwhile
                raise RpcError(500, _LOOKUP_TEXTS["not_found"])
            raise RpcError(answer.code, text.removeprefix("*** "))
        return state.uri


def _find(view: RoomSource, room: str | None) -> Any:
    """The room ``room`` names in ``view`` (as ``find_room`` finds it), or Kamailio's error."""
    try:
        return find_room(view, room)
    except RoomLookupError as exc:
        raise RpcError(500, _LOOKUP_TEXTS[exc.kind]) from None


def _encodable(value: Any) -> bool:
    """True when every string in ``value`` (JSON: strings, numbers, lists, objects) can be
    written as UTF-8: JSON's ``\\ud800`` escapes give lone surrogates, which no SIP message,
    database row or log line can hold (an admin reason with one crashed its room's actor)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_encodable(item) for item in value)
    if isinstance(value, dict):
        return all(_encodable(key) and _encodable(item) for key, item in value.items())
    return True


def _positional(method: str, params: list[Any] | dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    """``params`` as a positional list in the order of ``names``: named ones must be among
    ``names`` (those left out, at the end, are left out), positional ones at most as many."""
    if isinstance(params, dict):
        unknown = set(params) - set(names)
        if unknown:
            raise RpcError(INVALID_PARAMS, "Invalid params", f"unknown parameter {sorted(unknown)[0]!r}")
        args = [params.get(name) for name in names]
        while args and args[-1] is None:
            args.pop()
        return args
    if len(params) > len(names):
        raise RpcError(INVALID_PARAMS, "Invalid params", f"{method} takes {', '.join(names)}")
    return list(params)


def _action_params(
    method: str, params: list[Any] | dict[str, Any], names: tuple[str, ...]
) -> tuple[str | None, str | None, str]:
    """``(room, user, reason)`` from positional or named ``params`` (strings; ``user`` is
    required when the method takes one, ``reason`` defaults to empty)."""
    values = _positional(method, params, names)
    values += [None] * (len(names) - len(values))
    if any(value is not None and not isinstance(value, str) for value in values):
        raise RpcError(INVALID_PARAMS, "Invalid params", "parameters must be strings")
    room = values[0]
    user = values[1] if len(names) > 1 else None
    reason = (values[2] if len(names) > 2 else None) or ""
    if len(names) > 1 and not user:
        raise RpcError(INVALID_PARAMS, "Invalid params", f"{method} needs a user")
    return room, user, reason
