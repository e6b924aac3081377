"""JSON-RPC 2.0 over HTTP end to end (spec §10), against rooms made over SIP."""

from __future__ import annotations

import pytest

from tests.support.control import CHAT, MANAGER, command, http, next_message, populate, rpc

ROOMS = [
    {"room": "sip:chat@127.0.0.1", "members": 3, "owner": "sip:alice@127.0.0.1"},
    {"room": "sip:secret@127.0.0.1", "members": 1, "owner": "sip:bob@127.0.0.1"},
]
CHAT_MEMBERS = {
    "room": "sip:chat@127.0.0.1",
    "members": ["sip:alice@127.0.0.1", "sip:bob@127.0.0.1", "sip:carol@127.0.0.1"],
    "count": 3,
}


@pytest.fixture
def config_overrides() -> dict:
    return {"rpc_listen": "127.0.0.1:0"}


def call(method: str, params=None, request_id=1) -> dict:
    request = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        request["params"] = params
    return request


async def result(url: str, method: str, params=None):
    answer = await rpc(url, call(method, params))
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 1, body
    assert "error" not in body, body
    return body["result"]


async def error(url: str, method: str, params=None) -> dict:
    answer = await rpc(url, call(method, params))
    assert answer.status == 200
    body = answer.json()
    assert "result" not in body, body
    return body["error"]


async def test_list_rooms_and_members(server, ua):
    assert server.http_url.startswith("http://127.0.0.1:") and not server.http_url.endswith(":0")
    url = server.rpc_url
    assert await result(url, "imc.list_rooms") == []
    await populate(ua)
    assert await result(url, "imc.list_rooms") == ROOMS
    assert await result(url, "imc.list_rooms", []) == ROOMS
    assert await result(url, "imc.list_members", [CHAT]) == CHAT_MEMBERS
    assert await result(url, "imc.list_members", {"room": CHAT}) == CHAT_MEMBERS
    assert await result(url, "imc.list_members", ["SIP:Chat@127.0.0.1;transport=tcp"]) == CHAT_MEMBERS
    assert "imc.list_members" in await result(url, "system.listMethods")
    assert await result(url, "imc.nodes") == []  # no node name: no cluster


async def test_owner_is_the_first_owner_by_joining_order(server, ua):
    alice, bob = await ua("alice"), await ua("bob")
    await command(alice, MANAGER, "#create chat")
    await next_message(alice)
    await command(bob, CHAT, "#join")
    await command(alice, CHAT, "#modify bob owner")
    await command(alice, CHAT, "#modify alice member")  # alice joined first, bob is the owner now
    rooms = await result(server.rpc_url, "imc.list_rooms")
    assert rooms == [{"room": CHAT, "members": 2, "owner": "sip:bob@127.0.0.1"}]


async def test_room_errors(server, ua):
    await populate(ua)
    url = server.rpc_url
    assert await error(url, "imc.list_members") == {"code": 500, "message": "No room name"}
    assert await error(url, "imc.list_members", []) == {"code": 500, "message": "No room name"}
    assert await error(url, "imc.list_members", [""]) == {"code": 500, "message": "Empty room name"}
    assert await error(url, "imc.list_members", ["."]) == {"code": 500, "message": "Empty room name"}
    assert await error(url, "imc.list_members", ["not a uri"]) == {"code": 500, "message": "Invalid room name"}
    assert await error(url, "imc.list_members", ["sip:127.0.0.1"]) == {"code": 500, "message": "Invalid room name"}
    assert await error(url, "imc.list_members", ["sip:nope@127.0.0.1"]) == {"code": 500, "message": "Room not found"}


