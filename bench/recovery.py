"""Recovery after overload (issue 15 item 9): pass, overload, then the passing rate again.

``python -m bench.recovery [--scenario fanout2] --rate R [--overload 1.5] [--gap 10] [--after 2]``

One imc-actors server (``python -m imc_actors serve``, as in ``python -m bench``, plus
``--rpc-listen`` for its ``/metrics``) and the same SIPp scenarios and pass/fail bar as
``python -m bench``. The sequence: a trial at ``R``, a trial at ``overload`` × R, then after
``gap`` seconds (at most 10 in the issue) ``after`` trials at R again. Unlike the search of
``python -m bench`` there is no drain after a failed trial: during the gap a SIPp UAS keeps
answering on the members' port (their phones stay up, as real ones would), and nothing else
waits. Before each trial the server's ``/metrics`` (transactions, deliveries in flight and
queued, stored notices and parked members) are printed, so what an overload leaves behind is
visible.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import load, procs, sipp
from .__main__ import SCENARIOS, make_scenario
from .servers import ImcServer

#: /metrics series shown before each trial (name -> short label; labelled series are summed).
SHOWN = {
    "imc_sip_server_transactions": "server tx",
    "imc_sip_client_transactions": "client tx",
    "imc_sip_transaction_bytes": "tx bytes",
    "imc_deliveries_in_flight": "in flight",
    "imc_delivery_queue_depth": "queued",
    "imc_pending_notices": "stored",
    "imc_pending_members": "parked",
    "imc_sip_client_timeouts_total": "timeouts",
    "imc_sip_client_unreachable_total": "unreachable",
    "imc_sip_retransmissions_absorbed_total": "retrans absorbed",
}


def log(*args: object) -> None:
    print(*args, flush=True)


def metrics(port: int) -> str:
    """The figures of :data:`SHOWN` from the server's ``/metrics``, as one line."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError as exc:
        return f"(no /metrics: {exc})"
    found = []
    for name, label in SHOWN.items():
        values = re.findall(rf"(?m)^{name}(?:{{[^}}]*}})? ([-+\deE.]+)$", text)
        if values:
            found.append(f"{label} {sum(float(v) for v in values):.0f}")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[s for s in SCENARIOS if s != "churn"], default="fanout2")
    parser.add_argument("--rate", type=float, required=True, help="a rate that passes (calls/s)")
    parser.add_argument("--overload", type=float, default=1.5, help="the overload, × rate (default 1.5)")
    parser.add_argument("--gap", type=float, default=10.0, help="seconds after the overload (default 10)")
    parser.add_argument("--after", type=int, default=2, help="trials at the rate after it (default 2)")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--max-lag", dest="max_lag", type=float, default=1.0)
    parser.add_argument("--churn-users", dest="churn_users", type=int, default=3000)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    if problem := sipp.available():
        log(f"bench: {problem}")
        return 2
    procs.install_cleanup()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="imc-recovery-"))
    port = procs.free_port()
    http = procs.free_port(avoid=[port])
    uas_port = procs.free_port(avoid=[port, http])
    server = ImcServer(workdir, port, extra_args=("--rpc-listen", f"127.0.0.1:{http}"))
    try:
        server.start()
        scenario = make_scenario(args.scenario, server, uas_port, workdir, args)
        scenario.after_failure = lambda: None  # type: ignore[method-assign]  # no drain: the gap only
        scenario.setup()
        scenario.trial(args.rate / 4, duration=1.0, record=False)
        plan = [("before", args.rate), ("overload", args.rate * args.overload)]
        plan += [(f"after {i + 1}", args.rate) for i in range(args.after)]
        for name, rate in plan:
            log(f"  metrics before '{name}': {metrics(http)}")
            trial = scenario.trial(rate)
            log(f"{name:9} {rate:7.0f}/s: {'pass' if trial.passed else 'FAIL'} {trial.reason}; "
                f"p50 {trial.p50_ms:.0f} ms p99 {trial.p99_ms:.0f} ms cpu {trial.cpu_percent:.0f}% "
                f"machine {trial.machine_busy_percent:.0f}%")  # fmt: skip
            if name == "overload":
                # the phones stay up: a UAS answers on the members' port during the gap
                uas = sipp.Uas(uas_port, workdir / "gap", expected=10**9, timeout=args.gap + 5, tag="gap")
                time.sleep(args.gap)
                got = uas.finish(grace=0)
                log(f"  gap of {args.gap:g} s: the members got {got.successful} late MESSAGEs")
        log(f"  metrics at the end: {metrics(http)}")
    except load.SetupError as exc:
        log(f"bench: setup failed: {exc}")
        return 1
    finally:
        server.stop()
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
