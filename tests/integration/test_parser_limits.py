"""The SIP parser's limits as settings (``sip_max_message``, ``sip_max_header_lines``,
``sip_max_line``, ``sip_max_field``): a server applies them while it runs, over real sockets."""

from __future__ import annotations

import pytest
import trio

from imc_actors import ConfigError
from imc_actors.config import Config
from imc_actors.server import open_server
from imc_actors.sip import DEFAULT_LIMITS, ParserLimits, parser_limits, set_parser_limits
from tests.integration.conftest import DOMAIN, make_config, udp_address
from tests.support import TestUA, response_of

ROOM = f"sip:room@{DOMAIN}"


def _with_headers(ua: TestUA, count: int) -> bytes:
    extra = [(f"X-Extra-{i}", "x") for i in range(count)]
    return ua.build("OPTIONS", f"sip:{DOMAIN}", headers=extra)


async def _answer(ua: TestUA, data: bytes) -> tuple[int, str]:
    await ua.send_raw(data)
    with trio.fail_after(5):  # safety net only
        answer = response_of(await ua.recv_raw())
    return answer.code, answer.reason


async def test_a_server_applies_its_parser_limits_and_restores_the_defaults(tmp_path, nursery):
    config = make_config(
        tmp_path, sip_max_header_lines=20, sip_max_field=300, sip_max_line=2048,
        sip_max_message=4096,
    )  # fmt: skip
    async with open_server(config) as server:
        assert parser_limits() == ParserLimits(4096, 20, 2048, 300)
        ua = await TestUA.open(nursery, "alice", DOMAIN, udp_address(server))
        assert await _answer(ua, _with_headers(ua, 30)) == (400, "Too many headers")
        long_uri = f"sip:{'r' * 400}@{DOMAIN}"
        assert (await _answer(ua, ua.build("MESSAGE", long_uri, body=b"hi")))[0] == 414
        big = ua.build("MESSAGE", ROOM, body=b"x" * 5000)
        assert (await _answer(ua, big))[0] in (413, 513)
        assert (await ua.request("OPTIONS", f"sip:{DOMAIN}")).code == 200  # within them: served
    assert parser_limits() == DEFAULT_LIMITS
    # the defaults take what the small limits refused
    (tmp_path / "again").mkdir()
    async with open_server(make_config(tmp_path / "again")) as server:
        ua = await TestUA.open(nursery, "bob", DOMAIN, udp_address(server))
        await ua.send_raw(_with_headers(ua, 30))
        with trio.fail_after(5):
            assert response_of(await ua.recv_raw()).code == 200


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sip_max_message": 100}, "sip_max_message"),
        ({"sip_max_field": 100_000}, "sip_max_field"),
        ({"sip_max_line": 4096, "sip_max_field": 8192}, "sip_max_field"),
        ({"sip_max_message": 2048, "sip_max_line": 4096}, "sip_max_line"),
    ],
)
def test_limits_out_of_range_or_order_are_refused_by_name(overrides, field) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ={}, overrides=overrides)
    assert info.value.param == field
    assert "sip_max_" in str(info.value)


def test_a_lower_message_limit_names_the_default_line_limit_it_falls_below() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ={}, overrides={"sip_max_message": 4096})
    assert str(info.value) == (
        "invalid sip_max_line: must be at most sip_max_message (4096); it is 8192: lower it too"
    )


def test_set_parser_limits_refuses_what_config_would() -> None:
    with pytest.raises(ValueError, match=r"max_field must be at most max_line \(1024\)"):
        set_parser_limits(ParserLimits(max_line=1024, max_field=2048))
    assert parser_limits() == DEFAULT_LIMITS