async def test_protocol_errors(server):
    url = server.rpc_url
    answer = await rpc(url, b'{"jsonrpc": "2.0", "method": ')
    assert answer.status == 200
    assert answer.json() == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}
    assert (await rpc(url, b"\xff\xfe")).json()["error"]["code"] == -32700
    assert (await error(url, "imc.no_such_method"))["code"] == -32601
    assert (await error(url, "imc.list_members", [1]))["code"] == -32602
    assert (await error(url, "imc.list_members", [CHAT, CHAT]))["code"] == -32602
    assert (await error(url, "imc.list_members", {"nope": CHAT}))["code"] == -32602
    assert (await error(url, "imc.list_rooms", ["unexpected"]))["code"] == -32602
    assert (await error(url, "imc.list_rooms", "not structured"))["code"] == -32602
    invalid = (await rpc(url, {"method": "imc.list_rooms", "id": 7})).json()  # no "jsonrpc"
    assert invalid["error"]["code"] == -32600 and invalid["id"] == 7
    assert (await rpc(url, [])).json()["error"]["code"] == -32600  # empty batch
    assert (await rpc(url, 42)).json()["error"]["code"] == -32600
    # not JSON, though Python reads it: nested past its recursion limit, NaN and Infinity
    assert (await rpc(url, b"[" * 5000 + b"]" * 5000)).json()["error"]["code"] == -32700
    # (1e999: was read as infinity and echoed as the id Infinity, no JSON either)
    for constant in (b"NaN", b"-Infinity", b"1e999", b"-1e999"):
        body = b'{"jsonrpc": "2.0", "method": "imc.list_rooms", "id": ' + constant + b"}"
        answer = await rpc(url, body)
        assert b"Infinity" not in answer.body and answer.json()["error"]["code"] == -32700
    body = b'{"jsonrpc": "2.0", "method": "imc.list_rooms", "params": {"limit": 1e999}, "id": 8}'
    assert (await rpc(url, body)).json()["error"]["code"] == -32700
    # a lone surrogate (a \ud800 escape) in any string: invalid params, no room touched
    body = b'{"jsonrpc": "2.0", "method": "imc.kick", "params": ["%s", "bob", "\\ud800"], "id": 3}'
    answer = (await rpc(url, body.replace(b"%s", CHAT.encode()))).json()
    assert answer["error"]["code"] == -32602 and "surrogate" in answer["error"]["data"]
    # only POST
    answer = await http(url)
    assert answer.status == 405 and answer.headers["allow"] == "POST"


async def test_batch(server, ua):
    await populate(ua)
    url = server.rpc_url
    batch = [
        call("imc.list_rooms", request_id=1),
        {"jsonrpc": "2.0", "method": "imc.list_rooms"},  # a notification: no answer
        call("imc.list_members", ["sip:nope@127.0.0.1"], request_id="two"),
        call("no.such.method", request_id=3),
        {"not": "a request"},
        call("imc.list_members", [CHAT], request_id=5),
    ]
    answer = await rpc(url, batch)
    assert answer.status == 200
    assert answer.json() == [
        {"jsonrpc": "2.0", "result": ROOMS, "id": 1},
        {"jsonrpc": "2.0", "error": {"code": 500, "message": "Room not found"}, "id": "two"},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found", "data": "no.such.method"}, "id": 3},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request", "data": "need jsonrpc '2.0' and a method name"}, "id": None},
        {"jsonrpc": "2.0", "result": CHAT_MEMBERS, "id": 5},
    ]
    # a batch of notifications only: nothing to answer
    answer = await rpc(url, [{"jsonrpc": "2.0", "method": "imc.list_rooms"}])
    assert answer.status == 204 and answer.body == b""


async def test_status_page_endpoints(server, ua):
    await populate(ua)
    base = server.http_url
    page = await http(base + "/")
    assert page.status == 200 and b'<script src="/static/app.js"' in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert (await http(base + "/static/app.js")).status == 200
    assert (await http(base + "/static/nope.js")).status == 404
    rooms = (await http(base + "/api/rooms")).json()
    assert rooms["summary"] == {"rooms": 2, "members": 4}
    assert [(r["room"], r["members"], r["invited"], r["private"]) for r in rooms["rooms"]] == [
        (CHAT, 3, 1, False),
        ("sip:secret@127.0.0.1", 1, 0, True),
    ]
    assert len((await http(base + "/api/rooms?limit=1")).json()["rooms"]) == 1
    detail = (await http(base + "/api/room?uri=sip%3Achat%40127.0.0.1")).json()
    assert [(m["uri"], m["role"], m["invited"]) for m in detail["members"]] == [
        ("sip:alice@127.0.0.1", "owner", False),
        ("sip:bob@127.0.0.1", "member", False),
        ("sip:carol@127.0.0.1", "member", True),
    ]
    assert (await http(base + "/api/room?uri=sip%3Anope%40127.0.0.1")).status == 404
    assert (await http(base + "/api/room")).status == 400


