"""``python -m bench.workers_db``: does SQLite hold up under ``serve --workers 2``?

Issue 13 item 1: "the workers of one machine may also share SQLite if you measure it works".
Each worker is a node with a writer of its own, so two processes commit to one SQLite file
(WAL: one writer at a time, the other waits up to the busy timeout, ``db_timeout``) where one
process did before. This runs the churn scenario of ``python -m bench`` (SIPp: ``#join`` then
``#exit`` of users in rooms of their own; every command a durable commit and two notices)
against imc-actors at fixed rates, for each configuration given:

- ``1-sqlite``: one process on a SQLite file (today's default);
- ``2-sqlite``: ``--workers 2`` on the same kind of SQLite file;
- ``2-postgresql``: ``--workers 2`` on PostgreSQL (own tables, dropped afterwards).

A trial passes as in ``python -m bench``: every command answered 2xx, every notice delivered,
the answers at 90 % of the rate asked. It prints one line per trial (rate, pass or why not,
p50/p99 of the answers, CPU of the process tree) for bench/RESULTS.md. Usage::

    python -m bench.workers_db [--configs 1-sqlite,2-sqlite,2-postgresql]
                               [--rates 200,400,800] [--users 500] [--duration 3]

About a minute per configuration. Needs SIPp; ``2-postgresql`` needs PostgreSQL at
``--pg`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import peewee
import trio

from imc_actors.config import Config

from . import load, procs, sipp
from .servers import ImcServer

PG = "postgresql://postgres@127.0.0.1:5432/test"
TABLES = (
    "rooms", "members", "pending", "location", "bans", "limits", "history", "room_info",
    "lease", "node",
)  # fmt: skip


def table_flags(suffix: str) -> list[str]:
    """Flags naming tables of this run's own (``--rooms-table imc_rooms_<suffix>`` ...)."""
    flags = []
    for name in TABLES:
        flag = {"lease": "--lease-table", "node": "--node-table"}.get(
            name, f"--{name.replace('_', '-')}-table"
        )
        flags += [flag, f"imc_{name}_{suffix}"]
    return flags


def drop_tables(url: str, suffix: str) -> None:
    db = peewee.PostgresqlDatabase(None)
    parts = url.removeprefix("postgresql://")
    user, _, rest = parts.partition("@")
    hostport, _, database = rest.partition("/")
    host, _, port = hostport.partition(":")
    db.init(database, user=user, host=host, port=int(port or 5432))
    with db:
        for name in TABLES:
            db.execute_sql(f'DROP TABLE IF EXISTS "imc_{name}_{suffix}"')


def run(
    config: str, rates: list[float], users: int, duration: float, pg: str, workdir: Path
) -> list[str]:
    workers, _, engine = config.partition("-")
    extra = ["--workers", workers] if workers != "1" else []
    suffix = secrets.token_hex(3)
    if engine == "postgresql":
        extra += ["--db-url", pg, *table_flags(suffix)]
    port = procs.free_port()
    server = ImcServer(workdir / config, port, extra_args=tuple(extra))
    (workdir / config).mkdir(parents=True, exist_ok=True)
    lines = []
    try:
        server.start()
        uas_port = procs.free_port(avoid=[port])
        scenario = load.Churn(server, uas_port, workdir / config / "churn", users=users,
                              duration=duration, max_lag=1.0)  # fmt: skip
        scenario.setup()
        scenario.trial(rates[0] / 4, duration=1.0, record=False)  # warm-up
        for rate in rates:
            trial = scenario.trial(rate)
            verdict = "pass" if trial.passed else f"FAIL ({trial.reason})"
            lines.append(
                f"| {config} | {rate:.0f} | {verdict} | {trial.msgs_per_s:.0f} | "
                f"{trial.p50_ms:.0f} / {trial.p99_ms:.0f} | {trial.cpu_percent:.0f} % |"
            )
            print(lines[-1], flush=True)
    finally:
        server.stop()
        if engine == "postgresql":
            drop_tables(pg, suffix)
    return lines


# ------------------------------------------------------------------ the store alone
def _store_worker(config: Config, index: int, users: int, rooms: int, ops: int,
                  start: Any, results: Any) -> None:  # fmt: skip
    results.put(trio.run(_store_churn, config, index, users, rooms, ops, start))


