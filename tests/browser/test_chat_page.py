"""The browser chat page (``/chat``) in a real headless Chromium: a browser user (JsSIP over the
server's ``ws:`` listener) and a SIP phone over UDP (:class:`TestUA`) in one room chat both
ways, and the page shows the phone's join and leave notices set apart as notices.

Skipped like the status page test when the browser, its driver or Selenium is missing (a
failure under CI). A screenshot is kept in ``test-artifacts/chat_page.png``.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imc_actors import IncomingMessage
from imc_actors.server import open_server
from tests.browser.test_status_page import ARTIFACTS, Page, require_browser, start_browser
from tests.integration.conftest import DOMAIN, MANAGER, expect, make_config, udp_address
from tests.support.control import http
from tests.support.tls import make_tls
from tests.support.ua import TestUA

LOBBY = f"sip:lobby@{DOMAIN}"
CAFE = f"sip:cafe@{DOMAIN}"
LINES = "[...document.querySelectorAll('#log p')].map(p => [p.className, p.dataset.room || '', p.querySelector('.text').textContent])"
ROOMS = "[...document.querySelectorAll('#rooms tbody tr')].map(tr => tr.dataset.room)"
MEMBERS = "[...document.querySelectorAll('#members tbody tr')].map(tr => [...tr.cells].map(td => td.textContent).join(' '))"


def say(ruri: str, user: str, body: str) -> IncomingMessage:
    """A MESSAGE from ``user`` (at DOMAIN) to ``ruri``, handed to the conference directly."""
    return IncomingMessage(ruri, f"sip:{user}@{DOMAIN}", body.encode(), "text/plain", f"{user}:{body}")


async def sign_in(page: Page, http_url: str, user: str) -> None:
    """Open the chat page at ``http_url`` and sign in as ``user`` (no password)."""
    await page.run(page.driver.get, http_url + "/chat")
    await page.wait("!document.getElementById('signin').hidden")
    await page.script(f"document.getElementById('user').value = {user!r};")
    await page.script("document.getElementById('signin-button').click();")
    await page.wait("document.body.dataset.signedIn === 'yes'")


def has_line(kind: str, room: str, text: str) -> str:
    """A JavaScript condition: the log holds a line of class ``kind`` from ``room``."""
    return f"{LINES}.some(([k, r, t]) => k.split(' ').includes('{kind}') && r === '{room}' && t === {text!r})"


async def test_a_browser_and_a_phone_chat_in_one_room(tmp_path, nursery):
    require_browser()
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "ws:127.0.0.1:0"], rpc_listen="127.0.0.1:0"
    )
    async with open_server(config) as server:
        bob = await TestUA.open(nursery, "bob", DOMAIN, udp_address(server))
        assert (await bob.register()).code == 200
        await bob.message(MANAGER, "#create cafe")
        await expect(bob, "*** Room was created")

        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await sign_in(page, server.http_url, "alice")
            assert await page.script("return document.getElementById('status').textContent") == (
                f"signed in as sip:alice@{DOMAIN}"
            )
            assert server.transport.statistics().ws_connections == 1
            shown = "el => getComputedStyle(document.getElementById(el)).display !== 'none'"
            assert await page.script(f"return ['signin', 'chat'].map({shown})") == [False, True]
            await page.wait(f"{ROOMS}.includes('{CAFE}')")

            # the browser creates a room; the phone joins it: a notice, and the members panel
            await page.script("document.getElementById('create-name').value = 'lobby';")
            await page.script("document.getElementById('create-button').click();")
            await page.wait(has_line("notice", LOBBY, "*** Room was created"))
            await page.wait(f"{ROOMS}.join(',') === '{CAFE},{LOBBY}'")
            assert (
                await page.script("return document.getElementById('current').textContent")
                == "lobby"
            )
            assert (await bob.message(LOBBY, "#join")).code == 200
            await expect(bob, "*** [bob] has joined the room")
            await page.wait(has_line("notice", LOBBY, "*** [bob] has joined the room"))
            await page.wait(f"{MEMBERS}.join(',') === 'alice owner,bob member'")

            # chat both ways
            await page.script("document.getElementById('line').value = 'hello phone';")
            await page.script("document.getElementById('send').click();")
            await expect(bob, "[alice]: hello phone", sender=LOBBY)
            assert (await bob.message(LOBBY, "hello browser")).code == 202
            await page.wait(has_line("chat", LOBBY, "[bob]: hello browser"))
            assert await page.script(f"return {LINES}.filter(([k]) => k === 'mine').length") == 1

            # the phone leaves: its notice, and the panel follows
            assert (await bob.message(LOBBY, "#leave")).code == 200
            await expect(bob, "*** [bob] has left the room")
            await page.wait(has_line("notice", LOBBY, "*** [bob] has left the room"))
            await page.wait(f"{MEMBERS}.join(',') === 'alice owner'")
            colour = await page.script(
                "return [getComputedStyle(document.querySelector('#log p.notice')).fontStyle,"
                " getComputedStyle(document.querySelector('#log p.chat')).fontStyle]"
            )
            assert colour == ["italic", "normal"]  # notices are set apart

            # the browser joins the phone's room from the rooms list, then leaves it
            row = f"document.querySelector('#rooms tbody tr[data-room=\"{CAFE}\"]')"
            await page.script(f"{row}.querySelector('button.join').click();")
            await expect(bob, "*** [alice] has joined the room", sender=CAFE)
            await page.wait("document.getElementById('current').textContent === 'cafe'")
            await page.wait(f"{MEMBERS}.join(',') === 'bob owner,alice member'")
            await page.script("document.getElementById('leave').click();")
            await expect(bob, "*** [alice] has left the room", sender=CAFE)
            await page.wait("document.getElementById('current').textContent === 'No room selected'")

            # the room one talks in shows no Join button; the others do
            await page.script(f"{row}.querySelector('button.name').click();")
            await page.wait("document.getElementById('current').textContent === 'cafe'")
            join_shown = (
                "[...document.querySelectorAll('#rooms tbody tr')].map(tr =>"
                " [tr.dataset.room, getComputedStyle(tr.querySelector('button.join')).visibility])"
            )
            assert await page.script(f"return {join_shown}") == [
                [CAFE, "hidden"], [LOBBY, "visible"]
            ]
            # a line the server refuses (alice left cafe: 403) is marked, not shown as said
            await page.script("document.getElementById('line').value = 'anyone there?';")
            await page.script("document.getElementById('send').click();")
            await page.wait(has_line("error", CAFE, "! 403 Forbidden"))
            struck = await page.script(
                "const p = [...document.querySelectorAll('#log p.mine')].pop();"
                " return [p.className, p.querySelector('.text').textContent,"
                " getComputedStyle(p.querySelector('.text')).textDecorationLine]"
            )
            assert struck == ["mine failed", "[alice]: anyone there?", "line-through"]
            assert bob.pending_messages() == []  # nothing reached the room

            # a #join or #create typed in the line box selects the room, as the Join button
            # and the Create form do (was: joined, but the page stayed where it was)
            await page.script(
                f"document.querySelector('#rooms tbody tr[data-room=\"{LOBBY}\"] button.name')"
                ".click();"
            )
            await page.wait("document.getElementById('current').textContent === 'lobby'")
            await page.script("document.getElementById('line').value = '#join cafe';")
            await page.script("document.getElementById('send').click();")
            await expect(bob, "*** [alice] has joined the room", sender=CAFE)
            await page.wait("document.getElementById('current').textContent === 'cafe'")
            await page.wait(f"{MEMBERS}.join(',') === 'bob owner,alice member'")
            await page.script("document.getElementById('line').value = '#create typed';")
            await page.script("document.getElementById('send').click();")
            await page.wait("document.getElementById('current').textContent === 'typed'")
            await page.wait(f"{MEMBERS}.join(',') === 'alice owner'")

            ARTIFACTS.mkdir(exist_ok=True)
            assert await page.run(page.driver.save_screenshot, str(ARTIFACTS / "chat_page.png"))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)
            bob.close()


async def test_long_room_and_member_lists_arrive_in_pages_and_the_page_shows_them_whole(
    tmp_path, nursery
):
    # "Rooms (1/2):" pages (since #rooms was paged) were shown as log lines and the rooms
    # list stayed empty; #members of a big room is paged the same way now
    require_browser()
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "ws:127.0.0.1:0"], rpc_listen="127.0.0.1:0",
        max_rooms_per_user=100,
    )  # fmt: skip
    rooms = [f"room-with-a-name-long-enough-to-page-{i:02}" for i in range(30)]
    members = [f"member-with-a-name-long-enough-to-page-{i:02}" for i in range(25)]
    big = f"sip:{rooms[0]}@{DOMAIN}"
    async with open_server(config) as server:
        conference = server.conference
        for name in rooms:
            assert (await conference.handle(say(MANAGER, "bob", f"#create {name}"))).code == 200
        for name in members:
            assert (await conference.handle(say(big, name, "#join"))).code == 200
        listed = await conference.handle(say(MANAGER, "bob", "#rooms"))
        assert listed.body.startswith(b"Rooms (1/2):\n")  # what the page has to put together
        listed = await conference.handle(say(big, "bob", "#members"))
        assert listed.body.startswith(b"Members (1/2):\n")

        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await sign_in(page, server.http_url, "alice")
            await page.wait(f"{ROOMS}.length === {len(rooms)}")
            assert await page.script(f"return {ROOMS}") == [f"sip:{name}@{DOMAIN}" for name in rooms]
            row = f"document.querySelector('#rooms tbody tr[data-room=\"{big}\"]')"
            await page.script(f"{row}.querySelector('button.join').click();")
            await page.wait(f"{MEMBERS}.length === {len(members) + 2}")
            assert await page.script(f"return {MEMBERS}") == [
                "bob owner", *(f"{name} member" for name in members), "alice member"
            ]
            # no page of either list was shown as a line of the log
            assert not await page.script(
                f"return {LINES}.some(([k, r, t]) => /^(Rooms|Members)/.test(t))"
            )
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)


async def test_without_a_ws_listener_the_page_says_so(tmp_path):
    require_browser()
    config = make_config(tmp_path, listen=["udp:127.0.0.1:0"], rpc_listen="127.0.0.1:0")
    async with open_server(config) as server:
        answer = await http(server.http_url + "/api/chat")
        assert answer.status == 200
        assert answer.json()["ws"] is None
        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await page.run(page.driver.get, server.http_url + "/chat")
            await page.wait("!document.getElementById('nows').hidden")
            text = await page.script("return document.getElementById('nows').textContent")
            assert "no WebSocket listener" in text and "--listen ws:" in text
            assert await page.script("return document.getElementById('signin').hidden") is True
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)


async def test_the_page_signs_in_with_a_password_when_auth_is_on(tmp_path):
    """JsSIP answers the server's challenges itself (MD5: ``md5_only_agents`` names it)."""
    require_browser()
    from tests.integration.test_auth import _users

    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "ws:127.0.0.1:0"], rpc_listen="127.0.0.1:0", auth="all"
    )
    _users(config)
    async with open_server(config) as server:
        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await page.run(page.driver.get, server.http_url + "/chat")
            await page.wait("!document.getElementById('signin').hidden")
            await page.script(
                "window.statusLog = []; const el = document.getElementById('status');"
                "new MutationObserver(() => statusLog.push(el.textContent))"
                ".observe(el, {childList: true, characterData: true, subtree: true});"
            )
            await page.script("document.getElementById('user').value = 'alice';")
            await page.script("document.getElementById('password').value = 'wrong';")
            await page.script("document.getElementById('signin-button').click();")
            await page.wait("document.getElementById('status').textContent.startsWith('sign-in failed')")
            assert "403 Wrong User Or Password" in await page.script(
                "return document.getElementById('status').textContent"
            )
            await page.script("document.getElementById('password').value = 'alice-pw';")
            await page.script("document.getElementById('signin-button').click();")
            await page.wait("document.body.dataset.signedIn === 'yes'")
            # the failed UA's WebSocket closed meanwhile: its "disconnected; retrying" must not
            # have replaced "sign-in failed" (nothing retried: the user signs in again)
            shown = await page.script("return window.statusLog")
            failed = next(i for i, text in enumerate(shown) if text.startswith("sign-in failed"))
            assert shown[failed + 1].startswith("connecting to"), shown
            assert not any(text.startswith("disconnected") for text in shown), shown
            await page.script("document.getElementById('create-name').value = 'locked';")
            await page.script("document.getElementById('create-button').click();")
            locked = f"sip:locked@{DOMAIN}"
            await page.wait(has_line("notice", locked, "*** Room was created"))
            # #join of a room one is in already: refused, and the page selects that room
            await page.script("document.getElementById('create-name').value = 'other';")
            await page.script("document.getElementById('create-button').click();")
            await page.wait("document.getElementById('current').textContent === 'other'")
            await page.script("document.getElementById('join-name').value = 'locked';")
            await page.script("document.getElementById('join-button').click();")
            await page.wait(has_line("notice", locked, "*** You are in the room already"))
            await page.wait("document.getElementById('current').textContent === 'locked'")
            room = server.conference.room(locked)
            assert room is not None and room.owner is not None and room.owner.uri == f"sip:alice@{DOMAIN}"
            assert server.authenticator is not None and server.authenticator.statistics().refused == 1
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)


