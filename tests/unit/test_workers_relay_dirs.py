"""The relay directories of ``serve --workers N`` (imc_actors.workers): one a parent killed
with ``kill -9`` left behind is removed by the next start (a tour found them piling up)."""

from __future__ import annotations

import os
import subprocess

from imc_actors.workers import RELAY_PREFIX, sweep_relay_dirs


def test_the_next_start_removes_what_a_killed_parent_left(tmp_path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its id names no process now
    stale = tmp_path / f"{RELAY_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{RELAY_PREFIX}{os.getpid()}-xyz"
    other = tmp_path / f"{RELAY_PREFIX}old-style"
    for path in (stale, live, other):
        path.mkdir()
        (path / "w0.sock").write_bytes(b"")
    assert sweep_relay_dirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()
