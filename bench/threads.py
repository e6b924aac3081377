"""What a second thread costs the event loop: the store's writer thread (issue 13 item 7).

``python -m bench.threads [--scenario fanout|churn] [--members 10] [--messages 3000] [--repeat 3]``

Each trial runs :func:`bench.micro.run` (the real server and a minimal client in one process)
in a fresh interpreter, the variants alternating, and reports the median CPU µs per delivery
(the whole process) and the main thread's CPU seconds:

- ``shipped``: as the server runs: an SQLite file's commits on the event loop's thread, the
  WAL flushed by the helper process (:mod:`imc_actors.store.inline`).
- ``thread``: every commit in the store's writer thread (``trio.to_thread.run_sync``), as
  before the inline commits and as PostgreSQL and MariaDB still do.
- ``no-archive``: ``history_max = 0`` (chat commits nothing: no thread is used while chat runs).
- ``no-archive+thread``: the same with a dummy thread that wakes every ``--period`` seconds and
  runs about 20 µs of Python: what the mere activity of a second thread costs.

The database is in ``/dev/shm`` (tmpfs) when there is one, so that an fsync costs next to
nothing and the variants differ mostly in where their work runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

VARIANTS = ("shipped", "thread", "no-archive", "no-archive+thread")


def _writer_thread_only() -> None:
    """Every commit in the store's writer thread (no inline commits)."""
    import imc_actors.store.writer as writer

    writer.inline_repository = lambda backend: None  # type: ignore[assignment]


def _dummy_thread(period: float) -> None:
    def work() -> None:
        while True:
            time.sleep(period)
            sum(range(2000))  # about 20 µs of Python, holding the GIL

    threading.Thread(target=work, name="dummy", daemon=True).start()


def _child(args: argparse.Namespace) -> None:
    import trio

    from bench import micro

    history_max = 0 if args.child.startswith("no-archive") else None
    if args.child == "thread":
        _writer_thread_only()
    if args.child == "no-archive+thread":
        _dummy_thread(args.period)
    main0 = time.thread_time()
    result = trio.run(micro.run, args.members, args.messages, 16, args.scenario, 300.0, history_max)
    result["main_thread_cpu"] = time.thread_time() - main0
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    from bench.micro import load_parser

    parser = load_parser("python -m bench.threads", __doc__)
    parser.add_argument("--period", type=float, default=0.005,
                        help="the dummy thread's sleep between wakes (default 0.005 s)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    tmp = "/dev/shm" if os.path.isdir("/dev/shm") else None
    env = dict(os.environ, TMPDIR=tmp or tempfile.gettempdir())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for round_ in range(args.repeat):
        for variant in variants:
            command = [sys.executable, "-m", "bench.threads", "--child", variant,
                       "--scenario", args.scenario, "--members", str(args.members),
                       "--messages", str(args.messages), "--period", str(args.period)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[variant].append(result)
            print(f"round {round_ + 1} {variant}: {result['us_per_delivery']:.1f} µs/delivery, "
                  f"main thread {result['main_thread_cpu']:.2f} s", flush=True)
    print(f"\n{args.scenario} N={args.members}, {args.messages} requests, medians of {args.repeat}"
          f" (database in {env['TMPDIR']}):")
    for variant in variants:
        rows = results[variant]
        per = statistics.median(r["us_per_delivery"] for r in rows)
        main_cpu = statistics.median(r["main_thread_cpu"] for r in rows)
        print(f"  {variant:18s} {per:7.1f} µs/delivery   main thread {main_cpu:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
