"""Fixtures for end-to-end tests: an in-process server on ephemeral loopback ports and test UAs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from imc_actors.config import Config
from imc_actors.server import Server, open_server
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


def udp_address(server: Server) -> tuple[str, int]:
    for addr in server.addresses:
        if addr.transport == "udp":
            return addr.host, addr.port
    raise AssertionError("server has no UDP listener")


@pytest.fixture
def config_overrides() -> dict:
    """Override in a test module to change the server's configuration."""
    return {}


@pytest.fixture
async def server(tmp_path, config_overrides) -> Server:
    async with open_server(make_config(tmp_path, **config_overrides)) as srv:
        yield srv


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
