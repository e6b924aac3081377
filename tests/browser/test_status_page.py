"""The web status page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium): rooms with member counts, a click shows members and roles, and the page
follows changes made over SIP without reloading.

Skipped when the browser, its driver or Selenium is missing, except under CI (``CI`` set),
where that is a failure. A screenshot is kept in ``test-artifacts/status_page.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from imc_actors.server import open_server
from tests.integration.conftest import DOMAIN, MANAGER, make_config, udp_address
from tests.support.control import command, next_message
from tests.support.serve import serve_process
from tests.support.ua import TestUA

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
LOBBY = f"sip:lobby@{DOMAIN}"
FRESH = f"sip:fresh@{DOMAIN}"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1200,800",
)  # fmt: skip


def require_browser() -> None:
    """Skip (fail under CI) unless Selenium, chromium and chromedriver are all installed."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    missing += [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        reason = "the status page test needs " + ", ".join(missing) + " (Debian: chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def start_browser(profile: str, *extra_flags: str) -> Any:
    """A headless Chromium with a fresh profile (and ``extra_flags``); no driver or browser
    download (blocking)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


class Page:
    """The Selenium driver, every call made in a worker thread so the server (in this Trio
    thread) keeps running while the browser talks to it."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(function, *args)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, source, *args)

    async def wait(self, condition: str, *args: Any, timeout: float = 15.0) -> Any:
        """Poll a JavaScript ``condition`` (bounded: the browser refreshes once a second)."""
        from selenium.webdriver.support.ui import WebDriverWait

        def until() -> Any:
            wait = WebDriverWait(self.driver, timeout, poll_frequency=0.1)
            return wait.until(lambda d: d.execute_script(f"return ({condition});", *args))

        return await self.run(until)

    async def rooms(self) -> list[list[str]]:
        return await self.script(
            "return [...document.querySelectorAll('#rooms tbody tr')]"
            ".map(tr => [...tr.cells].map(td => td.textContent));"
        )

    async def members(self) -> list[list[str]]:
        return await self.script(
            "return [...document.querySelectorAll('#members tbody tr')]"
            ".map(tr => [...tr.cells].map(td => td.textContent));"
        )


ROW = "document.querySelector(`#rooms tbody tr[data-room=\"${arguments[0]}\"]`)"


async def test_status_page_follows_sip_changes(tmp_path, nursery):
    require_browser()
    config = make_config(tmp_path, rpc_listen="127.0.0.1:0")
    async with open_server(config) as server:
        agents = {}
        for user in ("alice", "bob", "carol"):
            agent = await TestUA.open(nursery, user, DOMAIN, udp_address(server))
            assert (await agent.register()).code == 200
            agents[user] = agent
        alice, bob, carol = agents["alice"], agents["bob"], agents["carol"]
        await command(alice, MANAGER, "#create lobby")
        await command(bob, LOBBY, "#join")

        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await page.run(page.driver.get, server.http_url + "/")
            await page.wait(f"{ROW} !== null", LOBBY)
            assert await page.rooms() == [[LOBBY, "2", f"sip:alice@{DOMAIN}", "no"]]
            assert await page.script("return document.getElementById('summary').textContent") == "1 room, 2 members"
            await page.script("window.__loadedOnce = 'yes';")  # gone if the page reloads

            # refreshes that bring nothing new leave the rows as they are (a rebuild every
            # second made clicks land on rows being replaced)
            await page.script(f"{ROW}.dataset.mark = 'kept';", LOBBY)
            done = await page.script("return Number(document.body.dataset.refreshes)")
            await page.wait(f"Number(document.body.dataset.refreshes) >= {done + 2}")
            assert await page.script(f"return {ROW}.dataset.mark", LOBBY) == "kept"

            # a room created over SIP after the page loaded appears without a reload
            await command(bob, MANAGER, "#create fresh private")
            await page.wait(f"{ROW} !== null", FRESH)
            assert await page.script("return window.__loadedOnce") == "yes"
            assert await page.rooms() == [
                [FRESH, "1", f"sip:bob@{DOMAIN}", "yes"],
                [LOBBY, "2", f"sip:alice@{DOMAIN}", "no"],
            ]

            # click a room: its members and roles
            await page.script(f"{ROW}.querySelector('button').click();", LOBBY)
            await page.wait("document.querySelectorAll('#members tbody tr').length === 2")
            assert await page.members() == [
                ["1", f"sip:alice@{DOMAIN}", "owner"],
                ["2", f"sip:bob@{DOMAIN}", "member"],
            ]

            # the selected room follows changes too: an invitation and a new admin
            await command(alice, LOBBY, "#invite carol")
            assert b"invites you" in await next_message(carol)
            await command(alice, LOBBY, "#modify bob admin")
            await page.wait(
                "[...document.querySelectorAll('#members tbody tr')].map(tr => tr.cells[2].textContent)"
                ".join(',') === 'owner,admin,member (invited)'"
            )
            await page.wait(f"{ROW}.cells[1].textContent === '3'", LOBBY)
            assert await page.script("return window.__loadedOnce") == "yes"

            # the topic and the archived lines of the selected room (issue 16); they redraw
            # their own parts, not the members (a new line rebuilt the whole panel)
            await page.script("document.querySelector('#members tbody tr').dataset.mark = 'kept';")
            await command(alice, LOBBY, "#topic Friday <b>plans</b>")
            await command(bob, LOBBY, "hello <i>status page</i>", code=202)
            await page.wait("document.querySelectorAll('#history tbody tr').length === 1")
            assert await page.script(
                "return [...document.querySelector('#history tbody tr').cells].slice(2)"
                ".map(td => td.textContent)"
            ) == [f"sip:bob@{DOMAIN}", "hello <i>status page</i>"]  # text, never markup
            await page.wait("document.getElementById('room-topic').textContent === "
                            "'Topic: Friday <b>plans</b>'")
            assert await page.script(
                "return document.querySelector('#members tbody tr').dataset.mark"
            ) == "kept"

            ARTIFACTS.mkdir(exist_ok=True)
            assert await page.run(page.driver.save_screenshot, str(ARTIFACTS / "status_page.png"))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)
            for agent in agents.values():
                agent.close()