async def _store_churn(
    config: Config, index: int, users: int, rooms: int, ops: int, start: Any
) -> tuple[float, int, float]:
    """#join/#leave through one node's conference (no sockets): (commands/s, failed, p99 ms)."""
    from imc_actors.conference import IncomingMessage, open_conference

    domain = "bench.invalid"
    async with open_conference(config) as conf:
        for r in range(rooms):
            answer = await conf.handle(
                IncomingMessage(
                    f"sip:imc-manager@{domain}",
                    f"sip:o{index}x{r}@{domain}",
                    f"#create n{index}r{r}".encode(),
                )
            )
            assert answer.code == 200, answer
        await trio.to_thread.run_sync(start.wait)  # every process starts the churn together
        per_user, failed, took = ops // users, 0, []

        async def user(u: int) -> None:
            nonlocal failed
            room = f"sip:n{index}r{u % rooms}@{domain}"
            for i in range(per_user):
                began = time.perf_counter()
                answer = await conf.handle(
                    IncomingMessage(
                        room,
                        f"sip:n{index}u{u}@{domain}",
                        b"#join" if i % 2 == 0 else b"#leave",
                        None,
                        f"{u}-{i}",
                    )
                )
                took.append(time.perf_counter() - began)
                failed += answer.code != 200

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for u in range(users):
                nursery.start_soon(user, u)
        elapsed = time.perf_counter() - began
    took.sort()
    return per_user * users / elapsed, failed, 1000 * took[int(0.99 * (len(took) - 1))]


def store_run(engine: str, processes: int, ops: int, pg: str, workdir: Path) -> str:
    """``processes`` nodes, each with its own conference and rooms, churning at once on one
    database: the sum of their commands/s, their failed commands and the worst p99."""
    suffix = secrets.token_hex(3)
    url = pg if engine == "postgresql" else f"sqlite:///{workdir / f'store-{suffix}.db'}"
    tables = {f"{name}_table": f"imc_{name}_{suffix}" for name in TABLES}
    from imc_actors.conference import repository_of

    repository = repository_of(Config(db_url=url, **tables))
    repository.init_schema()  # once: two processes racing CREATE TABLE fail on PostgreSQL
    repository.close()
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(processes), context.Queue()
    children = []
    for index in range(processes):
        config = Config(db_url=url, domains=["bench.invalid"], node=f"s{index}", **tables)
        child = context.Process(
            target=_store_worker, args=(config, index, 100, 20, ops, start, results)
        )
        child.start()
        children.append(child)
    outcomes = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join()
    if engine == "postgresql":
        drop_tables(pg, suffix)
    rate = sum(o[0] for o in outcomes)
    return (f"| {processes} x {engine} | {rate:.0f} | {sum(o[1] for o in outcomes)} | "
            f"{max(o[2] for o in outcomes):.0f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.workers_db", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--configs", default="1-sqlite,2-sqlite,2-postgresql")
    parser.add_argument("--rates", default="200,400,800", help="pairs/s of the churn trials")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--pg", default=PG)
    parser.add_argument(
        "--store",
        type=int,
        default=0,
        metavar="OPS",
        help="instead: OPS #join/#leave commands per node through the "
        "conference alone (no SIP), 1 and 2 nodes on SQLite, 2 on PostgreSQL",
    )
    args = parser.parse_args(argv)
    if args.store:
        workdir = Path(tempfile.mkdtemp(prefix="imc-bench-store-"))
        lines = [
            "| nodes x database | commands/s (sum) | failed | worst p99 ms |",
            "|---|---:|---:|---:|",
        ]
        try:
            for engine, processes in (
                ("sqlite", 1),
                ("sqlite", 2),
                ("postgresql", 1),
                ("postgresql", 2),
            ):
                lines.append(store_run(engine, processes, args.store, args.pg, workdir))
                print(lines[-1], flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print("\n".join(lines))
        return 0
    problem = sipp.available()
    if problem:
        print(f"bench: {problem}")
        return 2
    procs.install_cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="imc-bench-workers-"))
    rates = [float(r) for r in args.rates.split(",")]
    lines = ["| configuration | pairs/s offered | trial | commands/s | p50 / p99 ms | CPU |",
             "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    try:
        for config in args.configs.split(","):
            lines += run(config, rates, args.users, args.duration, args.pg, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
