"""Forwarding between nodes (issue 13 item 2): a node that gets a MESSAGE for a room another
node holds hands it to that node over SIP, and relays the final answer.

The forwarded MESSAGE goes to the owner's SIP listen address (from ``imc_nodes``, see
``Repository.locate``; Request-URI ``sip:host:port``, the node itself, sent there directly even
when ``outbound_proxy`` is set: the proxy in front of the nodes would not route it, and the owner
accepts it only from the forwarding node's own address), From the original sender, To the original Request-URI, with the
original body, Content-Type and Call-ID (so the owner's notices carry it as In-Reply-To), and
two headers:

- ``X-IMC-Forwarded-By: <node>``, the forwarding node's name. The owner accepts the request
  only from a source address that node advertises in ``imc_nodes`` (403 otherwise), and never
  forwards it again (one hop: a forwarded request for a room the owner does not hold either
  gets 503 there);
- ``X-IMC-Request-URI: <uri>``, the original Request-URI (the forwarded one names the owner's
  address).

A management action (``imc.kick``, ``imc.ban``, ``imc.destroy_room`` on a node that does not
hold the room: the workers of ``serve --workers N`` have one management listener) goes the
same way with a third header, ``X-IMC-Admin: <action>``, and a JSON body ``{"user": …,
"reason": …}``; the owner carries it out as its own management interface would and answers
with the action's code, a refusal's ``***`` text as the reason phrase.

The owner runs the command and does the fan-out itself (its notices go straight to the
members and to the original sender); the forwarder answers the original sender with the
owner's final code. It waits at most ``lease_ttl`` seconds for it: an owner that does not
answer by then (hung, or stopped) no longer renews its leases either, and the client is
better told at once (the conference answers ``503`` with ``Retry-After`` and a ``***``
notice) than left to its own Timer F of 32 seconds, which the forward's would equal.
"""

from __future__ import annotations

import json
import logging
import math

import trio

from .actors.supervisor import Answer
from .config import ListenAddress
from .sip import reason_phrase
from .store.nodes import NodeInfo, RoomLocation
from .transport import ClientResult, SipTransport, Source
from .transport.limits import LogBudget

log = logging.getLogger("imc_actors.forwarding")

__all__ = ["FORWARDED_ADMIN", "FORWARDED_BY", "FORWARDED_URI", "Forwarder", "admin_request", "from_node"]

FORWARDED_BY = "X-IMC-Forwarded-By"
FORWARDED_URI = "X-IMC-Request-URI"
FORWARDED_ADMIN = "X-IMC-Admin"
#: The Content-Type of a forwarded management action's body.
ADMIN_TYPE = "application/json"


