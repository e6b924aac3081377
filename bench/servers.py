"""The two servers under test, each started on 127.0.0.1 with its own ports and database.

- :class:`ImcServer`: ``python -m imc_actors serve`` from this checkout, with its built-in
  registrar and a fresh SQLite database (durable: WAL, ``synchronous=FULL``), and
  ``IMC_FLOOD_RATE=0`` (its load generators all send from 127.0.0.1; an environment variable,
  so an older ``IMC_BENCH_SOURCE`` without the setting still starts).
- :class:`KamailioServer`: Debian's ``kamailio`` with ``bench/kamailio/kamailio.cfg``
  (registrar + usrloc + imc, SQLite through db_sqlite, ``outbound_proxy`` pointing back to
  itself so room messages reach the registered members).

Both expose ``name``, ``port``, ``pid`` (the root of the process tree to measure), ``start()``
and ``stop()``; every process is started and stopped through :mod:`bench.procs`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from . import procs

REPO = Path(__file__).resolve().parents[1]
KAMAILIO_CFG = REPO / "bench" / "kamailio" / "kamailio.cfg"
#: Where Debian's kamailio-sqlite-modules keeps the imc DDL (the tables imc-actors also uses).
KAMAILIO_IMC_SQL = Path("/usr/share/kamailio/db_sqlite/imc-create.sql")


class ServerError(RuntimeError):
    """A server did not start."""


class ScratchDatabase:
    """A PostgreSQL database of one run's own on the server of ``server_url``
    (``postgresql://user@host:port/db``): created now, dropped by :meth:`drop`."""

    def __init__(self, server_url: str) -> None:
        import secrets
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(server_url)
        self.name = f"imc_bench_{secrets.token_hex(4)}"
        self._connect = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432,
                         "user": parts.username or "postgres", "dbname": parts.path.lstrip("/") or "postgres"}  # fmt: skip
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, "", ""))
        self._sql(f'CREATE DATABASE "{self.name}"')

    def _sql(self, statement: str) -> None:
        import psycopg2

        conn = psycopg2.connect(**self._connect)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def drop(self) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class ImcServer:
    """imc-actors as a subprocess (``python -m imc_actors serve``)."""

    name = "imc-actors"

    def __init__(self, workdir: Path, port: int, *, python: str = sys.executable,
                 log_level: str = "warning", extra_args: tuple[str, ...] = (),
                 source: Path | None = None, pg_url: str | None = None) -> None:
        self.workdir = workdir
        #: A PostgreSQL server URL: each start gets a scratch database of its own there
        #: (created, then dropped at stop) instead of the SQLite file.
        self.pg_url = pg_url
        self.scratch: ScratchDatabase | None = None
        self.source = source or Path(os.environ.get("IMC_BENCH_SOURCE") or REPO)
        self.port = port
        self.python = python
        self.log_level = log_level
        self.extra_args = extra_args
        self.db_path = workdir / "imc-actors.db"
        self.log_path = workdir / "imc-actors.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def db_url(self) -> str:
        return self.scratch.url if self.scratch is not None else f"sqlite:///{self.db_path}"

    def command(self) -> list[str]:
        return [
            self.python, "-m", "imc_actors", "serve",
            "--listen", f"udp:127.0.0.1:{self.port}", "--listen", f"tcp:127.0.0.1:{self.port}",
            "--domain", "127.0.0.1", "--db-url", self.db_url(),
            "--log-level", self.log_level, *self.extra_args,
        ]  # fmt: skip

    def start(self, *, fresh: bool = True, timeout: float = 30.0) -> float:
        """Start and wait for ``listening``; return the seconds it took."""
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
            if self.pg_url is not None:
                if self.scratch is not None:
                    self.scratch.drop()
                self.scratch = ScratchDatabase(self.pg_url)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        # every load generator sends from 127.0.0.1: no per-source budget, so the benchmark
        # measures capacity and not flood_rate (see RESULTS.md)
        env["IMC_FLOOD_RATE"] = "0"
        self.log_path.write_text("")
        started = time.perf_counter()
        self.proc = procs.spawn(self.command(), cwd=self.source, env=env, stderr=self.log_path, stdout=self.log_path)
        if not procs.wait_for_line(self.log_path, "imc-actors: listening on", self.proc, timeout):
            self.stop()
            raise ServerError(f"imc-actors did not start:\n{self.log_path.read_text()[-3000:]}")
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None
        if self.scratch is not None:
            self.scratch.drop()
            self.scratch = None

    def version(self) -> str:
        where = "this checkout" if self.source == REPO else str(self.source)
        return f"imc-actors ({where}), {sys.implementation.name} {sys.version.split()[0]}"


class KamailioServer:
    """Kamailio 5.x with ``bench/kamailio/kamailio.cfg``."""

    name = "kamailio"

    def __init__(self, workdir: Path, port: int, *, children: int = 4, shm_mib: int = 2048) -> None:
        self.workdir = workdir
        self.port = port
        self.children = children
        self.shm_mib = shm_mib
        self.db_path = workdir / "kamailio-imc.db"
        self.log_path = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = shutil.which("kamailio") or "/usr/sbin/kamailio"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @staticmethod
    def available() -> str | None:
        """None when kamailio and its sqlite module are installed, else what is missing."""
        if shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists():
            return "kamailio is not installed (apt-get install kamailio kamailio-sqlite-modules)"
        if not KAMAILIO_IMC_SQL.exists():
            return "kamailio-sqlite-modules is not installed (apt-get install kamailio-sqlite-modules)"
        return None

    def create_database(self) -> None:
        """A fresh SQLite file with Kamailio's ``version`` table and the imc tables."""
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        with sqlite3.connect(self.db_path) as db:
            db.execute(
                "CREATE TABLE version (table_name VARCHAR(32) NOT NULL, "
                "table_version INTEGER DEFAULT 0 NOT NULL, "
                "CONSTRAINT version_table_name_idx UNIQUE (table_name))"
            )
            db.executescript(KAMAILIO_IMC_SQL.read_text())

    def command(self) -> list[str]:
        return [
            self.binary, "-f", str(KAMAILIO_CFG), "-DD", "-E",
            "-A", f"KAM_PORT={self.port}",
            "-A", f'KAM_OBPROXY="sip:127.0.0.1:{self.port}"',
            "-A", f'KAM_DB_URL="sqlite:///{self.db_path}"',
            "-A", f"KAM_CHILDREN={self.children}",
            "-P", str(self.workdir / "kamailio.pid"), "-Y", str(self.workdir),
            "-w", str(self.workdir), "-m", str(self.shm_mib), "-M", "32", "-b", "4194304",
        ]  # fmt: skip

    def start(self, *, fresh: bool = True, timeout: float = 30.0) -> float:
        if fresh:
            self.create_database()
        self.log_path.write_text("")
        started = time.perf_counter()
        self.proc = procs.spawn(self.command(), cwd=self.workdir, stderr=self.log_path, stdout=self.log_path)
        # Kamailio logs nothing at debug=1 when it is up: wait for the UDP port to be taken.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if not procs.port_is_free(self.port) and len(procs.descendants(self.pid)) > self.children:
                time.sleep(0.3)  # let the workers finish child_init (db connections)
                return time.perf_counter() - started
            time.sleep(0.05)
        log = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise ServerError(f"kamailio did not start:\n{log}")

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def version(self) -> str:
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True, check=False).stdout
        first = out.splitlines()[0] if out else "kamailio"
        return first.replace("version: ", "")
