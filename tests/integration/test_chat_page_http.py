"""The chat page's HTTP side (no browser): ``/chat``, ``/api/chat`` and the vendored JsSIP."""

from __future__ import annotations

import pytest

from imc_actors.server import open_server
from tests.integration.conftest import make_config
from tests.support.control import http


@pytest.fixture
def config_overrides() -> dict:
    return {"listen": ["udp:127.0.0.1:0", "ws:127.0.0.1:0"], "rpc_listen": "127.0.0.1:0"}


async def test_the_page_knows_the_websocket_listener(server):
    base = server.http_url
    ws_port = next(a.port for a in server.addresses if a.transport == "ws")
    info = await http(base + "/api/chat")
    assert info.status == 200 and info.headers["cache-control"] == "no-store"
    assert info.json() == {
        "ws": f"ws://127.0.0.1:{ws_port}/",
        "domain": "127.0.0.1",
        "manager": "sip:imc-manager@127.0.0.1",
        "command_char": "#",
    }
    page = await http(base + "/chat")
    assert page.status == 200 and b'<script src="/static/vendor/jssip.min.js"' in page.body
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert csp.endswith(f"; connect-src 'self' ws://127.0.0.1:{ws_port}/")
    for name in ("chat.js", "chat.css", "vendor/jssip.LICENSE"):
        assert (await http(f"{base}/static/{name}")).status == 200, name
    jssip = await http(base + "/static/vendor/jssip.min.js")
    assert jssip.headers["content-type"].startswith("text/javascript")
    version = (await http(base + "/static/vendor/jssip.VERSION")).body.decode().strip()
    assert jssip.body.startswith(f"/* JsSIP {version} ".encode())
    assert (await http(base + "/static/vendor/nope.js")).status == 404
    assert (await http(base + "/static/chat.html")).status == 404
    assert (await http(base + "/")).status == 200  # the status page is still there


async def test_a_wildcard_listener_is_named_by_the_host_the_page_was_reached_at(tmp_path):
    config = make_config(tmp_path, listen=["ws:0.0.0.0:0"], rpc_listen="127.0.0.1:0", auth="off")
    async with open_server(config) as server:
        port = server.addresses[0].port
        info = (await http(server.http_url + "/api/chat")).json()
        assert info["ws"] == f"ws://127.0.0.1:{port}/"


async def test_without_a_websocket_listener_the_page_is_told_so(tmp_path):
    config = make_config(tmp_path, listen=["udp:127.0.0.1:0"], rpc_listen="127.0.0.1:0")
    async with open_server(config) as server:
        assert (await http(server.http_url + "/api/chat")).json()["ws"] is None
        page = await http(server.http_url + "/chat")
        assert page.headers["content-security-policy"].endswith("; connect-src 'self'")
        assert b"This server has no WebSocket listener" in page.body
