"""The fan-out's cost to members registered over TCP: this checkout against a baseline commit.

``python -m bench.streams [--baseline COMMIT] [--repeat 3] [--messages 2000]``

Runs ``bench.micro --transport tcp`` (every member but the sender registered over a TCP
connection of its own, its deliveries coming back over it) on this checkout and on an export of
``--baseline`` (with this checkout's ``bench.micro``, so both have the same client), alternating
which goes first, paced at half ``bench.isolation --cost``'s pace (750 chat MESSAGEs/s for N=2,
250 for N=10: a delivery over TCP costs about twice one over UDP here, and a run that falls
behind overflows the member's lane and never completes), ``delivery_window`` 1; prints each run and the medians (CPU µs per delivery, both
sides included). The UDP figures of the same runs are printed too, as a yardstick of the
machine's noise (the change should leave them alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from .isolation import MICRO_RATE, export, log, micro_cost
from .servers import REPO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    old = export(args.baseline, Path(tempfile.mkdtemp(prefix="imc-streams-")))
    cases = [(2, "tcp"), (10, "tcp"), (10, "udp")]
    figures: dict[tuple[str, int, str], list[float]] = {}
    for round_ in range(args.repeat):
        for members, transport in cases:
            order = [("new", REPO), ("old", old)] if round_ % 2 == 0 else [("old", old), ("new", REPO)]
            for name, source in order:
                rate = str(MICRO_RATE[members] / 2)  # the last --rate wins
                us = micro_cost(source, members, 1, args.messages, ("--transport", transport, "--rate", rate))
                figures.setdefault((name, members, transport), []).append(us)
                log(f"  micro {name} N={members} {transport}: {us:.1f} µs/delivery")
    log(f"\nfan-out cost, CPU µs per delivery (bench.micro, medians of {args.repeat}):")
    log(f"| case | {args.baseline} | this checkout | change |\n|---|---:|---:|---:|")
    for members, transport in cases:
        a = statistics.median(figures[("old", members, transport)])
        b = statistics.median(figures[("new", members, transport)])
        log(f"| N={members}, members over {transport.upper()} | {a:.1f} | {b:.1f} | {100 * (b - a) / a:+.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
