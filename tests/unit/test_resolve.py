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