async def test_room_info_and_history(server, ua):
    agents = await populate(ua)
    alice, bob = agents["alice"], agents["bob"]
    url = server.rpc_url
    await command(alice, CHAT, "#topic Plans for Friday")
    await next_message(alice)
    await next_message(bob)
    info = await result(url, "imc.room_info", [CHAT])
    created = info.pop("created")
    topic_time = info.pop("topic_time")
    assert info == {
        "room": CHAT, "name": "chat", "domain": "127.0.0.1", "topic": "Plans for Friday",
        "topic_by": "sip:alice@127.0.0.1", "private": False, "owners": ["sip:alice@127.0.0.1"],
        "members": 2, "invited": 1,
    }  # fmt: skip
    assert isinstance(created, int) and isinstance(topic_time, int) and created <= topic_time
    assert await result(url, "imc.room_info", {"room": CHAT}) == info | {
        "created": created, "topic_time": topic_time,
    }  # fmt: skip
    assert await error(url, "imc.room_info", ["sip:nope@127.0.0.1"]) == {
        "code": 500, "message": "Room not found",
    }  # fmt: skip

    assert await result(url, "imc.history", [CHAT]) == {"room": CHAT, "lines": []}
    for i in range(5):
        await command(bob, CHAT, f"line {i}", code=202)
        assert await next_message(alice) == f"[bob]: line {i}".encode()
    page = await result(url, "imc.history", [CHAT, 2])
    assert [(line["seq"], line["sender"], line["body"]) for line in page["lines"]] == [
        (4, "sip:bob@127.0.0.1", "line 3"), (5, "sip:bob@127.0.0.1", "line 4"),
    ]  # fmt: skip
    assert page["lines"][0]["content_type"] == "text/plain"
    older = await result(url, "imc.history", {"room": CHAT, "limit": 10, "before": 4})
    assert [line["body"] for line in older["lines"]] == ["line 0", "line 1", "line 2"]
    assert await error(url, "imc.history", [CHAT, 0]) == {
        "code": -32602, "message": "Invalid params", "data": "limit must be a positive integer",
    }  # fmt: skip
    assert len((await result(url, "imc.history", [CHAT, 10_000]))["lines"]) == 5  # capped
    assert len((await result(url, "imc.history", [CHAT, 10**26]))["lines"]) == 5  # capped too
    assert (await error(url, "imc.history", [CHAT, 2, 2**63]))["data"] == (
        "before must be an integer from 1 to 2^63-1"
    )
    assert (await error(url, "imc.history", [CHAT, 2, 2**63]))["code"] == -32602  # no row has it
    assert "imc.history" in await result(url, "system.listMethods")

    detail = (await http(f"{server.http_url}/api/room?uri={CHAT}")).json()
    assert detail["info"]["topic"] == "Plans for Friday"
    assert [line["body"] for line in detail["history"]] == [f"line {i}" for i in range(5)]


async def test_a_client_gone_before_its_body_leaves_no_traceback(server, caplog):
    import logging
    from urllib.parse import urlsplit

    import trio

    caplog.set_level(logging.ERROR)
    parts = urlsplit(server.rpc_url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    await stream.send_all(
        f"POST /RPC HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    await stream.aclose()  # gone with 99 bytes of the body unsent
    # the server still answers, and said nothing at ERROR about the one that left
    assert isinstance(await result(server.rpc_url, "imc.list_rooms"), list)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0", "rpc_max_requests": 2}])
async def test_bodies_read_at_once_are_bounded_by_rpc_max_requests(server):
    # clients that announce a 1 MiB body and send it slowly must not each hold a buffer of it:
    # beyond rpc_max_requests at once, a request gets 503 before its body is read
    from urllib.parse import urlsplit

    import trio

    parts = urlsplit(server.rpc_url)
    body = b'{"jsonrpc":"2.0","method":"imc.list_rooms","id":1}'
    held = []
    for _ in range(2):
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        await stream.send_all(
            f"POST /RPC HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10]
        )
        held.append(stream)
    with trio.fail_after(5):  # until both held requests are being read (each a moment at most)
        while (answer := await rpc(server.rpc_url, call("imc.list_rooms"))).status == 200:
            await trio.sleep(0)
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert "too many requests" in answer.json()["error"]
    # one held request finishes its body: it is answered, and its slot is free again
    await held[0].send_all(body[10:])
    with trio.fail_after(5):
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += await held[0].receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 200")
    assert await result(server.rpc_url, "imc.list_rooms") == []
    for stream in held:
        await stream.aclose()


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0", "rpc_body_timeout": 0.5}])
async def test_a_body_trickled_past_rpc_body_timeout_gets_408_and_frees_its_place(server):
    # 32 clients sending a byte every few seconds held every rpc_max_requests place for ever:
    # JSON-RPC answered 503 to everyone else (memory tour)
    from urllib.parse import urlsplit

    import trio

    parts = urlsplit(server.rpc_url)
    body = b'{"jsonrpc":"2.0","method":"imc.list_rooms","id":1}'
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    await stream.send_all(
        f"POST /RPC HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10]
    )
    with trio.fail_after(10):  # the server's own deadline (0.5 s) answers first
        reply = b""
        while not reply.endswith(b"}"):  # the JSON error body, after the headers
            reply += await stream.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"request body not received within 0.5 s" in reply
    await stream.aclose()
    assert await result(server.rpc_url, "imc.list_rooms") == []
