"""examples/kamailio: imc-actors behind a Kamailio front proxy.

Always: our side's config parses and agrees with the Kamailio config, and both are referenced.
With Kamailio installed: Kamailio accepts the config, and a create/join/chat session works
through it (Kamailio the registrar; rooms routed to imc-actors; notices back via outbound_proxy).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from imc_actors import Config
from imc_actors.server import open_server
from tests.support.ua import TestUA

from .loader import EXAMPLES, ROOT

KAMAILIO_DIR = EXAMPLES / "kamailio"
CFG = KAMAILIO_DIR / "kamailio.cfg"
TOML = KAMAILIO_DIR / "imc.toml"
KAMAILIO = shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)

needs_kamailio = pytest.mark.skipif(KAMAILIO is None, reason="kamailio is not installed")


def defines() -> dict[str, str]:
    """The ``#!define NAME VALUE`` defaults of the Kamailio config (quotes removed)."""
    found = re.findall(r"^#!define\s+(\w+)\s+(.+?)\s*$", CFG.read_text(), re.MULTILINE)
    return {name: value.strip('"') for name, value in found}


def test_our_side_parses_and_agrees_with_kamailio():
    config = Config.from_sources(str(TOML), environ={})
    kam = defines()
    assert f"sip:{config.listen_addresses[0].host}:{config.listen_addresses[0].port}" == kam["IMC_URI"]
    assert {a.transport for a in config.listen_addresses} == {"udp", "tcp"}
    assert config.served_domains == [kam["IMC_DOMAIN"]]
    assert config.outbound_proxy == f"sip:127.0.0.1:{kam['FRONT_PORT']}"
    assert config.registrar is False  # Kamailio registers the users
    assert config.identity_header == "P-Asserted-Identity" and config.trusted_sources == ["127.0.0.1/32"]
    assert "P-Asserted-Identity" in CFG.read_text()


def test_the_kamailio_example_is_referenced():
    for index in (ROOT / "README.md", EXAMPLES / "README.md"):
        text = index.read_text()
        assert "examples/kamailio/kamailio.cfg" in text or "kamailio/kamailio.cfg" in text, index
        assert "imc.toml" in text, index
    notes = (KAMAILIO_DIR / "README.md").read_text()
    assert "kamailio.cfg" in notes and "imc.toml" in notes and "outbound_proxy" in notes


@needs_kamailio
def test_kamailio_accepts_the_config():
    result = subprocess.run([KAMAILIO, "-c", "-f", str(CFG)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (Kamailio listens on both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no free port")


async def expect(agent: TestUA, body: bytes) -> None:
    with trio.fail_after(10):  # safety net only
        message = await agent.next_message()
    assert message.body == body
    assert message.header("X-Service") == "imc"  # our extra_hdrs: it came from imc-actors


@needs_kamailio
async def test_a_session_through_kamailio(tmp_path, nursery):
    front = free_port()
    config = Config.from_sources(str(TOML), environ={}, overrides={
        "listen": ["udp:127.0.0.1:0"],
        "outbound_proxy": f"sip:127.0.0.1:{front}",
        "db_url": f"sqlite:///{tmp_path}/imc.db",
    })
    domain = config.served_domains[0]
    manager, room = f"sip:imc-manager@{domain}", f"sip:chat@{domain}"
    log = tmp_path / "kamailio.log"
    async with open_server(config) as server:
        [ours] = server.addresses
        with log.open("wb") as log_file:
            kamailio = await trio.lowlevel.open_process(
                [KAMAILIO, "-f", str(CFG), "-DD", "-E", "-A", f"FRONT_PORT={front}",
                 "-A", f'IMC_URI="sip:127.0.0.1:{ours.port}"', "-P", str(tmp_path / "kamailio.pid"),
                 "-Y", str(tmp_path), "-w", str(tmp_path), "-m", "64", "-M", "8"],
                stdout=subprocess.DEVNULL, stderr=log_file,
            )
        try:
            alice = await TestUA.open(nursery, "alice", "example.org", ("127.0.0.1", front))
            bob = await TestUA.open(nursery, "bob", "example.org", ("127.0.0.1", front))
            # the first REGISTER is retransmitted until Kamailio listens
            assert (await alice.register()).code == 200, log.read_text()[-2000:]
            assert (await bob.register()).code == 200
            assert server.registrar is None  # imc-actors left registration to Kamailio
            assert (await alice.message(manager, "#create chat")).code == 200
            await expect(alice, b"*** Room was created")
            assert (await bob.message(room, "#join")).code == 200
            await expect(alice, b"*** [bob] has joined the room")
            await expect(bob, b"*** [bob] has joined the room")
            assert (await bob.message(room, "hello via kamailio")).code == 202
            await expect(alice, b"[bob]: hello via kamailio")
            # the members are the users Kamailio registered (its domain, not the rooms')
            members = [m.uri for m in server.conference.room(room).members]
            assert members == ["sip:alice@example.org", "sip:bob@example.org"]
            alice.close()
            bob.close()
        finally:
            kamailio.terminate()
            with trio.move_on_after(10):
                await kamailio.wait()
            if kamailio.returncode is None:
                kamailio.kill()
                await kamailio.wait()
