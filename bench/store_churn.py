"""#join/#leave churn through the public API: SQLite write-through against an in-memory store.

Run: ``python -m bench.store_churn [--users 200] [--rooms 20] [--ops 20000] [--repeat 3] [--node NAME]``

``--node`` runs the SQLite side with that node name: every write is then fenced by its room's
lease (issue 13), which is what the fencing costs.

Both runs use the same conference code; only the repository differs: a SQLite file (WAL,
synchronous=FULL, group commit through the single writer thread) or :class:`MemoryRepository`
(keeps nothing, commits instantly). Each run is bounded by ``--ops`` commands. The ratio
SQLite / memory is measured in the same process, run after run; medians are reported.
No network traffic at all (no sockets).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence

import trio

from imc_actors.conference import IncomingMessage, open_conference
from imc_actors.config import Config
from imc_actors.imc.effects import Write
from imc_actors.imc.state import RoomState

DOMAIN = "bench.invalid"


class MemoryRepository:
    """A repository that stores nothing: the baseline without durability."""

    def apply_batch(self, writes: Sequence[Write]) -> None:
        pass

    def ping(self) -> None:
        pass

    def load_rooms(self) -> list[RoomState]:
        return []


async def churn(config: Config, repository: object | None, users: int, rooms: int, ops: int) -> float:
    """Commands per second for ``ops`` #join/#leave commands from ``users`` concurrent users."""
    kwargs = {"repository": repository} if repository is not None else {}
    async with open_conference(config, **kwargs) as conf:
        for r in range(rooms):
            answer = await conf.handle(IncomingMessage(
                f"sip:imc-manager@{DOMAIN}", f"sip:owner{r}@{DOMAIN}", f"#create room{r}".encode()))
            assert answer.code == 200, answer
        per_user = ops // users
        failures = 0

        async def user(u: int) -> None:
            nonlocal failures
            room = f"sip:room{u % rooms}@{DOMAIN}"
            sender = f"sip:user{u}@{DOMAIN}"
            for i in range(per_user):
                body = b"#join" if i % 2 == 0 else b"#leave"
                answer = await conf.handle(IncomingMessage(room, sender, body, None, f"{u}-{i}"))
                if answer.code != 200:
                    failures += 1

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for u in range(users):
                nursery.start_soon(user, u)
        elapsed = time.perf_counter() - started
        assert failures == 0, f"{failures} commands failed"
        return per_user * users / elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--node", default=None, help="node name: fence every write by its lease")
    args = parser.parse_args(argv)
    sqlite_rates, memory_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            config = Config(db_url=f"sqlite:///{tmp}/churn{i}.db", domains=[DOMAIN], node=args.node)
            sqlite_rates.append(trio.run(churn, config, None, args.users, args.rooms, args.ops))
            memory_rates.append(trio.run(churn, config, MemoryRepository(), args.users, args.rooms, args.ops))
    sqlite_median, memory_median = statistics.median(sqlite_rates), statistics.median(memory_rates)
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}")
    print(f"users={args.users} rooms={args.rooms} ops/run={args.ops} runs={args.repeat} node={args.node}")
    print(f"sqlite write-through: {sqlite_median:10.0f} commands/s (runs: {', '.join(f'{r:.0f}' for r in sqlite_rates)})")
    print(f"in-memory:            {memory_median:10.0f} commands/s (runs: {', '.join(f'{r:.0f}' for r in memory_rates)})")
    print(f"ratio sqlite/memory:  {sqlite_median / memory_median:10.2f}")


if __name__ == "__main__":
    main()
