"""Bounded under abuse: values the server must refuse get a 4xx (and, for commands, a ``***``
notice naming the limit), never a 500, a traceback or silence. Real SIP over UDP on 127.0.0.1.
"""

from __future__ import annotations

import logging

import pytest
import trio

from imc_actors.registrar import MAX_ANSWER
from tests.integration.conftest import DOMAIN

AOR = f"sip:alice@{DOMAIN}"


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- registrar
@pytest.mark.parametrize("where", ["header", "param"])
async def test_expires_with_thousands_of_digits_is_clamped(ua, server, caplog, where: str):
    """Over 4,300 digits is past Python's int() limit: it used to raise (500 + traceback)."""
    alice = await ua("alice", register=False)
    huge = "9" * 5000
    contact = f"<{alice.contact}>" + (f";expires={huge}" if where == "param" else "")
    headers = [("Contact", contact)] + ([("Expires", huge)] if where == "header" else [])
    with trio.fail_after(5):
        response = await alice.request(
            "REGISTER", f"sip:{DOMAIN}", headers=headers, to_uri=alice.uri
        )
    assert response.code == 200, response
    assert response.header("Contact") == f"<{alice.contact}>;expires=3600"  # max_expires
    assert errors(caplog) == []


async def test_register_whose_answer_would_not_fit_is_refused_before_binding(ua, server):
    """The 200 lists every binding; one over a UDP datagram cannot be sent, so the REGISTER
    that would make it so gets a 403 and changes nothing (it used to bind, then go unanswered:
    ``Message too long``)."""
    alice = await ua("alice", register=False)
    long_user = "u" * 1500

    def contacts(first: int) -> list[tuple[str, str]]:
        return [
            ("Contact", f"<sip:{long_user}{i}@127.0.0.1:{alice.port}>")
            for i in range(first, first + 25)
        ]

    first = await alice.request("REGISTER", f"sip:{DOMAIN}", headers=contacts(0), to_uri=AOR)
    assert first.code == 200
    assert len(first.header_list("Contact")) == 25
    with trio.fail_after(5):  # before: no answer at all
        second = await alice.request("REGISTER", f"sip:{DOMAIN}", headers=contacts(25), to_uri=AOR)
    assert (second.code, second.reason) == (403, "Too Many Contacts")
    assert str(MAX_ANSWER) in (second.header("Warning") or "")
    assert server.registrar is not None
    assert len(server.registrar.lookup("alice@127.0.0.1", trio.current_time())) == 25
    # Removing bindings still works (the answer shrinks), and then adding fits again.
    remove = [(name, f"{value};expires=0") for name, value in contacts(0)[:20]]
    third = await alice.request("REGISTER", f"sip:{DOMAIN}", headers=remove, to_uri=AOR)
    assert third.code == 200 and len(third.header_list("Contact")) == 5
    fourth = await alice.request("REGISTER", f"sip:{DOMAIN}", headers=contacts(25), to_uri=AOR)
    assert fourth.code == 200 and len(fourth.header_list("Contact")) == 30
