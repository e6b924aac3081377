"""``serve --workers N`` (issue 13): one parent process starts N worker processes on this
machine and supervises them.

Each worker is a whole server (:func:`~imc_actors.server.open_server`) and a node of its own,
named ``<node>-<i>`` (``node``, else this machine's host name, then the worker's index from
0; :func:`node_names`), on the same ``db_url``. The workers share the SIP listen ports
(``SO_REUSEPORT``: the kernel hands each datagram or connection to one of them), and each
also binds a UDP and a TCP address of its own on the first listen host with an ephemeral
port (:func:`private_host`): it sends its requests from there and advertises it first in the
node table, so responses and forwarded MESSAGEs reach the right process.

The parent never runs the event loop: it forks the workers (so each gets the validated
:class:`~imc_actors.config.Config` as is), waits for each to report that it is listening,
and then only waits for signals and for workers that end:

- startup: worker 0 starts first and alone (it creates the tables and fixes the real ports
  when a listen port is 0); the others start once it listens, with its ports. A worker that
  fails to start (a port in use, the database unreachable) has printed the usual
  ``imc-actors: cannot start: ...`` line; the parent stops the others and exits with its
  exit code;
- a worker that dies later is logged and started again (same node name, same ports) after
  :data:`RESTART_DELAY` seconds, doubled for each death in a row up to
  :data:`RESTART_DELAY_MAX` (reset once a worker has served for :data:`STEADY` seconds);
- SIGTERM or SIGINT to the parent: SIGTERM to every worker, each shuts down cleanly (hands
  its leases over), and the parent exits 0 once all have (1 when one did not end cleanly; one
  still running after :data:`SHUTDOWN_GRACE` seconds is killed).

Only worker 0 serves ``rpc_listen`` and ``mi_fifo`` (the others run without them). Each
worker is in a process group of its own, so a terminal's Ctrl-C reaches the parent alone,
and gets SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config, ListenAddress
from .transport.steering import Steering

log = logging.getLogger("imc_actors.workers")

__all__ = ["WorkerSlot", "node_names", "private_host", "supervise", "workers_refusal"]

#: Seconds before a worker that died is started again; doubled per death in a row.
RESTART_DELAY = 0.5
#: The longest wait before a restart.
RESTART_DELAY_MAX = 30.0
#: Seconds a restarted worker must serve before its deaths in a row are forgotten.
STEADY = 60.0
#: Seconds the workers get to shut down cleanly before they are killed.
SHUTDOWN_GRACE = 30.0
#: How often (seconds) the parent looks at its pipes, children and signals.
TICK = 0.05

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1
_NOT_A_NODE_CHARACTER = re.compile(r"[^A-Za-z0-9._-]+")
_WILDCARD_LOOPBACK = {
    "0.0.0.0": "127.0.0.1",
    "": "127.0.0.1",
    "::": "::1",
    "localhost": "127.0.0.1",
}


def node_names(config: Config) -> list[str]:
    """The node names of ``config.workers`` workers: ``<base>-<i>`` for i from 0, ``base``
    being ``node`` or else the host name (characters a node name may not have become ``-``),
    cut so that every name fits the node table's 64 characters."""
    base = config.node or _NOT_A_NODE_CHARACTER.sub("-", socket.gethostname()).strip("-._") or "imc"
    suffix = len(str(config.workers - 1)) + 1
    base = base[: 64 - suffix].rstrip("-._") or "imc"
    return [f"{base}-{index}" for index in range(config.workers)]


def private_host(listen: list[ListenAddress]) -> str:
    """The host of the workers' private addresses: the first listen address's host (a
    wildcard or ``localhost`` becomes the loopback address of its family, which the other
    workers of this machine reach)."""
    host = listen[0].host if listen else "127.0.0.1"
    return _WILDCARD_LOOPBACK.get(host.lower(), host)


@dataclass
class WorkerSlot:
    """What one worker process is told: its ``index``, ``node`` name, the ``private_host`` of
    its own address, every worker's node name (``nodes``, in index order), the directory
    ``relay_dir`` of the workers' relay sockets (:meth:`steering`), and the pipe it reports
    on (:meth:`ready`)."""

    index: int
    node: str
    private_host: str
    nodes: tuple[str, ...] = ()
    relay_dir: str = ""
    ready_fd: int = -1
    #: started again after its predecessor died: the node name is known to be free (the
    #: conference's check for a process already running under it is skipped)
    restarted: bool = False

    def steering(self) -> Steering | None:
        """This worker's :class:`~imc_actors.transport.steering.Steering` (None alone)."""
        if len(self.nodes) < 2 or not self.relay_dir:
            return None
        return Steering(self.index, len(self.nodes), self.relay_dir, self.nodes)

    def ready(self, server: Any) -> None:
        """Tell the parent this worker listens: its shared and private addresses, and the
        management endpoints it serves (worker 0). Closes the pipe."""
        private = {str(address) for address in server.transport.private}
        report = {
            "shared": [str(a) for a in server.addresses if str(a) not in private],
            "private": sorted(private),
            "http_url": server.http_url,
            "rpc_url": server.rpc_url,
            "mi_fifo": server.mi_fifo,
        }
        if self.ready_fd >= 0:
            try:
                os.write(self.ready_fd, (json.dumps(report) + "\n").encode())
            finally:
                os.close(self.ready_fd)
                self.ready_fd = -1