TOKEN = "browser-token-0123456789"


async def test_status_page_asks_for_the_token_once_per_session(tmp_path, nursery):
    require_browser()
    config = make_config(tmp_path, rpc_listen="127.0.0.1:0", rpc_token=TOKEN)
    async with open_server(config) as server:
        alice = await TestUA.open(nursery, "alice", DOMAIN, udp_address(server))
        assert (await alice.register()).code == 200
        await command(alice, MANAGER, "#create lobby")

        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        form = "!document.getElementById('token-form').hidden"

        async def sign_in(token: str) -> None:
            def type_it() -> None:
                from selenium.webdriver.common.by import By

                field = page.driver.find_element(By.ID, "token")
                field.send_keys(token)
                page.driver.find_element(By.CSS_SELECTOR, "#token-form button").click()

            await page.run(type_it)

        try:
            await page.run(page.driver.get, server.http_url + "/")
            await page.wait(form)  # the polls got 401: the page asks
            assert await page.rooms() == []
            assert await page.script("return document.querySelector('main').hidden") is True

            await sign_in("not-the-token-at-all")
            await page.wait(f"{form} && document.getElementById('token-error').textContent === 'wrong token'")
            assert await page.script("return sessionStorage.getItem('imc-actors-token')") is None

            await sign_in(TOKEN)
            await page.wait(f"{ROW} !== null", LOBBY)
            assert await page.rooms() == [[LOBBY, "1", f"sip:alice@{DOMAIN}", "no"]]
            assert await page.script("return document.getElementById('token-form').hidden") is True

            # a reload keeps the session's token: no second question
            await page.run(page.driver.refresh)
            await page.wait(f"{ROW} !== null", LOBBY)
            assert await page.script("return document.getElementById('token-form').hidden") is True

            # the moderation buttons send the token too (POST /RPC, not only the polls)
            await page.script(f"{ROW}.querySelector('button').click();", LOBBY)
            await page.wait("document.querySelectorAll('#members tbody tr').length === 1")
            await page.script("document.getElementById('admin-destroy').click();")
            await page.wait(f"{ROW} === null", LOBBY)
            assert await page.script("return document.getElementById('token-form').hidden") is True
            assert server.conference.room(LOBBY) is None
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)
            alice.close()