def spki_hash(cert_file: str) -> str:
    """Chromium's ``--ignore-certificate-errors-spki-list`` entry for one certificate (base64
    SHA-256 of its public key): the browser trusts this test certificate and no other."""
    with open(cert_file, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_over_wss_a_browser_and_a_phone_chat(tmp_path, nursery):
    """With only a ``wss:`` listener the page connects over TLS (``wss://``) and works alike."""
    require_browser()
    tls = make_tls(tmp_path)
    config = make_config(
        tmp_path, listen=["udp:127.0.0.1:0", "wss:127.0.0.1:0"], rpc_listen="127.0.0.1:0",
        **tls.config(),
    )  # fmt: skip
    async with open_server(config) as server:
        info = (await http(server.http_url + "/api/chat")).json()
        assert info["ws"].startswith("wss://127.0.0.1:")
        bob = await TestUA.open(nursery, "bob", DOMAIN, udp_address(server))
        assert (await bob.register()).code == 200
        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        flag = f"--ignore-certificate-errors-spki-list={spki_hash(tls.cert)}"
        page = Page(await trio.to_thread.run_sync(start_browser, profile, flag))
        try:
            await sign_in(page, server.http_url, "alice")
            assert server.transport.statistics().ws_connections == 1
            await page.script("document.getElementById('create-name').value = 'lobby';")
            await page.script("document.getElementById('create-button').click();")
            await page.wait(has_line("notice", LOBBY, "*** Room was created"))
            assert (await bob.message(LOBBY, "#join")).code == 200
            await expect(bob, "*** [bob] has joined the room")
            await page.script("document.getElementById('line').value = 'hello over tls';")
            await page.script("document.getElementById('send').click();")
            await expect(bob, "[alice]: hello over tls", sender=LOBBY)
            assert (await bob.message(LOBBY, "hello browser")).code == 202
            await page.wait(has_line("chat", LOBBY, "[bob]: hello browser"))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)
            bob.close()