#: ``run(config, slot) -> exit code``: one worker's whole life (``cli.serve_worker``).
RunWorker = Callable[[Config, WorkerSlot], int]


@dataclass
class _Worker:
    slot: WorkerSlot
    pid: int = 0
    pipe: int = -1
    buffer: bytes = b""
    report: dict[str, Any] | None = None
    started: float = 0.0
    deaths: int = 0  # in a row
    restart_at: float | None = None
    exit_code: int | None = None
    last_pid: int = 0


#: The start of the relay directories' names (then the parent's process id and ``-``).
RELAY_PREFIX = "imc-actors-workers-"


def sweep_relay_dirs(where: str | None = None) -> list[str]:
    """Remove the relay directories (in ``where``, default the temporary directory) that a
    parent killed with ``kill -9`` left: those of this user whose process id names no
    running process. Returns the paths removed."""
    where = where if where is not None else tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(where)
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(RELAY_PREFIX):].partition("-")[0]
        if not name.startswith(RELAY_PREFIX) or not pid_text.isdigit():
            continue
        path = os.path.join(where, name)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
            continue  # its parent runs
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:  # not ours to look at (EPERM: another user's process), or gone
            continue
    return removed


class _Supervisor:
    def __init__(self, config: Config, run: RunWorker, say: Callable[[str, int], None]) -> None:
        self.config = config
        self.run = run
        self.say = say
        host = private_host(config.listen_addresses)
        names = node_names(config)
        # the workers' relay sockets (steering): a directory only this user can reach, named
        # with this process's id so that the next start removes it after a kill -9
        sweep_relay_dirs()
        self.relay_dir = tempfile.mkdtemp(prefix=f"{RELAY_PREFIX}{os.getpid()}-")
        self.workers = [
            _Worker(WorkerSlot(index, name, host, tuple(names), self.relay_dir))
            for index, name in enumerate(names)
        ]
        self.listen = list(config.listen)  # the real ports, once worker 0 has bound them
        self.stopping = False
        self.ready = False  # every worker has reported once

    # ------------------------------------------------------------------ processes
    def config_of(self, worker: _Worker) -> Config:
        first = worker.slot.index == 0
        return self.config.replace(
            node=worker.slot.node,
            listen=list(self.listen),
            rpc_listen=self.config.rpc_listen if first else None,
            mi_fifo=self.config.mi_fifo if first else None,
        )

    def spawn(self, worker: _Worker) -> None:
        config = self.config_of(worker)
        read, write = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read)
                _become_worker(parent)
                worker.slot.ready_fd = write
                code = self.run(config, worker.slot)
            except (
                BaseException
            ):  # pragma: no cover - a bug: say it, never return to the parent's loop
                logging.getLogger("imc_actors.workers").exception(
                    "worker %s failed", worker.slot.node
                )
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write)
        os.set_blocking(read, False)
        worker.pid, worker.pipe, worker.buffer, worker.report = pid, read, b"", None
        worker.started, worker.restart_at, worker.exit_code = time.monotonic(), None, None
        self.say(
            f"worker {worker.slot.index} (node {worker.slot.node}) started, pid {pid}", logging.INFO
        )

    def read_pipes(self) -> None:
        pipes = {w.pipe: w for w in self.workers if w.pipe >= 0}
        if not pipes:
            return
        readable, _, _ = select.select(list(pipes), [], [], 0)
        for fd in readable:
            worker = pipes[fd]
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                worker.buffer += data
                if b"\n" in worker.buffer:
                    worker.report = json.loads(worker.buffer.split(b"\n", 1)[0])
                    self._close_pipe(worker)
            else:
                self._close_pipe(worker)

    @staticmethod
    def _close_pipe(worker: _Worker) -> None:
        if worker.pipe >= 0:
            os.close(worker.pipe)
            worker.pipe = -1

    def reap(self) -> list[_Worker]:
        """The workers that have ended since the last look (exit code set)."""
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for worker in self.workers:
                if worker.pid == pid:
                    worker.last_pid, worker.pid = pid, 0
                    worker.exit_code = os.waitstatus_to_exitcode(status)
                    self._close_pipe(worker)
                    ended.append(worker)
        return ended

    def signals(self) -> list[int]:
        received = []
        while (info := signal.sigtimedwait(_SIGNALS, 0)) is not None:
            received.append(info.si_signo)
        return received

    def alive(self) -> list[_Worker]:
        return [w for w in self.workers if w.pid]

    # ------------------------------------------------------------------ phases
    def start(self, worker: _Worker) -> int | None:
        """Start ``worker`` and wait until it listens: None, or the exit code to end with
        (it failed to start, or a signal asked to stop)."""
        self.spawn(worker)
        while worker.report is None:
            self.tick()
            if self.stopping:
                return 0
            if worker.exit_code is not None:
                return worker.exit_code or 1
        return None

    def tick(self) -> None:
        """One round: waits up to :data:`TICK` for a report, then takes the signals, the
        ended workers and the reports."""
        pipes = [w.pipe for w in self.workers if w.pipe >= 0]
        if pipes:
            select.select(pipes, [], [], TICK)
        else:
            time.sleep(TICK)  # the signals are blocked: they wait in sigtimedwait's queue
        for signum in self.signals():
            if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                self.say(f"{signal.Signals(signum).name}, shutting down", logging.INFO)
                self.stopping = True
        self.read_pipes()
        for worker in self.reap():
            self.ended(worker)

    def ended(self, worker: _Worker) -> None:
        """A worker ended: after startup and unless stopping, it is started again later."""
        if self.stopping or not self.ready:
            return  # shutting down, or failed at startup: start() returns its code
        code = worker.exit_code or 0
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with code {code}"
        )
        served = time.monotonic() - worker.started
        worker.deaths = 1 if served >= STEADY else worker.deaths + 1
        delay = min(RESTART_DELAY * 2 ** (worker.deaths - 1), RESTART_DELAY_MAX)
        self.say(
            f"worker {worker.slot.index} (node {worker.slot.node}, pid {worker.last_pid}) "
            f"{how}; starting it again in {delay:g} s",
            logging.WARNING,
        )
        worker.restart_at = time.monotonic() + delay

    def serve(self) -> int:
        first = self.workers[0]
        code = self.start(first)
        if code is not None:
            return self.shutdown(code)
        assert first.report is not None
        self.listen = list(first.report["shared"])
        for worker in self.workers[1:]:
            code = self.start(worker)
            if code is not None:
                return self.shutdown(code)
        self.ready = True
        names = " ".join(w.slot.node for w in self.workers)
        self.say(f"{len(self.workers)} workers (nodes {names}) are serving", logging.INFO)
        self.say("listening on " + " ".join(self.listen), logging.INFO)
        report = first.report
        if report.get("http_url"):
            self.say(
                f"management on {report['http_url']} (JSON-RPC {report['rpc_url']})", logging.INFO
            )
        if report.get("mi_fifo"):
            self.say(f"MI FIFO at {report['mi_fifo']}", logging.INFO)
        while not self.stopping:
            self.tick()
            now = time.monotonic()
            for worker in self.workers:
                if not worker.pid and worker.restart_at is not None and now >= worker.restart_at:
                    worker.slot.restarted = True
                    self.spawn(worker)
        return self.shutdown(0)

    def shutdown(self, code: int) -> int:
        """SIGTERM to every worker, wait for them (killing those still there after
        :data:`SHUTDOWN_GRACE`); ``code``, or 1 when a worker did not end cleanly."""
        self.stopping = True
        clean = True
        for worker in self.alive():
            _kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.alive():
            if time.monotonic() >= deadline:
                for worker in self.alive():
                    self.say(
                        f"worker {worker.slot.index} (node {worker.slot.node}) did not "
                        f"stop within {SHUTDOWN_GRACE:g} s: killing it",
                        logging.ERROR,
                    )
                    _kill(worker.pid, signal.SIGKILL)
                deadline = float("inf")
                clean = False
            self.tick()
            for worker in self.workers:
                if worker.exit_code not in (None, 0) and worker.report is not None:
                    clean = False
        for worker in self.workers:
            self._close_pipe(worker)
        return code if code or clean else 1


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _become_worker(parent: int) -> None:
    """In the forked worker: its own process group (a terminal's Ctrl-C goes to the parent
    alone, which stops the workers in order), SIGTERM when the parent dies, and the signals
    the parent held back delivered again."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def workers_refusal(config: Config) -> str | None:
    """Why ``config`` cannot run several workers, as one line, or None. The workers share
    one database: an in-memory SQLite database is one per process."""
    from .store.instance import sqlite_file
    from .store.urls import DatabaseURL

    try:
        url = DatabaseURL.parse(config.db_url)
    except ValueError:
        return None  # the worker says what is wrong with it, as serve does
    if url.engine == "sqlite" and sqlite_file(url) is None or "mode=memory" in config.db_url:
        return (
            f"invalid workers: {config.workers} workers need one database they share, and "
            f"{url.redacted} is a new one in each process; use a SQLite file "
            "(sqlite:///imc.db) or PostgreSQL or MariaDB"
        )
    return None


def supervise(config: Config, run: RunWorker, say: Callable[[str, int], None]) -> int:
    """Run ``config.workers`` workers until SIGTERM or SIGINT (see the module docstring);
    ``run(config, slot)`` is one worker's life, ``say(text, level)`` prints the parent's own
    lines. Returns the exit code: 0 after a clean shutdown, a worker's code when it failed
    to start, 1 when a worker did not shut down cleanly."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    supervisor = _Supervisor(config, run, say)
    try:
        return supervisor.serve()
    finally:
        shutil.rmtree(supervisor.relay_dir, ignore_errors=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
