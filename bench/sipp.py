"""Running SIPp (Debian's sip-tester) and reading what it counted.

Scenarios live in ``bench/sipp/``. Every run is bounded: a call count (``-m``) and a global
``-timeout``, plus a wall-clock limit here after which the process is stopped. SIPp writes its
statistics file (``-trace_stat``) on exit, including after SIGUSR1, which is how a UAS that
did not reach its expected count is stopped.
"""

from __future__ import annotations

import csv
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import procs

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SIPP = shutil.which("sipp") or "sipp"


@dataclass
class SippResult:
    """What one SIPp run counted: calls that succeeded/failed (from its statistics file),
    its exit code, wall time, and for UAC runs with ``rtt`` the response times (ms) and the
    instants (ms since start) each was measured at."""

    successful: int
    failed: int
    returncode: int | None
    wall: float
    rtt_ms: list[float] = field(default_factory=list)
    rtt_at_ms: list[float] = field(default_factory=list)
    errors: str = ""
    cpu_seconds: float = 0.0


def available() -> str | None:
    """None when the sipp binary is installed, else what to do."""
    return None if shutil.which("sipp") else "sipp is not installed (apt-get install sip-tester)"


def _stats(path: Path) -> tuple[int, int]:
    """(SuccessfulCall, FailedCall) cumulated, from the last row of a -trace_stat file."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
    except OSError:
        return 0, 0
    if len(rows) < 2:
        return 0, 0
    header, last = rows[0], rows[-1]
    values = dict(zip(header, last, strict=False))

    def number(name: str) -> int:
        try:
            return int(values.get(name, "0") or 0)
        except ValueError:
            return 0

    return number("SuccessfulCall(C)"), number("FailedCall(C)")


def _rtts(workdir: Path, scenario: str, pid: int) -> tuple[list[float], list[float]]:
    path = workdir / f"{Path(scenario).stem}_{pid}_rtt.csv"
    times: list[float] = []
    at: list[float] = []
    try:
        with path.open() as fh:
            next(fh, None)
            for line in fh:
                parts = line.strip().split(";")
                if len(parts) >= 2:
                    at.append(float(parts[0]))
                    times.append(float(parts[1]))
    except OSError:
        pass
    return times, at


def _errors(workdir: Path, scenario: str, pid: int) -> str:
    path = workdir / f"{Path(scenario).stem}_{pid}_errors.log"
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def _argv(scenario: str, *, local_port: int, count: int, timeout: float, target: str | None,
          rate: float | None = None, limit: int | None = None, inf: Path | None = None,
          keys: dict[str, str] | None = None, rtt: bool = False, stats: Path) -> list[str]:
    argv = [
        SIPP, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(local_port),
        "-m", str(count), "-timeout", f"{max(1, int(timeout))}s", "-nostdin",
        "-trace_stat", "-stf", str(stats), "-fd", "1", "-trace_err",
        "-max_recv_loops", "10000", "-max_sched_loops", "10000",
        # SIPp's default 64 KiB socket buffers drop the bursts a fan-out sends (4 MiB is this
        # machine's net.core.rmem_max; the servers ask for as much).
        "-buff_size", "4194304",
    ]  # fmt: skip
    if rate is not None:
        argv += ["-r", f"{rate:.3f}".rstrip("0").rstrip("."), "-rp", "1000"]
    if limit is not None:
        argv += ["-l", str(limit)]
    if inf is not None:
        argv += ["-inf", str(inf)]
    for key, value in (keys or {}).items():
        argv += ["-key", key, value]
    if rtt:
        argv += ["-trace_rtt", "-rtt_freq", "1"]
    if target is not None:
        argv.append(target)
    return argv


def run_uac(scenario: str, server_port: int, workdir: Path, *, count: int, timeout: float,
            rate: float | None = None, limit: int | None = None, inf: Path | None = None,
            keys: dict[str, str] | None = None, rtt: bool = False, tag: str = "uac") -> SippResult:
    """Run a UAC scenario against 127.0.0.1:``server_port`` to completion (bounded)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stats = workdir / f"{tag}_stats.csv"
    stats.unlink(missing_ok=True)
    argv = _argv(scenario, local_port=procs.free_port(), count=count, timeout=timeout,
                 target=f"127.0.0.1:{server_port}", rate=rate, limit=limit, inf=inf, keys=keys,
                 rtt=rtt, stats=stats)  # fmt: skip
    started = time.perf_counter()
    proc = procs.spawn(argv, cwd=workdir, stdout=workdir / f"{tag}.out", stderr=workdir / f"{tag}.err")
    if not procs.wait(proc, timeout + 15):
        procs.stop(proc, sig=signal.SIGUSR1)
    wall = time.perf_counter() - started
    code = procs.stop(proc)
    ok, failed = _stats(stats)
    times, at = _rtts(workdir, scenario, proc.pid) if rtt else ([], [])
    return SippResult(ok, failed, code, wall, times, at, _errors(workdir, scenario, proc.pid),
                      procs.cpu_used.pop(proc.pid, 0.0))


class Uas:
    """A SIPp UAS (``uas.xml``) answering 200 to every MESSAGE on 127.0.0.1:``port``.

    Started with the number of deliveries expected (``-m``): it exits by itself once they
    have all arrived; :meth:`finish` waits for that (up to ``grace`` seconds), stops it
    otherwise, and returns what it counted.
    """

    def __init__(self, port: int, workdir: Path, *, expected: int, timeout: float, tag: str = "uas") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.workdir = workdir
        self.stats = workdir / f"{tag}_stats.csv"
        self.stats.unlink(missing_ok=True)
        argv = _argv("uas.xml", local_port=port, count=max(1, expected), timeout=timeout,
                     target=None, stats=self.stats)  # fmt: skip
        self.started = time.perf_counter()
        self.proc = procs.spawn(argv, cwd=workdir, stdout=workdir / f"{tag}.out", stderr=workdir / f"{tag}.err")
        self.done_at: float | None = None
        # SIPp binds its port within a few ms; make sure it is listening before load starts.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and procs.port_is_free(port) and self.proc.poll() is None:
            time.sleep(0.01)

    def finish(self, grace: float) -> SippResult:
        """Wait up to ``grace`` s for the UAS to reach its count, then stop it; its counts."""
        if not procs.wait(self.proc, grace):
            procs.stop(self.proc, sig=signal.SIGUSR1, grace=5)
        wall = time.perf_counter() - self.started
        code = procs.stop(self.proc)
        ok, failed = _stats(self.stats)
        return SippResult(ok, failed, code, wall, errors=_errors(self.workdir, "uas.xml", self.proc.pid),
                          cpu_seconds=procs.cpu_used.pop(self.proc.pid, 0.0))


def write_csv(path: Path, rows: list[tuple[str, ...]], *, order: str = "SEQUENTIAL") -> Path:
    """A SIPp injection file: first line the read order, then ``;``-separated fields."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(order + "\n" + "".join(";".join(row) + ";\n" for row in rows))
    return path
