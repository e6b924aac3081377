"""Summarise a py-spy raw profile (``python -m bench trial ... --profile out.txt``).

``python -m bench.profile out.txt [--top 30] [--filter imc_actors]`` prints the functions with
the most samples on top of the stack (own time) and anywhere in it (total time).
"""

from __future__ import annotations

import argparse
import collections
import sys


def summarise(path: str, top: int = 30, needle: str = "") -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = [f for f in stack.split(";") if f]
            for frame in set(frames):
                total[frame] += n
            if frames:
                own[frames[-1]] += n
    out = [f"{samples} samples"]
    for title, counter in (("own", own), ("total", total)):
        out.append(f"\n-- {title} --")
        shown = 0
        for frame, n in counter.most_common():
            if needle and needle not in frame:
                continue
            out.append(f"{100 * n / max(1, samples):5.1f}%  {frame[:160]}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--filter", default="")
    args = parser.parse_args(argv)
    print(summarise(args.path, args.top, args.filter))
    return 0


if __name__ == "__main__":
    sys.exit(main())
