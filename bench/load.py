"""The load scenarios, one trial of each, and the search for the highest sustained rate.

Two scenarios, run the same way against either server:

- **fan-out** (:class:`FanOut`): N members REGISTERed with contacts at one SIPp UAS that answers
  200 to everything; member 0 created the room, the others joined it; member 0 then sends chat
  MESSAGEs to the room at a fixed rate, and each is relayed to the N-1 others.
- **churn** (:class:`Churn`): K users, each with a room of its own (created beforehand by that
  room's owner, who stays in it), send ``#join`` then ``#exit`` to it at a fixed rate of pairs.

A trial (:meth:`Scenario.trial`) offers one rate for ``duration`` seconds (so a bounded number
of calls) and passes when every call of the sender got its 2xx (zero failed transactions),
every delivery reached the UAS (exactly the expected number, counted by the UAS) no later
than ``max_lag`` seconds after the last answer, and the answers came at no less than 90% of
the rate asked (SIPp keeps a bounded number of calls open, so a server that answers too late
slows the sender down: that is a failure too).

:func:`find_max_rate` raises the rate by half until a trial fails, bisects (geometric mean) until
the bracket is within ``tolerance``, then repeats the best passing rate ``confirm`` more
times and reports the median of those trials.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from . import procs, sipp


class Server(Protocol):
    name: str
    port: int

    @property
    def pid(self) -> int: ...


class SetupError(RuntimeError):
    """The scenario could not be set up (registration or room commands failed)."""


# ---------------------------------------------------------------------------------- machine
def machine_busy() -> tuple[int, int]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------------- trials
@dataclass
class Trial:
    """One bounded load run at ``offered`` calls/s and what it measured."""

    scenario: str
    server: str
    offered: float  # calls/s asked of SIPp (messages for fan-out, #join/#exit pairs for churn)
    calls: int
    passed: bool
    reason: str
    msgs_per_s: float  # requests answered per second (chat messages, or commands for churn)
    deliveries_per_s: float
    deliveries: int
    expected_deliveries: int
    failed_calls: int
    p50_ms: float
    p99_ms: float
    cpu_percent: float  # the server's processes; 100 = one core
    peak_rss_mib: float  # the server's processes: sum of PSS (shared pages counted once)
    machine_busy_percent: float  # the whole machine (2 cores = 200)
    delivery_lag_s: float  # last delivery after the last answer to the sender
    wall_s: float
    sipp_uac_cpu_percent: float = 0.0  # the load generator: sender
    sipp_uas_cpu_percent: float = 0.0  # the load generator: the members' phones
    started_at: float = field(default_factory=time.time)


class Scenario:
    """What the two scenarios share: a server, a SIPp UAS port, a work directory."""

    name = "scenario"
    sipp_scenario = ""
    commands_per_call = 1

    def __init__(self, server: Server, uas_port: int, workdir: Path, *, duration: float,
                 max_lag: float) -> None:
        self.server = server
        self.uas_port = uas_port
        self.workdir = workdir
        self.duration = duration
        self.max_lag = max_lag
        self.trials: list[Trial] = []
        self._n = 0

    # -- helpers ------------------------------------------------------------------------------
    def _dir(self, what: str) -> Path:
        self._n += 1
        path = self.workdir / f"{self._n:03d}-{what}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def register(self, users: list[str]) -> None:
        work = self._dir("register")
        inf = sipp.write_csv(work / "users.csv", [(u,) for u in users])
        result = sipp.run_uac("register.xml", self.server.port, work, count=len(users), rate=2000,
                              limit=100, inf=inf, keys={"uas_port": str(self.uas_port)},
                              timeout=30 + len(users) / 100, tag="register")  # fmt: skip
        if result.successful != len(users):
            raise SetupError(f"{self.server.name}: {result.successful}/{len(users)} REGISTERs "
                             f"succeeded (see {work})\n{result.errors}")  # fmt: skip

    def commands(self, rows: list[tuple[str, str, str]], *, expected_deliveries: int | None,
                 concurrent: int = 1, what: str = "commands") -> int:
        """Send each ``(user, room, body)`` as a MESSAGE (``concurrent`` at a time, in order
        when 1); every one must get 200. Returns the deliveries the UAS counted."""
        work = self._dir(what)
        inf = sipp.write_csv(work / "commands.csv", rows)
        expected = expected_deliveries if expected_deliveries is not None else 10**9
        uas = sipp.Uas(self.uas_port, work, expected=expected, timeout=60 + len(rows) / 50)
        result = sipp.run_uac("command.xml", self.server.port, work, count=len(rows),
                              rate=2000, limit=concurrent, inf=inf,
                              timeout=30 + len(rows) / 50, tag="command")  # fmt: skip
        got = uas.finish(grace=5.0 if expected_deliveries is not None else 2.0)
        if result.successful != len(rows):
            raise SetupError(f"{self.server.name}: {result.successful}/{len(rows)} commands "
                             f"answered 200 (see {work})\n{result.errors}")  # fmt: skip
        if expected_deliveries is not None and got.successful != expected_deliveries:
            raise SetupError(f"{self.server.name}: the UAS got {got.successful} of "
                             f"{expected_deliveries} notices (see {work})")  # fmt: skip
        return got.successful

    def drain(self, rewake: list[str] | None = None) -> int:
        """Absorb what a failed trial left in flight (server retransmissions to the member
        UAS): run a UAS until 5 s pass without a new MESSAGE (at most 40 s). Both servers
        retransmit an unanswered MESSAGE at least every 4 s (T2), and SIPp writes its counts
        every second, so after 5 quiet seconds nothing from the failed trial is pending.

        ``rewake``: users to REGISTER again while the UAS answers. imc-actors stores the
        notices of a member whose delivery timed out (its 200 lost in the overload) and
        sends it nothing more until it registers again (or its ``pending_retry``, a minute
        later): the REGISTER flushes them now, into this UAS, not into the next trial."""
        work = self._dir("drain")
        uas = sipp.Uas(self.uas_port, work, expected=10**9, timeout=45)
        if rewake:
            try:
                self.register(rewake)
            except SetupError as exc:  # the next trial will show it; a drain never fails
                print(f"bench: re-REGISTER after a failed trial: {exc}", flush=True)
        last, still, deadline = -1, 0.0, time.monotonic() + 40
        while time.monotonic() < deadline:
            time.sleep(0.5)
            count, _ = sipp._stats(uas.stats)
            if count == last:
                still += 0.5
                if still >= 5.0:
                    break
            else:
                last, still = count, 0.0
        return uas.finish(grace=0).successful

    # -- subclass hooks -----------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def expected_per_call(self) -> int:
        raise NotImplementedError

    def uac_args(self) -> dict[str, object]:
        raise NotImplementedError

    def after_failure(self) -> None:
        self.drain()

    # -- one trial ----------------------------------------------------------------------------
    def trial(self, rate: float, *, duration: float | None = None, record: bool = True) -> Trial:
        duration = self.duration if duration is None else duration
        calls = max(10, round(rate * duration))
        expected = calls * self.expected_per_call()
        work = self._dir(f"trial-{rate:.0f}")
        uas = sipp.Uas(self.uas_port, work, expected=expected, timeout=duration + 40, tag="uas")
        busy0 = machine_busy()
        with procs.Sampler(self.server.pid) as sample:
            started = time.perf_counter()
            uac = sipp.run_uac(self.sipp_scenario, self.server.port, work, count=calls,
                               rate=rate, timeout=duration + 20, rtt=True, tag="uac",
                               **self.uac_args())  # type: ignore[arg-type]
            uac_done = time.perf_counter()
            got = uas.finish(grace=self.max_lag + 0.5)
            uas_done = time.perf_counter() if got.returncode == 0 else math.inf
        busy1 = machine_busy()
        lag = max(0.0, uas_done - uac_done) if expected else 0.0
        answered = uac.successful * self.commands_per_call
        # The offered rate SIPp achieved: answers over the span they were measured in.
        span = (uac.rtt_at_ms[-1] - uac.rtt_at_ms[0]) / 1000 if len(uac.rtt_at_ms) > 1 else 0
        achieved = (uac.successful - 1) / span if span > 0 else 0.0
        reasons = []
        if uac.successful != calls or uac.failed:
            reasons.append(f"{calls - uac.successful} of {calls} calls failed")
        if got.successful != expected:
            reasons.append(f"{got.successful}/{expected} deliveries")
        elif lag > self.max_lag:
            reasons.append(f"deliveries {lag:.1f}s behind")
        if not reasons and achieved < 0.9 * rate:
            reasons.append(f"answered only {achieved:.0f}/s of {rate:.0f}/s")
        send_time = max(uac_done - started, 1e-9)
        deliver_time = max((uas_done if math.isfinite(uas_done) else uac_done) - started, 1e-9)
        busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100 * (os.cpu_count() or 1)
        trial = Trial(
            scenario=self.name, server=self.server.name, offered=rate, calls=calls,
            passed=not reasons, reason="; ".join(reasons) or "ok",
            msgs_per_s=answered / send_time if not reasons else 0.0,
            deliveries_per_s=got.successful / deliver_time if not reasons else 0.0,
            deliveries=got.successful, expected_deliveries=expected, failed_calls=calls - uac.successful,
            p50_ms=percentile(uac.rtt_ms, 0.50), p99_ms=percentile(uac.rtt_ms, 0.99),
            cpu_percent=sample.cpu_percent, peak_rss_mib=sample.peak_pss_kib / 1024,
            machine_busy_percent=busy, delivery_lag_s=lag if math.isfinite(lag) else -1.0,
            wall_s=time.perf_counter() - started,
            sipp_uac_cpu_percent=100 * uac.cpu_seconds / max(uac.wall, 1e-9),
            sipp_uas_cpu_percent=100 * got.cpu_seconds / max(got.wall, 1e-9),
        )  # fmt: skip
        if trial.passed:
            # Rates from SIPp's own offered rate: the wall clock above includes SIPp's start.
            trial.msgs_per_s = achieved * self.commands_per_call
            trial.deliveries_per_s = achieved * self.expected_per_call()
        if record:
            self.trials.append(trial)
        if not trial.passed:
            # Even a trial that only fell short of the rate leaves an overloaded server with
            # work queued (absorbed retransmissions, transactions): the drain is its cool-down.
            self.after_failure()
        return trial


class FanOut(Scenario):
    """Room message fan-out to N members."""

    sipp_scenario = "chat.xml"

    def __init__(self, server: Server, uas_port: int, workdir: Path, *, members: int, **kw: float) -> None:
        super().__init__(server, uas_port, workdir, **kw)  # type: ignore[arg-type]
        self.members = members
        self.name = f"fan-out N={members}"
        self.users = [f"f{members}u{i}" for i in range(members)]
        self.room = f"roomf{members}"

    def setup(self) -> None:
        self.register(self.users)
        # #create: one notice to the creator; the k-th member's #join: one to each of k members.
        self.commands([(self.users[0], self.room, "#create")], expected_deliveries=1, what="create")
        rows = [(u, self.room, "#join") for u in self.users[1:]]
        if rows:
            expected = sum(range(2, self.members + 1))
            self.commands(rows, expected_deliveries=expected, what="join")

    def expected_per_call(self) -> int:
        return self.members - 1

    def after_failure(self) -> None:
        self.drain(rewake=self.users)

    def uac_args(self) -> dict[str, object]:
        return {"keys": {"sender": self.users[0], "room": self.room}}


class Churn(Scenario):
    """``#join``/``#exit`` pairs from many users, each in a room of its own."""

    sipp_scenario = "churn.xml"
    commands_per_call = 2

    def __init__(self, server: Server, uas_port: int, workdir: Path, *, users: int, **kw: float) -> None:
        super().__init__(server, uas_port, workdir, **kw)  # type: ignore[arg-type]
        self.name = "churn"
        self.count = users
        self.owners = [f"co{i}" for i in range(users)]
        self.churners = [f"cu{i}" for i in range(users)]
        self.rooms = [f"roomc{i}" for i in range(users)]
        self.per_pair = 0

    def setup(self) -> None:
        self.register(self.owners + self.churners)
        rows = [(o, r, "#create") for o, r in zip(self.owners, self.rooms, strict=True)]
        self.commands(rows, expected_deliveries=len(rows), concurrent=20, what="create")
        self.inf = sipp.write_csv(self.workdir / "churn.csv",
                                  list(zip(self.churners, self.rooms, strict=True)))  # fmt: skip
        # How many notices one pair causes on this server (deterministic: one churner per
        # room): measured with a few pairs at a low rate.
        pairs = 5
        for attempt in range(2):
            work = self._dir("calibrate")
            inf = sipp.write_csv(work / "pairs.csv", list(zip(self.churners, self.rooms, strict=True))[:pairs])
            uas = sipp.Uas(self.uas_port, work, expected=10**6, timeout=30)
            result = sipp.run_uac("churn.xml", self.server.port, work, count=pairs, rate=20,
                                  inf=inf, timeout=20, tag="calibrate")  # fmt: skip
            got = uas.finish(grace=1.5)
            if result.successful == pairs and got.successful % pairs == 0:
                break
            if attempt == 0:  # stray MESSAGEs (a retransmission left over from earlier): again
                self.drain()
                continue
            raise SetupError(f"{self.server.name}: churn calibration: {result.successful}/{pairs} "
                             f"pairs, {got.successful} notices (see {work})\n{result.errors}")  # fmt: skip
        self.per_pair = got.successful // pairs

    def expected_per_call(self) -> int:
        return self.per_pair

    def uac_args(self) -> dict[str, object]:
        return {"inf": self.inf}

    def after_failure(self) -> None:
        # Users stuck in a room (their #exit failed) would fail the next trial's #join:
        # every churner leaves (403 for those not in a room is fine), then drain.
        work = self._dir("reset")
        inf = sipp.write_csv(work / "exits.csv", [(u, r, "#exit") for u, r in zip(self.churners, self.rooms, strict=True)])
        uas = sipp.Uas(self.uas_port, work, expected=10**9, timeout=60)
        sipp.run_uac("command.xml", self.server.port, work, count=self.count, rate=500, limit=20,
                     inf=inf, timeout=30, tag="reset")  # fmt: skip
        uas.finish(grace=0)
        self.drain()


