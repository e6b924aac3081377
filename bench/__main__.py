"""``python -m bench``: imc-actors against Kamailio's imc, same SIPp scenarios, same run.

Commands (default ``compare``)::

    python -m bench [compare] [--record] [--only fanout2,fanout10,fanout50,churn]
                              [--servers imc-actors,kamailio] [--duration S] [--no-memory]
                              [--workers N] [--imc-pg URL]
    python -m bench memory [--rooms 100000] [--members 10] [--record]
    python -m bench trial --server imc-actors --scenario fanout10 --rate 500 [--profile]

Everything listens on 127.0.0.1 only, on free ports chosen at start (distinct for each server
and each server's member UAS). Every load run is bounded in calls and time; every process
started is stopped by its PID on any exit path (bench.procs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import load, procs, report, sipp
from .servers import ImcServer, KamailioServer, ServerError

#: Scenario name -> (members for fan-out, or 0 for churn; first rate tried, calls/s).
SCENARIOS = {
    "fanout2": (2, 3000.0),
    "fanout10": (10, 750.0),
    "fanout50": (50, 150.0),
    "churn": (0, 900.0),
}
MAX_RATE = 20000.0


def log(*args: object) -> None:
    print(*args, flush=True)


def make_scenario(key: str, server, uas_port: int, workdir: Path, args) -> load.Scenario:  # type: ignore[no-untyped-def]
    members, _ = SCENARIOS[key]
    common = {"duration": args.duration, "max_lag": args.max_lag}
    if members:
        return load.FanOut(server, uas_port, workdir / f"{key}-{server.name}", members=members, **common)
    return load.Churn(server, uas_port, workdir / f"{key}-{server.name}", users=args.churn_users, **common)


def imc_args(args: argparse.Namespace) -> tuple[str, ...]:
    """imc-actors' extra ``serve`` arguments: ``--workers N``."""
    extra: list[str] = []
    if getattr(args, "workers", 1) > 1:
        extra += ["--workers", str(args.workers)]
    return tuple(extra)


