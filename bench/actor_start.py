"""Eager or lazy room actors after a restart: memory and time for N rooms x M members.

Run: ``python -m bench.actor_start [--rooms 100000] [--members 10]``

Builds the recovered rooms in memory (what ``Repository.load_rooms`` returns), registers them
with a real :class:`~imc_actors.actors.supervisor.Supervisor` (lazy: no task until a room's
first command, what the server does), then starts every actor (eager) and measures again.
RSS comes from /proc/self/status; times are wall clock on this machine. No sockets, no files.
"""

from __future__ import annotations

import argparse
import gc
import platform
import time

import trio
import trio.testing

from imc_actors.actors.delivery import Delivery, DeliveryResult
from imc_actors.actors.supervisor import Supervisor
from imc_actors.imc.effects import OWNER
from imc_actors.imc.room import Policy
from imc_actors.imc.state import Member, RoomState


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class _NoStore:
    async def commit(self, writes) -> None:  # pragma: no cover - nothing is written here
        pass


async def _discard(notice, in_reply_to) -> DeliveryResult:
    return DeliveryResult(200, "OK")


async def measure(rooms: int, members: int) -> None:
    gc.collect()
    base = rss_mib()
    started = time.perf_counter()
    states = [
        RoomState(f"room{r}", "bench.invalid", 0, tuple(
            Member(f"sip:user{r}x{m}@bench.invalid", OWNER if m == 0 else 0) for m in range(members)))
        for r in range(rooms)
    ]
    built = time.perf_counter() - started
    after_states = rss_mib()
    delivery = Delivery(_discard)
    supervisor = Supervisor(store=_NoStore(), delivery=delivery, policy=Policy())
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        started = time.perf_counter()
        supervisor.load(states)
        lazy_s = time.perf_counter() - started
        gc.collect()
        lazy = rss_mib()
        started = time.perf_counter()
        for handle in supervisor.handles():
            supervisor._ensure_running(handle)  # what eager start would do at startup
        await trio.testing.wait_all_tasks_blocked()
        eager_s = time.perf_counter() - started
        gc.collect()
        eager = rss_mib()
        nursery.cancel_scope.cancel()
    total = rooms * members
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    print(f"rooms={rooms} members/room={members} ({total} members)")
    print(f"room states (as loaded):   {after_states - base:8.1f} MiB  {1024 * 1024 * (after_states - base) / total:6.0f} B/member  built in {built:.2f} s")
    print(f"lazy registry (server):    {lazy - after_states:8.1f} MiB more  registered in {lazy_s:.2f} s")
    print(f"eager: every actor started: {eager - lazy:8.1f} MiB more  started in {eager_s:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=10)
    args = parser.parse_args()
    trio.run(measure, args.rooms, args.members)


if __name__ == "__main__":
    main()
