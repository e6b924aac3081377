"""Fixtures for end-to-end tests: an in-process server on ephemeral loopback ports and test UAs."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from imc_actors.config import Config
from imc_actors.server import Server, open_server
from tests.support.serve import ServeProcess, serve_process
from tests.support.ua import TestUA

DOMAIN = "127.0.0.1"
MANAGER = f"sip:imc-manager@{DOMAIN}"


def make_config(tmp_path, **overrides) -> Config:
    values = {
        "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"],
        "db_url": f"sqlite:///{tmp_path}/imc.db",
        "domains": [DOMAIN],
    }
    values.update(overrides)
    return Config.from_sources(environ={}, overrides=values)


def udp_address(server: Server | ServeProcess) -> tuple[str, int]:
    if isinstance(server, ServeProcess):
        return server.udp
    for addr in server.addresses:
        if addr.transport == "udp":
            return addr.host, addr.port
    raise AssertionError("server has no UDP listener")


@pytest.fixture
def config_overrides() -> dict:
    """Override in a test module to change the server's configuration."""
    return {}


#: The loopback address of the two-worker server the SIP-only end-to-end tests also run on.
WORKERS_HOST = "127.0.0.8"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Item 6 of issue 13: in a module with ``TWO_WORKERS = True``, every test that talks SIP
    only (uses ``ua`` but not ``server``, whose in-process objects a subprocess does not
    have) runs twice: against the in-process server and against ``imc-actors serve
    --workers 2`` (PostgreSQL, own tables, :data:`WORKERS_HOST`)."""
    names = inspect.signature(metafunc.function).parameters  # its own, not ua's
    if metafunc.function.__name__ in getattr(metafunc.module, "ONE_SERVER_ONLY", ()):
        return  # e.g. #rooms: each worker lists the rooms it has loaded (cluster-wide: item 3)
    if getattr(metafunc.module, "TWO_WORKERS", False) and "ua" in names and "server" not in names:
        metafunc.parametrize("server_kind", ["one", "two-workers"])


@pytest.fixture
def server_kind() -> str:
    """``one`` (the in-process server) or ``two-workers`` (see :func:`pytest_generate_tests`)."""
    return "one"


def setting_env(overrides: dict) -> dict[str, str]:
    """``config_overrides`` as the ``IMC_*`` environment of a ``serve`` process."""
    env = {}
    for name, value in overrides.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(value)
        else:
            text = str(value)
        env["IMC_" + name.upper()] = text
    return env


@pytest.fixture
async def server(tmp_path, config_overrides, server_kind):
    """The in-process :class:`Server`; for ``server_kind == "two-workers"`` the
    :class:`~tests.support.serve.ServeProcess` of ``serve --workers 2`` instead."""
    if server_kind == "two-workers":
        async with two_worker_server(config_overrides) as process:
            yield process
        return
    async with open_server(make_config(tmp_path, **config_overrides)) as srv:
        yield srv


@asynccontextmanager
async def two_worker_server(overrides: dict) -> AsyncIterator[ServeProcess]:
    """``serve --workers 2`` on PostgreSQL tables of its own (dropped afterwards)."""
    from tests.storage.conftest import SERVER_URLS, drop_tables, new_tables, skip_or_fail
    from tests.storage.conftest import _why_unreachable as why_unreachable

    url = SERVER_URLS["postgresql"]
    reason = why_unreachable("postgresql", url)
    if reason is not None:
        skip_or_fail(reason)
    tables = new_tables()
    try:
        async with serve_process(
            url, "--workers", "2", *tables.flags(), host=WORKERS_HOST, env=setting_env(overrides)
        ) as process:
            yield process
            assert await process.terminate() == 0
    finally:
        drop_tables(url, tables)


UAFactory = Callable[..., Awaitable[TestUA]]


@pytest.fixture
async def ua(nursery, server) -> UAFactory:
    """``await ua("alice")``: a registered test UA ``sip:alice@127.0.0.1``."""
    made: list[TestUA] = []

    async def make(user: str, *, answer: int = 200, register: bool = True) -> TestUA:
        agent = await TestUA.open(nursery, user, DOMAIN, udp_address(server), answer=answer)
        made.append(agent)
        if register:
            response = await agent.register()
            assert response.code == 200, response
        return agent

    yield make
    for agent in made:
        agent.close()


async def expect(agent: TestUA, body: str | bytes, *, sender: str | None = None):
    """The next MESSAGE ``agent`` receives has ``body`` (and From URI ``sender``); returns it."""
    with trio.fail_after(10):  # safety net only: the message normally arrives at once
        message = await agent.next_message()
    expected = body.encode() if isinstance(body, str) else body
    assert message.body == expected, (message.body, expected)
    if sender is not None:
        assert message.from_uri == sender
    return message
