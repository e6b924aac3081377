"""Router.resolve: a name DNS cannot look up is NoRoute, never an exception of its own."""

from __future__ import annotations

import pytest

from imc_actors.transport.routing import Hop, NoRoute, Router


@pytest.mark.parametrize("host", [f"{'a' * 64}.example.org", "a..example.org"])
async def test_a_name_idna_refuses_is_no_route(host: str) -> None:
    # getaddrinfo's IDNA encoding raised UnicodeError here: an ERROR traceback per delivery
    router = Router([], [], None, None)
    with pytest.raises(NoRoute, match="cannot resolve"):
        await router.resolve(Hop(host, 5060, "udp"))


def test_the_local_address_table_is_bounded(monkeypatch):
    # a wildcard bind asks for every destination's local address; a client naming one host
    # after another (contacts, invitees) must not grow the table without bound
    import socket

    from imc_actors.transport import routing

    monkeypatch.setattr(routing, "LOCAL_IP_CACHE", 4)
    router = Router([], [], None, None)
    for last in range(150, 160):
        assert router.local_ip_towards(socket.AF_INET, f"127.0.0.{last}").startswith("127.")
        assert len(router._local_ip_cache) <= 4
    assert "127.0.0.159" in router._local_ip_cache  # the latest is remembered