# ---------------------------------------------------------------------------------- search
@dataclass
class SearchResult:
    """The highest sustained rate found, with the medians of the trials at that rate."""

    scenario: str
    server: str
    rate: float  # calls/s offered at the best passing rate
    confirmed: int  # passing trials at that rate
    attempts: int  # trials at that rate
    median: Trial | None
    trials: list[Trial]

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        return data


def median_trial(trials: list[Trial]) -> Trial:
    """A trial whose every number is the median of ``trials`` (all passing, same rate)."""
    base = trials[0]
    values = {}
    for name in ("msgs_per_s", "deliveries_per_s", "p50_ms", "p99_ms", "cpu_percent",
                 "peak_rss_mib", "machine_busy_percent", "delivery_lag_s", "wall_s"):
        values[name] = statistics.median(getattr(t, name) for t in trials)
    return Trial(**{**asdict(base), **values, "reason": f"median of {len(trials)}"})


def find_max_rate(scenario: Scenario, *, start: float, max_rate: float, tolerance: float = 0.1,
                  max_trials: int = 9, confirm: int = 2, growth: float = 1.5, log=print) -> SearchResult:
    """Bisect for the highest rate whose trial passes; confirm it ``confirm`` more times.

    The rate grows by ``growth`` per passing trial until one fails: a failing trial (an
    overload) costs several times a passing one (SIPp waits out its calls, then the drain),
    and a milder overload than doubling fails faster and leaves less to drain.

    The first failing trial of the search is run once more before it counts (one failure can
    be a leftover of the previous overload, or a neighbour's burst on a shared machine).
    Bounded: at most ``max_trials`` search trials (+1 retry) plus ``confirm`` at the best rate;
    when most of those fail, a rate 10% lower (or one in between that passed in the search)
    is confirmed the same way, and once more if that fails too.
    """
    lo: float = 0.0
    hi: float | None = None
    best: Trial | None = None
    first = len(scenario.trials)  # this search's trials start here
    rate = start
    trials = 0
    retries = 1  # the first failure of a search is run again before it bounds the search

    def run(rate: float, *, retry: bool = True) -> Trial:
        nonlocal trials, retries
        trials += 1
        trial = scenario.trial(rate)
        log(f"  {scenario.server.name:10} {scenario.name:14} {rate:8.0f}/s  "
            f"{'pass' if trial.passed else 'FAIL'}  {trial.reason}  "
            f"p50 {trial.p50_ms:.0f} ms p99 {trial.p99_ms:.0f} ms cpu {trial.cpu_percent:.0f}% "
            f"sipp {trial.sipp_uac_cpu_percent:.0f}%+{trial.sipp_uas_cpu_percent:.0f}% "
            f"machine {trial.machine_busy_percent:.0f}%")  # fmt: skip
        if not trial.passed and retry and retries > 0:
            # One failure can be a leftover (the previous overload's retransmissions, a
            # neighbour's burst on this shared machine): try that rate once more.
            retries -= 1
            return run(rate, retry=False)
        return trial

    # Grow until a failure (or the cap), shrink until a pass.
    while trials < max_trials:
        trial = run(rate)
        if trial.passed:
            lo, best = rate, trial
            if hi is not None or rate >= max_rate:
                break
            rate = min(rate * growth, max_rate)
        else:
            hi = rate
            if lo:
                break
            rate = rate / 2
            if rate < 1:
                break
    # Bisect the bracket.
    while hi is not None and lo and hi / lo > 1 + tolerance and trials < max_trials:
        rate = math.sqrt(lo * hi)
        trial = run(rate)
        if trial.passed:
            lo, best = rate, trial
        else:
            hi = rate
    # Confirm: the rate stands when most of its trials pass; else a rate 10 % lower (or one
    # that passed during the search in between) gets the same test, at most three rates.
    passing = sorted({t.offered: t for t in scenario.trials[first:] if t.passed}.items(), reverse=True)
    attempts: list[Trial] = []
    rate = lo
    for _ in range(3):
        if best is None:
            break
        earlier = dict(passing).get(rate)
        attempts = [earlier] if earlier is not None else []
        while len(attempts) < 1 + confirm:
            attempts.append(run(rate, retry=False))
        passed = [t for t in attempts if t.passed]
        if len(passed) * 2 > len(attempts):
            return SearchResult(scenario.name, scenario.server.name, rate, len(passed), len(attempts),
                                median_trial(passed), list(scenario.trials))  # fmt: skip
        # 10 % lower, or a rate that passed in the search if one lies in between.
        rate = max([r for r, _ in passing if r < rate] + [rate * 0.9])
    return SearchResult(scenario.name, scenario.server.name, 0.0, 0, len(attempts), None,
                        list(scenario.trials))  # fmt: skip
