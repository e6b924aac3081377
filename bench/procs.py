"""Processes the benchmark starts, and what they cost.

Every process is started through :func:`spawn`, in a session of its own (its process group id
is its PID), and recorded; :func:`stop` ends it by that id: SIGTERM, then SIGKILL after a
grace period. :func:`install_cleanup` makes every exit path (normal return, exception,
SIGINT/SIGTERM/SIGHUP) stop whatever is still running, so no SIP server or SIPp is left behind.

:class:`Sampler` measures a set of processes (a server and its children) from ``/proc``: CPU
time used between two instants and the peak memory seen by a background sampling thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_running: dict[int, subprocess.Popen[bytes]] = {}
_lock = threading.Lock()
#: CPU seconds (user + system) of each process reaped through :func:`wait`, by PID.
cpu_used: dict[int, float] = {}


def wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``proc`` to exit and reap it, recording its CPU time in
    :data:`cpu_used`; False when it is still running."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while proc.returncode is None:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere
            proc.poll()
            break
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu_used[proc.pid] = usage.ru_utime + usage.ru_stime
            break
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def spawn(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    stdout: str | Path | None = None,
    stderr: str | Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (process group id = its PID) and record it.

    ``stdout``/``stderr`` are file paths (appended to) or None for /dev/null.
    """
    out = open(stdout, "ab") if stdout else subprocess.DEVNULL  # noqa: SIM115
    err = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    finally:
        for handle in (out, err):
            if handle is not subprocess.DEVNULL:
                handle.close()  # type: ignore[union-attr]
    with _lock:
        _running[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
    """Stop ``proc`` and its process group (by its PID) and reap it; return its exit code.

    Sends ``sig`` to the group whose id is the PID we started; after ``grace`` seconds,
    SIGKILL. Safe to call twice.
    """
    if not wait(proc, 0):
        _signal_group(proc.pid, sig)
        if not wait(proc, grace):
            _signal_group(proc.pid, signal.SIGKILL)
            wait(proc, 5)
    # Children that outlived the leader (kamailio's workers) are in the same group.
    _signal_group(proc.pid, signal.SIGKILL)
    with _lock:
        _running.pop(proc.pid, None)
    return proc.returncode


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    """Stop every process still recorded (newest first)."""
    with _lock:
        procs = list(_running.values())
    for proc in reversed(procs):
        stop(proc, sig=signal.SIGKILL if proc.poll() is None else signal.SIGTERM, grace=2.0)


def install_cleanup() -> None:
    """Stop every started process on interpreter exit and on SIGINT/SIGTERM/SIGHUP."""
    atexit.register(stop_all)

    def on_signal(signum: int, frame: object) -> None:
        stop_all()
        print(f"bench: {signal.Signals(signum).name}, stopped every started process", file=sys.stderr)
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def free_port(*, avoid: Sequence[int] = ()) -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (asked of the kernel, checked twice)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            if port in avoid:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def port_is_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 for both UDP and TCP."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------- /proc
def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (read from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (exited ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLK_TCK


def memory_kib(pids: Sequence[int]) -> tuple[int, int]:
    """``(sum of RSS, sum of PSS)`` of ``pids`` in KiB.

    PSS shares each shared page among the processes that map it, so the sum over a
    multi-process server (Kamailio's workers map one shared-memory segment) counts it once.
    """
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of one process, in KiB; 0 when it has exited."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler:
    """CPU and memory of a process tree over one measurement window.

    ``with Sampler(root_pid) as s: ...``: CPU seconds are read at entry and exit (the tree
    is listed at entry); a thread samples the summed PSS every ``interval`` seconds and keeps
    the peak. After the block: :attr:`cpu_percent` (100 = one core busy) and
    :attr:`peak_pss_kib`.
    """

    def __init__(self, root: int, *, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.pids: list[int] = []
        self.cpu_percent = 0.0
        self.peak_pss_kib = 0
        self.wall = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Sampler:
        self.pids = descendants(self.root)
        self._cpu0 = cpu_seconds(self.pids)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            _, pss = memory_kib(self.pids)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            if self._stop.wait(self.interval):
                return

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        used = cpu_seconds(self.pids) - self._cpu0
        self.cpu_percent = 100.0 * used / self.wall if self.wall > 0 else 0.0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _, pss = memory_kib(self.pids)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)


def wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``needle`` appears in the file ``path``; False on timeout or exit of ``proc``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if needle in path.read_text(errors="replace"):
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False
