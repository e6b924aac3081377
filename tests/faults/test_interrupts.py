"""Ctrl-C in an embedder's ``trio.run(main)``: the caller gets a plain KeyboardInterrupt, and
nothing logs it as a database failure.

A tour saw it come out of ``open_conference`` and ``open_server`` wrapped in nested
BaseExceptionGroups (one per nursery inside), and a KeyboardInterrupt raised while a commit ran
answered that command 500 with an ERROR line "commit failed ... the store's writer failed:
KeyboardInterrupt()". Each test runs its own ``trio.run``, as an embedder does.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

import pytest
import trio

from imc_actors.conference import open_conference, open_repository
from imc_actors.config import Config
from imc_actors.server import open_server
from tests.faults.common import MANAGER, ROOM_A, make_config, say


def outcome_of(main: Callable[[], Awaitable[object]]) -> BaseException | None:
    """What ``trio.run(main)`` raised (None: nothing)."""
    try:
        trio.run(main)
    except BaseException as exc:  # noqa: BLE001 - the test looks at what the caller sees
        return exc
    return None


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("exit_type", [KeyboardInterrupt, SystemExit])
def test_an_exit_in_the_block_reaches_the_caller_unwrapped(tmp_path, caplog, exit_type):
    config = make_config(tmp_path)

    async def main() -> None:
        async with open_conference(config) as conf:
            assert (await conf.handle(say(MANAGER, "alice", "#create a"))).code == 200
            raise exit_type

    caught = outcome_of(main)
    assert type(caught) is exit_type, repr(caught)
    assert errors_in(caplog) == []


def test_a_real_sigint_while_the_conference_waits(tmp_path, caplog):
    # Trio turns SIGINT into KeyboardInterrupt only while Python's own handler is installed
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a handler other than Python's default here")
    config = make_config(tmp_path)

    async def main() -> None:
        async with open_conference(config) as conf:
            assert (await conf.handle(say(MANAGER, "alice", "#create a"))).code == 200
            # from another thread, while the loop waits: Trio hands it to the main task
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            await trio.sleep_forever()

    caught = outcome_of(main)
    assert type(caught) is KeyboardInterrupt, repr(caught)
    assert errors_in(caplog) == []


@pytest.mark.parametrize("inline", [True, False], ids=["inline-commit", "writer-thread"])
def test_ctrl_c_during_a_commit_is_no_store_error(tmp_path, caplog, inline):
    # inline: the commit runs on the event loop's thread, where a real SIGINT raises it;
    # writer-thread: the store's worker thread raises it and to_thread hands it back
    config = make_config(tmp_path, sqlite_inline=inline)
    interrupt = False
    answers = []

    async def main() -> None:
        repository = await trio.to_thread.run_sync(open_repository, config)
        apply_batch = repository.apply_batch

        def interrupted(writes):
            if interrupt:
                raise KeyboardInterrupt
            apply_batch(writes)

        repository.apply_batch = interrupted  # type: ignore[method-assign]
        async with open_conference(config, repository=repository) as conf:
            assert (await conf.handle(say(MANAGER, "alice", "#create a"))).code == 200
            nonlocal interrupt
            interrupt = True
            answers.append(await conf.handle(say(ROOM_A, "bob", "#join")))
            await trio.sleep_forever()  # the conference ends by itself

    caught = outcome_of(main)
    assert type(caught) is KeyboardInterrupt, repr(caught)
    assert errors_in(caplog) == []
    assert not [r for r in caplog.records if "KeyboardInterrupt" in r.getMessage()]
    # the command whose commit was cut short is told to come back (503), never 500; on the
    # inline path the interrupted commit answers before the conference ends
    assert [a.code for a in answers] == ([503] if inline else [a.code for a in answers if a.code == 503])
    assert all(a.retry_after for a in answers)


def test_ctrl_c_in_an_open_server_block_reaches_the_caller_unwrapped(tmp_path, caplog):
    config = Config.from_sources(environ={}, overrides={
        "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"],
        "db_url": f"sqlite:///{tmp_path}/imc.db", "domains": ["127.0.0.1"],
    })

    async def main() -> None:
        async with open_server(config):
            await trio.sleep(0)
            raise KeyboardInterrupt

    caught = outcome_of(main)
    assert type(caught) is KeyboardInterrupt, repr(caught)
    assert errors_in(caplog) == []