class Forwarder:
    """Hands a conference's MESSAGE to the node holding its room (``Conference.forward``)."""

    def __init__(self, transport: SipTransport, node: str, lease_ttl: float) -> None:
        self._transport = transport
        self._node = node
        self._retry_after = max(1, math.ceil(lease_ttl))
        self._timeout = lease_ttl
        self.forwarded = 0
        self.timeouts = 0
        self._silent_log = LogBudget(1)  # an owner that died: a line a second, not one a request

    async def __call__(
        self, request_uri: str, sender: str, body: bytes, content_type: str | None,
        call_id: str, location: RoomLocation,
    ) -> Answer | None:  # fmt: skip
        """Forward one MESSAGE to ``location``'s node; its final answer, or None when the
        node advertises no UDP or TCP address or gives no final answer within ``lease_ttl``
        (then the request was perhaps carried out there: it is not tried elsewhere)."""
        result = await self._send(
            location, "a MESSAGE", from_uri=sender, to_uri=request_uri, headers=[],
            body=body, content_type=content_type, call_id=call_id or None,
        )  # fmt: skip
        if result is None:
            return None
        return Answer(result.code, result.reason, retry_after=self._retry_after_of(result))

    async def admin(
        self, room_uri: str, action: str, user: str | None, reason: str, location: RoomLocation
    ) -> Answer | None:
        """Hand a management action on ``room_uri`` to ``location``'s node; its answer (a
        refusal's ``***`` text as the body), or None when the node cannot be reached (as
        :meth:`__call__`)."""
        result = await self._send(
            location, f"a {action}",
            from_uri=None,  # the forwarding node's own (From one of the rooms is a loop: 482)
            to_uri=room_uri, headers=[(FORWARDED_ADMIN, action)],
            body=json.dumps({"user": user, "reason": reason}).encode(), content_type=ADMIN_TYPE,
        )  # fmt: skip
        if result is None:
            return None
        text = result.reason.encode() if result.code >= 300 and result.reason.startswith("*** ") else None
        return Answer(result.code, reason_phrase(result.code), retry_after=self._retry_after_of(result), body=text)

    def _retry_after_of(self, result: ClientResult) -> int | None:
        return self._retry_after if result.code == 503 else None

    async def _send(
        self, location: RoomLocation, what: str, *, from_uri: str | None, to_uri: str,
        headers: list[tuple[str, str]], body: bytes, content_type: str | None,
        call_id: str | None = None,
    ) -> ClientResult | None:  # fmt: skip
        """A MESSAGE to ``location``'s node itself, with the forwarding headers (and
        ``headers``), From ``from_uri`` (None: this node); its final result, or None when the
        node has no address to send to or gives no final answer within ``lease_ttl``."""
        target = _target(location.addresses)
        if target is None:
            return None
        # addressed to the node itself, without a user: a user part would make the router
        # look the URI up in the registrar when the node's host is also a served domain
        host = f"[{target.host}]" if ":" in target.host else target.host
        uri = f"sip:{host}:{target.port}" + (";transport=tcp" if target.transport == "tcp" else "")
        result = None
        with trio.move_on_after(self._timeout):
            result = await self._transport.send_request(
                "MESSAGE", uri, from_uri=from_uri or f"sip:{self._node}@{host}", to_uri=to_uri,
                headers=[(FORWARDED_BY, self._node), (FORWARDED_URI, to_uri), *headers],
                body=body, content_type=content_type, call_id=call_id,
                direct=True,  # to the node itself, never through outbound_proxy
            )  # fmt: skip
        self.forwarded += 1
        if result is None or result.local:  # (a 503 of ICMP unreachable is not the node's)
            self.timeouts += 1
            self._silent_log.log(
                log, logging.WARNING, trio.current_time(),
                "node %s did not answer %s for %s forwarded to it%s", location.node, what,
                location.room, f" within {self._timeout:g} s" if result is None else f" ({result.reason})",
                what="such lines",
            )  # fmt: skip
            return None
        log.debug("forwarded %s for %s to node %s: %d", what, location.room, location.node, result.code)
        return result


def admin_request(body: bytes) -> tuple[str | None, str] | None:
    """(user, reason) of a forwarded management action's JSON body, or None when it is not
    one (a node of another version, or a forged request from a node's address)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    user, reason = data.get("user"), data.get("reason", "")
    if not (user is None or isinstance(user, str)) or not isinstance(reason, str):
        return None
    return user, reason


def _target(addresses: tuple[str, ...]) -> ListenAddress | None:
    parsed = []
    for text in addresses:
        try:
            parsed.append(ListenAddress.parse(text))
        except ValueError:
            continue
    for transport in ("udp", "tcp"):
        for address in parsed:
            if address.transport == transport:
                return address
    return None


def from_node(nodes: list[NodeInfo], name: str, source: Source) -> bool:
    """True when ``source`` is an address the node ``name`` advertises (UDP: host and port;
    TCP: host, the connection's port being the client's own)."""
    for info in nodes:
        if info.name != name:
            continue
        for text in info.addresses:
            try:
                address = ListenAddress.parse(text)
            except ValueError:
                continue
            if address.host != source.host:
                continue
            if address.transport == "udp" and source.transport == "udp" and address.port == source.port:
                return True
            if address.transport == source.transport != "udp":
                return True
    return False