def start_servers(names: list[str], workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    servers: dict[str, object] = {}
    used: list[int] = []
    for name in names:
        port = procs.free_port(avoid=used)
        used.append(port)
        if name == "imc-actors":
            server: ImcServer | KamailioServer = ImcServer(
                workdir, port, extra_args=imc_args(args), pg_url=getattr(args, "imc_pg", None)
            )
        else:
            server = KamailioServer(workdir, port)
        took = server.start()
        log(f"{name}: listening on udp/tcp 127.0.0.1:{port} (started in {took:.1f}s, pid {server.pid})")
        servers[name] = server
    return servers


def cmd_compare(args: argparse.Namespace) -> int:
    for problem in (sipp.available(), KamailioServer.available() if "kamailio" in args.servers else None):
        if problem:
            log(f"bench: {problem}")
            return 2
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imc-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"bench: work directory {workdir}")
    servers = start_servers(args.servers, workdir, args)
    uas_ports = {}
    for name in servers:
        uas_ports[name] = procs.free_port(avoid=[s.port for s in servers.values()] + list(uas_ports.values()))  # type: ignore[attr-defined]
    results: list[load.SearchResult] = []
    try:
        for index, key in enumerate(args.only):
            _, start = SCENARIOS[key]
            order = list(servers) if index % 2 == 0 else list(reversed(servers))
            for name in order:
                server = servers[name]
                scenario = make_scenario(key, server, uas_ports[name], workdir, args)
                log(f"{key} on {name}: setting up")
                try:
                    scenario.setup()
                except load.SetupError as exc:
                    log(f"bench: setup failed: {exc}")
                    results.append(load.SearchResult(scenario.name, name, 0.0, 0, 0, None, []))
                    continue
                scenario.trial(start / 4, duration=1.0, record=False)  # warm-up, not counted
                result = load.find_max_rate(scenario, start=start, max_rate=MAX_RATE,
                                            tolerance=args.tolerance, max_trials=args.max_trials,
                                            confirm=args.confirm, log=log)  # fmt: skip
                results.append(result)
                med = result.median
                if med is not None:
                    log(f"  => {name} {scenario.name}: {med.msgs_per_s:.0f} msgs/s, "
                        f"{med.deliveries_per_s:.0f} deliveries/s (median of {result.confirmed})")  # fmt: skip
            report.dump(results, workdir / "results.json", started=started_at.isoformat())
    finally:
        for server in servers.values():
            server.stop()  # type: ignore[attr-defined]
    mem_block = ""
    if not args.no_memory:
        from . import memory

        mem = memory.run(rooms=args.rooms, members=args.members, workdir=workdir, log=log)
        mem_block = "\n" + memory.render(mem) + "\n"
    elapsed = time.perf_counter() - t0
    versions = [s.version() for s in servers.values()]  # type: ignore[attr-defined]
    settings = (f"trial {args.duration:g}s, delivery lag ≤ {args.max_lag:g}s, bisection to "
                f"{args.tolerance:.0%}, {1 + args.confirm} trials at the rate (medians), "
                f"churn over {args.churn_users} users/rooms, imc-actors with "
                f"{args.workers} worker{'s' if args.workers > 1 else ''} on "
                f"{'PostgreSQL' if args.imc_pg else 'a SQLite file'}")  # fmt: skip
    block = report.render(results, settings=settings, versions=versions, started=started_at,
                          elapsed=elapsed, workdir=workdir, workers=args.workers) + mem_block  # fmt: skip
    log("")
    log(block)
    if args.record:
        report.record(block, key="workers" if args.workers > 1 else "latest")
        log(f"bench: recorded in {report.RESULTS_MD}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from . import memory

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imc-bench-mem-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = memory.run(rooms=args.rooms, members=args.members, workdir=workdir, log=log)
    block = memory.render(result)
    log(block)
    if args.record:
        report.record(block, key="memory")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    """One scenario on one server at one rate (optionally under py-spy): for profiling."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imc-bench-trial-"))
    workdir.mkdir(parents=True, exist_ok=True)
    servers = start_servers([args.server], workdir, args)
    server = servers[args.server]
    uas_port = procs.free_port(avoid=[server.port])  # type: ignore[attr-defined]
    try:
        scenario = make_scenario(args.scenario, server, uas_port, workdir, args)
        scenario.setup()
        scenario.trial(args.rate / 4, duration=1.0, record=False)
        spy = None
        if args.profile:
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            out = Path(args.profile)
            spy = procs.spawn([pyspy, "record", "-p", str(server.pid), "-o", str(out), "-r", "200",  # type: ignore[attr-defined]
                               "-f", {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph"),
                               "-d", str(int(args.duration) + 8), "--nonblocking", "--gil", "--subprocesses"],
                              stderr=workdir / "py-spy.err")  # fmt: skip
            time.sleep(1.0)
        for _ in range(args.repeat):
            trial = scenario.trial(args.rate)
            log(f"{trial.server} {trial.scenario} {args.rate:.0f}/s: {'pass' if trial.passed else 'FAIL'} "
                f"{trial.reason}; {trial.msgs_per_s:.0f} msgs/s {trial.deliveries_per_s:.0f} deliveries/s "
                f"p50 {trial.p50_ms:.0f} ms p99 {trial.p99_ms:.0f} ms cpu {trial.cpu_percent:.0f}% "
                f"(sipp uac {trial.sipp_uac_cpu_percent:.0f}% uas {trial.sipp_uas_cpu_percent:.0f}%) "
                f"machine {trial.machine_busy_percent:.0f}% rss {trial.peak_rss_mib:.0f} MiB "
                f"lag {trial.delivery_lag_s:.2f}s")  # fmt: skip
        if spy is not None:
            spy.wait(60)
            procs.stop(spy)
    finally:
        server.stop()  # type: ignore[attr-defined]
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workdir", help="where SIPp files, logs and databases go (default: a new temp dir)")
        p.add_argument("--keep", action="store_true", help="keep the work directory")
        p.add_argument("--duration", type=float, default=3.0, help="seconds of load per trial (default 3)")
        p.add_argument("--max-lag", dest="max_lag", type=float, default=1.0,
                       help="deliveries may end at most this long after the last answer (default 1 s)")
        p.add_argument("--churn-users", dest="churn_users", type=int, default=3000,
                       help="users (each with a room) the churn cycles through (default 3000)")
        p.add_argument("--workers", type=int, default=1,
                       help="imc-actors: serve --workers N (default 1: one process)")
        p.add_argument("--imc-pg", dest="imc_pg", default=None, metavar="URL",
                       help="imc-actors: a scratch database on this PostgreSQL server (e.g. "
                            "postgresql://postgres@127.0.0.1:5432/test) instead of a fresh "
                            "SQLite file; created for the run and dropped after")

    compare = sub.add_parser("compare", help="the whole comparison (default)")
    common(compare)
    compare.add_argument("--only", default=",".join(SCENARIOS),
                         help=f"scenarios, comma-separated (default {','.join(SCENARIOS)})")
    compare.add_argument("--servers", default="imc-actors,kamailio")
    compare.add_argument("--tolerance", type=float, default=0.15)
    compare.add_argument("--max-trials", dest="max_trials", type=int, default=8)
    compare.add_argument("--confirm", type=int, default=2, help="extra trials at the found rate (default 2)")
    compare.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    compare.add_argument("--no-memory", dest="no_memory", action="store_true")
    compare.add_argument("--rooms", type=int, default=100_000)
    compare.add_argument("--members", type=int, default=10)

    memory = sub.add_parser("memory", help="100,000 rooms x 10 members: RSS per member, restart time")
    common(memory)
    memory.add_argument("--rooms", type=int, default=100_000)
    memory.add_argument("--members", type=int, default=10)
    memory.add_argument("--record", action="store_true")

    trial = sub.add_parser("trial", help="one scenario, one server, one rate (for profiling)")
    common(trial)
    trial.add_argument("--server", choices=["imc-actors", "kamailio"], default="imc-actors")
    trial.add_argument("--scenario", choices=list(SCENARIOS), default="fanout10")
    trial.add_argument("--rate", type=float, required=True)
    trial.add_argument("--repeat", type=int, default=1)
    trial.add_argument("--profile", metavar="OUT.svg|OUT.json|OUT.txt",
                       help="record the server with py-spy (flame graph, speedscope, or raw for bench.profile)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["compare", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        args.only = [s.strip() for s in args.only.split(",") if s.strip()]
        args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        unknown = [s for s in args.only if s not in SCENARIOS]
        if unknown:
            log(f"bench: unknown scenario {unknown[0]!r}")
            return 2
    procs.install_cleanup()
    try:
        return {"compare": cmd_compare, "memory": cmd_memory, "trial": cmd_trial}[args.command](args)
    except ServerError as exc:
        log(f"bench: {exc}")
        return 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