async def test_status_page_bans_and_destroys_through_json_rpc(tmp_path, nursery):
    """The moderation section: click a member, Ban with a reason, see the ban listed and the
    member gone; Destroy room; both reach the members over SIP (issue 16 item 7)."""
    require_browser()
    config = make_config(tmp_path, rpc_listen="127.0.0.1:0")
    async with open_server(config) as server:
        agents = {}
        for user in ("alice", "bob"):
            agent = await TestUA.open(nursery, user, DOMAIN, udp_address(server))
            assert (await agent.register()).code == 200
            agents[user] = agent
        alice, bob = agents["alice"], agents["bob"]
        await command(alice, MANAGER, "#create lobby")
        await next_message(alice)
        await command(bob, LOBBY, "#join")
        await next_message(alice)
        await next_message(bob)

        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await page.run(page.driver.get, server.http_url + "/")
            await page.wait(f"{ROW} !== null", LOBBY)
            await page.script(f"{ROW}.querySelector('button').click();", LOBBY)
            await page.wait("document.querySelectorAll('#members tbody tr').length === 2")
            assert await page.script("return document.getElementById('no-bans').hidden") is False

            await page.script("document.querySelectorAll('#members tbody tr')[1].click();")
            assert await page.script("return document.getElementById('admin-user').value") == f"sip:bob@{DOMAIN}"
            await page.script("document.getElementById('admin-reason').value = 'spam';")
            await page.script("document.getElementById('admin-ban').click();")
            await page.wait("document.getElementById('admin-result').textContent === 'imc.ban: done'")
            await page.wait(f"document.querySelector('#bans li[data-ban=\"bob@{DOMAIN}\"]') !== null")
            assert await page.script("return document.querySelector('#bans li').textContent") == (
                f"bob@{DOMAIN} \u2014 spam")
            await page.wait("document.querySelectorAll('#members tbody tr').length === 1")
            assert await next_message(bob) == b"*** You have been banned from the room: spam"
            assert await next_message(alice) == b"*** [bob] has been banned from the room: spam"

            # a refusal is shown, not hidden: the owner cannot be kicked
            await page.script("document.getElementById('admin-user').value = 'alice';")
            await page.script("document.getElementById('admin-kick').click();")
            await page.wait(
                "document.getElementById('admin-result').textContent === "
                "\"imc.kick: The room's owner cannot be kicked\""
            )

            await page.script("document.getElementById('admin-destroy').click();")
            await page.wait("document.getElementById('room-gone').hidden === false")
            await page.wait(f"{ROW} === null", LOBBY)
            assert await next_message(alice) == b"*** Room has been destroyed"
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)
            for agent in agents.values():
                agent.close()


NODE_ROW = "document.querySelector(`#nodes tbody tr[data-node=\"${arguments[0]}\"]`)"
NODE_CELLS = f"return [...{NODE_ROW}.cells].map(td => td.textContent)"


async def test_status_page_shows_the_nodes_and_each_rooms_node(tmp_path, nursery):
    """Two ``serve`` processes, nodes ``a`` and ``b`` on one SQLite file (one machine): the
    page on ``b`` shows ``a``'s room with its node, both nodes live, then ``a`` dead after
    ``kill -9`` and the room on ``b`` once ``b`` took it over (issue 13 item 3)."""
    require_browser()

    db_url = f"sqlite:///{tmp_path / 'cluster.db'}"
    flags = ["--lease-ttl", "1.5"]
    async with (
        serve_process(db_url, *flags, "--node", "a", host="127.0.0.2") as a,
        serve_process(
            db_url, *flags, "--node", "b", "--rpc-listen", "127.0.0.3:0", host="127.0.0.3"
        ) as b,
    ):
        url = await b.management_url()
        alice = await TestUA.open(nursery, "alice", DOMAIN, a.udp)
        assert (await alice.register()).code == 200
        await command(alice, MANAGER, "#create lobby")

        profile = tempfile.mkdtemp(prefix="imc-chromium-", dir=tmp_path)
        page = Page(await trio.to_thread.run_sync(start_browser, profile))
        try:
            await page.run(page.driver.get, url + "/")
            await page.wait(f"{ROW} !== null", LOBBY)
            assert await page.rooms() == [[LOBBY, "1", f"sip:alice@{DOMAIN}", "no", "a"]]
            panel_hidden = "return document.getElementById('nodes-panel').hidden"
            assert await page.script(panel_hidden) is False
            await page.wait(f"{NODE_ROW} !== null && {NODE_ROW}.className === 'live'", "a")
            cells = await page.script(NODE_CELLS, "a")
            assert (cells[0], cells[3], cells[4]) == ("a", "yes", "1")
            assert cells[1] == f"udp:{a.udp[0]}:{a.udp[1]} tcp:{a.tcp[0]}:{a.tcp[1]}"

            assert await a.kill() != 0
            await page.wait(f"{NODE_ROW}.className === 'dead'", "a")  # within lease_ttl
            cells = await page.script(NODE_CELLS, "a")
            assert cells[3] == "no"
            await page.wait(f"{ROW}.cells[4].textContent === 'b'", LOBBY)  # b took it over

            ARTIFACTS.mkdir(exist_ok=True)
            shot = str(ARTIFACTS / "status_page_cluster.png")
            assert await page.run(page.driver.save_screenshot, shot)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(page.driver.quit)
            alice.close()
        assert await b.terminate() == 0
