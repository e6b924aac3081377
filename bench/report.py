"""Tables for the terminal and for bench/RESULTS.md, and the machine they were measured on."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path

from .load import SearchResult

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, kernel, Python."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = re.sub(r"\s+", " ", line.split(":", 1)[1].strip())
                    break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as fh:
            mem_gib = int(fh.readline().split()[1]) / 1024 / 1024
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores (shared VM), {mem_gib:.0f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}")  # fmt: skip


def _num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def table(results: Sequence[SearchResult]) -> str:
    """The comparison table (Markdown); the ratio is imc-actors / Kamailio of the same run."""
    by_key = {(r.scenario, r.server): r for r in results}
    lines = [
        "| scenario | server | msgs/s | deliveries/s | ratio imc/kam (fan-out: deliveries/s, churn: msgs/s) | p50 ms | p99 ms | CPU % | peak RSS MiB | trials at rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        med = result.median
        ratio = "–"
        if result.server == "imc-actors":
            other = by_key.get((result.scenario, "kamailio"))
            if other is not None and other.median is not None and med is not None:
                mine, theirs = _rate_for_ratio(med), _rate_for_ratio(other.median)
                ratio = f"{mine / theirs:.2f}×" if theirs else "–"
        if med is None:
            lines.append(f"| {result.scenario} | {result.server} | no passing rate | | {ratio} | | | | | "
                         f"0/{result.attempts} |")  # fmt: skip
            continue
        lines.append(
            f"| {result.scenario} | {result.server} | {_num(med.msgs_per_s)} | {_num(med.deliveries_per_s)} "
            f"| {ratio} | {_num(med.p50_ms)} | {_num(med.p99_ms)} | {_num(med.cpu_percent)} "
            f"| {_num(med.peak_rss_mib, 1)} | {result.confirmed}/{result.attempts} |"
        )
    return "\n".join(lines)


def _rate_for_ratio(trial) -> float:  # type: ignore[no-untyped-def]
    """Deliveries/s for fan-out; commands/s for churn (every churn command must be durable)."""
    return trial.msgs_per_s if trial.scenario == "churn" else trial.deliveries_per_s


#: The targets of one process, and of ``--workers 2`` and more (issue 13 item 7).
TARGETS = {"fan-out N=2": 0.7, "fan-out N=10": 1.0, "fan-out N=50": 1.0, "churn": 1.0}
WORKER_TARGETS = {"fan-out N=2": 1.0, "fan-out N=10": 2.0, "fan-out N=50": 2.0, "churn": 1.0}


def targets(results: Sequence[SearchResult], *, workers: int = 1) -> list[str]:
    """The issue's targets, each with the measured ratio and met / not met."""
    wanted = WORKER_TARGETS if workers > 1 else TARGETS
    by_key = {(r.scenario, r.server): r for r in results}
    out = []
    for scenario, goal in wanted.items():
        mine, theirs = by_key.get((scenario, "imc-actors")), by_key.get((scenario, "kamailio"))
        if mine is None or theirs is None:
            continue
        if mine.median is None or theirs.median is None:
            out.append(f"- {scenario}: target {goal:.1f}×, not measurable (a server had no passing rate)")
            continue
        ratio = _rate_for_ratio(mine.median) / _rate_for_ratio(theirs.median)
        verdict = "met" if ratio >= goal else "NOT met"
        out.append(f"- {scenario}: target ≥ {goal:.1f}× Kamailio, measured {ratio:.2f}× — {verdict}")
    return out


def render(results: Sequence[SearchResult], *, settings: str, versions: Sequence[str],
           started: _dt.datetime, elapsed: float, workdir: Path, workers: int = 1) -> str:
    """The Markdown block for one run."""
    return "\n".join([
        f"### Run of {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {machine()}",
        f"- Servers: {'; '.join(versions)}",
        f"- Settings: {settings}",
        f"- The whole run took {elapsed / 60:.1f} min; raw trials in `{workdir}/results.json`",
        "",
        table(results),
        "",
        "Targets:",
        "",
        *targets(results, workers=workers),
        "",
    ])


def record(block: str, key: str = "latest") -> None:
    """Replace the ``key`` block of bench/RESULTS.md with ``block`` (appended when absent)."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n\n"
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    wrapped = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + wrapped + tail
    else:
        text = text.rstrip("\n") + "\n\n" + wrapped + "\n"
    RESULTS_MD.write_text(text)


def dump(results: Sequence[SearchResult], path: Path, **meta: object) -> None:
    """Every trial of the run, as JSON."""
    data = {"meta": {**meta, "machine": machine()}, "results": [r.as_dict() for r in results]}
    path.write_text(json.dumps(data, indent=1, default=str))
