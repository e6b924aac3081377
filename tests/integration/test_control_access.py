"""Who may use the management HTTP listener, over real sockets: ``rpc_token`` (Bearer) on
``/RPC``, ``/api/*`` and ``/metrics`` (unless ``metrics_public``), the ``Host`` check (421)
with ``rpc_hosts``, the ``Origin`` check (403), ``POST /RPC`` only as application/json (415),
and the pages that stay open (the status page's files, ``/chat``)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from imc_actors.config import Config, ConfigError
from imc_actors.control import access
from tests.support.control import http, rpc

TOKEN = "s3cret-token-for-tests_0123456789"
LIST_ROOMS = {"jsonrpc": "2.0", "method": "imc.list_rooms", "id": 1}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def error_of(answer) -> str:
    return json.loads(answer.body)["error"]


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0", "rpc_token": TOKEN}])
async def test_the_token_guards_rpc_api_and_metrics(server):
    base = server.http_url
    for path in ("/api/rooms", "/api/room?uri=sip:chat@127.0.0.1", "/metrics"):
        refused = await http(base + path)
        assert refused.status == 401, path
        assert refused.headers["www-authenticate"] == 'Bearer realm="imc-actors"'
        assert error_of(refused) == access.NO_TOKEN
        wrong = await http(base + path, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status == 401
        assert wrong.headers["www-authenticate"] == 'Bearer realm="imc-actors", error="invalid_token"'
        assert error_of(wrong) == access.BAD_TOKEN
    assert (await http(base + "/api/rooms", headers=BEARER)).json()["rooms"] == []
    assert (await http(base + "/metrics", headers=BEARER)).status == 200
    assert (await http(base + "/api/room?uri=sip:chat@127.0.0.1", headers=BEARER)).status == 404

    assert (await rpc(server.rpc_url, LIST_ROOMS)).status == 401
    assert (await rpc(server.rpc_url, LIST_ROOMS, headers={"Authorization": f"Basic {TOKEN}"})).status == 401
    answer = await rpc(server.rpc_url, LIST_ROOMS, headers=BEARER)
    assert (answer.status, answer.json()["result"]) == (200, [])

    # no data on these: the status page asks for the token itself; /chat is a SIP user page
    for path in ("/", "/static/app.js", "/static/style.css", "/chat", "/api/chat", "/static/chat.js"):
        assert (await http(base + path)).status == 200, path


@pytest.mark.parametrize(
    "config_overrides",
    [{"rpc_listen": "127.0.0.1:0", "rpc_token": TOKEN, "metrics_public": True}],
)
async def test_metrics_public_opens_metrics_only(server):
    assert (await http(server.http_url + "/metrics")).status == 200
    assert (await http(server.http_url + "/api/rooms")).status == 401


@pytest.mark.parametrize(
    "config_overrides",
    [{"rpc_listen": "127.0.0.1:0", "rpc_hosts": ["imc.example.org", "[::1]:8080", "other.example:8080"]}],
)
async def test_a_host_that_is_not_ours_gets_421(server):
    base = server.http_url
    port = urlsplit(base).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "imc.example.org", "IMC.example.org:9999",
                 "other.example:8080", "[::1]:8080"):  # fmt: skip
        assert (await http(base + "/api/rooms", headers={"Host": host})).status == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}",
                 "other.example:8081", "other.example", "[::1]:80"):  # fmt: skip
        refused = await http(base + "/api/rooms", headers={"Host": host})
        assert refused.status == 421, host
        assert error_of(refused) == access.MISDIRECTED.format(host=host)
    # every path, pages included: a DNS-rebinding page gets nothing
    assert (await http(base + "/chat", headers={"Host": "evil.example"})).status == 421
    assert (await rpc(server.rpc_url, LIST_ROOMS, headers={"Host": "evil.example"})).status == 421


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0"}])
async def test_a_cross_origin_request_gets_403(server):
    base = server.http_url
    port = urlsplit(base).port
    refused = await rpc(server.rpc_url, LIST_ROOMS, headers={"Origin": "http://evil.example"})
    assert refused.status == 403
    assert error_of(refused) == access.CROSS_ORIGIN.format(origin="http://evil.example")
    assert (await http(base + "/api/rooms", headers={"Origin": "null"})).status == 403
    same = await rpc(server.rpc_url, LIST_ROOMS, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status == 200


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0"}])
async def test_a_header_the_checks_read_may_come_once(server):
    # two Origins (or Hosts): one could pass the check while a later layer reads the other
    import trio

    parts = urlsplit(server.rpc_url)
    body = json.dumps(LIST_ROOMS).encode()

    async def status(extra: str) -> bytes:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        try:
            await stream.send_all(
                f"POST /RPC HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            answer = b""
            with trio.fail_after(10):  # safety net only
                while b"\r\n" not in answer:
                    answer += await stream.receive_some(4096)
            return answer.split(b" ", 2)[1]
        finally:
            await stream.aclose()

    same = f"http://{parts.netloc}"
    assert await status(f"Origin: {same}\r\n") == b"200"
    assert await status(f"Origin: http://evil.example\r\nOrigin: {same}\r\n") == b"400"
    assert await status(f"Host: {parts.netloc}\r\n") == b"400"


@pytest.mark.parametrize("config_overrides", [{"rpc_listen": "127.0.0.1:0"}])
async def test_rpc_takes_json_only(server):
    body = json.dumps(LIST_ROOMS).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        refused = await http(server.rpc_url, body, content_type=content_type)
        assert refused.status == 415, content_type
        assert error_of(refused) == access.NOT_JSON
    answer = await http(server.rpc_url, body, content_type="application/json; charset=utf-8")
    assert (answer.status, answer.json()["result"]) == (200, [])


def test_a_token_is_required_off_loopback():
    with pytest.raises(ConfigError) as caught:
        Config(rpc_listen="0.0.0.0:5080").validate()
    assert str(caught.value) == (
        "invalid rpc_token: required when rpc_listen (0.0.0.0:5080) is not a loopback address"
    )
    with pytest.raises(ConfigError, match="invalid rpc_token: required"):
        Config(rpc_listen="[::]:5080").validate()
    Config(rpc_listen="0.0.0.0:5080", rpc_token=TOKEN).validate()
    for loopback in ("127.0.0.1:5080", "127.0.0.9:5080", "[::1]:5080", "localhost:5080", "5080"):
        Config(rpc_listen=loopback).validate()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rpc_token": "short"}, "invalid rpc_token: must be at least 16 characters"),
        ({"rpc_token": "has spaces in it, 1234"}, "invalid rpc_token: may hold letters, digits"),
        ({"rpc_hosts": ["a b"]}, "invalid rpc_hosts: expected host or host:port, got 'a b'"),
    ],
)
def test_bad_access_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes).validate()


def test_access_settings_from_the_environment():
    config = Config.from_sources(environ={
        "IMC_RPC_TOKEN": TOKEN, "IMC_RPC_HOSTS": "a.example,b.example:81", "IMC_METRICS_PUBLIC": "true",
    })  # fmt: skip
    assert (config.rpc_token, config.rpc_hosts, config.metrics_public) == (
        TOKEN, ["a.example", "b.example:81"], True,
    )
