"""Real clients with passwords against ``auth = "all"``: SIPp's ``[authentication]`` (REGISTER
and a room command, tests/sipp/imc_auth_uac.xml) and sipsak's ``-a`` (REGISTER).

Skipped when the tool is not on PATH, unless the environment variable CI is set.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import trio

from imc_actors.server import open_server
from tests.integration.conftest import DOMAIN, expect, make_config, udp_address
from tests.integration.test_auth import _users
from tests.support import free_port
from tests.support.ua import TestUA

SCENARIO = Path(__file__).resolve().parents[1] / "sipp" / "imc_auth_uac.xml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not on PATH; CI is set, so this is an error")
        pytest.skip(f"{name} is not on PATH")
    return path


async def _run(command: list[str], cwd: Path):
    with trio.fail_after(30):
        return await trio.run_process(command, cwd=cwd, capture_stdout=True, capture_stderr=True, check=False)


def _errors(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in tmp_path.glob("*_errors.log"))[-3000:]


@pytest.mark.sipp
async def test_sipp_registers_and_creates_a_room_with_its_password(nursery, tmp_path):
    sipp = _tool("sipp")
    config = make_config(tmp_path, auth="all")
    _users(config)
    async with open_server(config) as server:
        phone = await TestUA.open(nursery, "alice", DOMAIN, udp_address(server))  # alice's Contact
        host, port = udp_address(server)

        def command(password: str, room: str) -> list[str]:
            return [
                sipp, f"{host}:{port}", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", str(free_port()),
                "-m", "1", "-au", "alice", "-ap", password, "-set", "uas_port", str(phone.port),
                "-set", "room", room, "-timeout", "20s", "-timeout_error", "-nostdin", "-trace_err",
            ]  # fmt: skip

        wrong = await _run(command("not-her-password", "stolen"), tmp_path)
        assert wrong.returncode != 0
        assert "403 Wrong User Or Password" in _errors(tmp_path)
        assert server.registrar is not None and server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == []
        right = await _run(command("alice-pw", "sippauth"), tmp_path)
        assert right.returncode == 0, _errors(tmp_path)
        await expect(phone, "*** Room was created", sender=f"sip:sippauth@{DOMAIN}")
        assert server.conference.room(f"sip:stolen@{DOMAIN}") is None
        room = server.conference.room(f"sip:sippauth@{DOMAIN}")
        assert room is not None and room.owner is not None and room.owner.uri == f"sip:alice@{DOMAIN}"
        phone.close()


async def test_sipsak_registers_with_its_password(tmp_path):
    sipsak = _tool("sipsak")
    config = make_config(tmp_path, auth="all")
    _users(config)
    async with open_server(config) as server:
        host, port = udp_address(server)

        def command(password: str) -> list[str]:
            return [sipsak, "-U", "-x", "300", "-s", f"sip:alice@{host}:{port}", "-u", "alice",
                    "-a", password, "-l", str(free_port()), "-i"]  # fmt: skip

        assert server.registrar is not None
        wrong = await _run(command("guess"), tmp_path)
        assert wrong.returncode != 0 and b"403 Wrong User Or Password" in wrong.stdout + wrong.stderr
        assert server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) == []
        right = await _run(command("alice-pw"), tmp_path)
        assert right.returncode == 0, (right.stdout + right.stderr).decode(errors="replace")[-2000:]
        assert server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()) != []


BARESIP_CONFIG = """\
poll_method epoll
sip_listen 127.0.0.1:{port}
module_path /usr/lib/baresip/modules
module g711.so
module_app account.so
module_app menu.so
module_app contact.so
"""


def _baresip_port() -> int:
    """A port for baresip's sip_listen: baresip binds UDP and TCP there and its TLS listener on
    the next port, so both must be free (a plain free_port left the next one to chance)."""
    for _ in range(100):
        port = free_port()
        try:
            for number, kind in ((port, socket.SOCK_STREAM), (port + 1, socket.SOCK_STREAM)):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind(("127.0.0.1", number))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for baresip")


async def test_baresip_registers_and_creates_a_room_with_auth_pass(nursery, tmp_path):
    baresip = _tool("baresip")
    if not Path("/usr/lib/baresip/modules/contact.so").exists():
        pytest.skip("baresip's contact module is not installed")
    config = make_config(tmp_path, auth="all")
    _users(config)
    async with open_server(config) as server:
        host, port = udp_address(server)
        (tmp_path / "config").write_text(BARESIP_CONFIG.format(port=_baresip_port()))
        (tmp_path / "accounts").write_text(
            f'<sip:alice@{DOMAIN}>;auth_pass=alice-pw;outbound="sip:{host}:{port};transport=udp";regint=600\n'
        )
        (tmp_path / "contacts").write_text(f'"manager" <sip:imc-manager@{DOMAIN}>\n')
        with server.conference.subscribe(f"sip:alice@{DOMAIN}", observe=True) as notices:
            async with trio.open_nursery() as inner:
                inner.start_soon(trio.run_process, [
                    baresip, "-f", str(tmp_path), "-t", "30",
                    "-e", "/contact_next", "-e", "/message #create bsroom",
                ])  # fmt: skip
                with trio.fail_after(20):
                    delivered = await notices.receive()
                assert delivered.notice.body == b"*** Room was created"
                # baresip tells nobody when its REGISTER is done (its MESSAGE may come first):
                # look at the registrar until its binding is there (baresip unregisters on exit)
                assert server.registrar is not None
                with trio.fail_after(20):
                    while not server.registrar.lookup(f"alice@{DOMAIN}", trio.current_time()):
                        await trio.sleep(0.05)
                inner.cancel_scope.cancel()
        room = server.conference.room(f"sip:bsroom@{DOMAIN}")
        assert room is not None and room.owner is not None and room.owner.uri == f"sip:alice@{DOMAIN}"
