"""Fairness and the logging of exhausted resources: a token bucket per source IP, and a clock
that lets a warning out at most once per interval.

:class:`FloodLimiter` gives each source IP address a budget of new requests (``rate`` a second,
``burst`` at once, in the spirit of Kamailio's pike): a source that spends it is *blocked* for
``block`` seconds, its new requests answered 503 + ``Retry-After`` without a transaction or a
handler, while every other source is served. Addresses inside the ``exempt`` networks (the
server's ``trusted_sources``: proxies carrying many users' traffic) have no budget. The table
of buckets is bounded (``max_sources``): idle buckets are swept out first, then the oldest.

:class:`LogInterval` is the "once per interval" of every warning about a limit reached or a
resource exhausted (transaction table, TCP caps, EMFILE on accept, floods), so an attack does
not also flood the log; :class:`LogBudget` lets a line per event out while events are few (a
failed delivery, a member parked, a TCP framing error) and counts what it leaves out of a flood.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Sequence

__all__ = ["FloodLimiter", "LogBudget", "LogInterval"]


class LogInterval:
    """Says when a rate-limited log line is due: at most once per ``interval`` seconds."""

    __slots__ = ("interval", "_last")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf

    def due(self, now: float) -> bool:
        """True (and the interval restarts) when the last line was ``interval`` seconds ago."""
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False


class LogBudget:
    """At most ``lines`` log lines per ``interval`` seconds (a line per event when events are
    few, a bounded log when a flood makes them many); counts the lines it leaves out."""

    __slots__ = ("lines", "interval", "_start", "_used", "_skipped")

    def __init__(self, lines: int, interval: float = 1.0) -> None:
        self.lines = lines
        self.interval = interval
        self._start = -math.inf
        self._used = 0
        self._skipped = 0

    def take(self, now: float) -> int | None:
        """None when this line is to be left out (it is counted); else the number of lines
        left out since the last one written, to say so in this one."""
        if now - self._start >= self.interval:
            self._start, self._used = now, 0
        if self._used >= self.lines:
            self._skipped += 1
            return None
        self._used += 1
        skipped, self._skipped = self._skipped, 0
        return skipped

    def log(
        self, logger: logging.Logger, level: int, now: float, msg: str, *args: object,
        what: str = "such lines",
    ) -> None:  # fmt: skip
        """``logger.log(level, msg, *args)`` if the budget at ``now`` allows it, the line
        saying how many ``what`` were left out before it."""
        skipped = self.take(now)
        if skipped is None:
            return
        if skipped:
            msg, args = f"{msg} (%d more {what} not logged)", (*args, skipped)
        logger.log(level, msg, *args)


def host_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address ``host`` names (a zone ``%eth0`` left out; an IPv4-mapped IPv6 address,
    ``::ffff:192.0.2.1``, as the IPv4 address it is), or None when it names none."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _Bucket:
    __slots__ = ("tokens", "stamp", "blocked_until")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.blocked_until = -math.inf


class FloodLimiter:
    """A token bucket per source IP (see the module docstring).

    ``rate`` new requests a second and ``burst`` at once per address; an address that runs
    dry is blocked for ``block`` seconds. ``exempt``: CIDRs without a budget. ``max_sources``:
    most buckets kept. ``throttled`` counts the requests refused; ``blocked`` the times a
    source was blocked.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        block: float,
        *,
        exempt: Sequence[str] = (),
        max_sources: int = 65536,
    ) -> None:
        if not rate > 0 or burst < 1 or block < 0 or max_sources < 1:
            raise ValueError(
                f"flood limits must be positive: rate={rate} burst={burst} block={block} "
                f"max_sources={max_sources}"
            )
        self.rate = rate
        self.burst = burst
        self.block = block
        self.max_sources = max_sources
        self._exempt = [ipaddress.ip_network(cidr, strict=False) for cidr in exempt]
        self._exempt_hosts: dict[str, bool] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = -math.inf
        self.throttled = 0
        self.blocked = 0

    def __len__(self) -> int:
        """How many sources have a bucket now."""
        return len(self._buckets)

    def allow(self, host: str, now: float) -> float:
        """Spend one token of ``host``'s budget at ``now``: 0.0 when the request may go on,
        else the seconds its source stays blocked (what ``Retry-After`` says). No checkpoint."""
        bucket = self._buckets.get(host)
        if bucket is None:
            if self._exempt and self._is_exempt(host):
                return 0.0
            if len(self._buckets) >= self.max_sources:
                self._make_room(now)
            bucket = self._buckets[host] = _Bucket(float(self.burst), now)
        tokens = bucket.tokens + (now - bucket.stamp) * self.rate
        bucket.tokens = tokens if tokens < self.burst else float(self.burst)
        bucket.stamp = now
        if now < bucket.blocked_until:
            self.throttled += 1
            return bucket.blocked_until - now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        self.throttled += 1
        self.blocked += 1
        bucket.blocked_until = now + self.block
        return max(self.block, 1.0 / self.rate)

    def spend(self, host: str, tokens: int, now: float) -> None:
        """Take ``tokens`` more from ``host``'s budget for work a request of its caused beyond
        itself (the pages of a long reply): down to ``-burst`` at most, so that its next
        requests are refused until the budget has refilled. No checkpoint."""
        bucket = self._buckets.get(host)
        if bucket is None:
            return  # exempt, or swept out meanwhile
        tokens_now = bucket.tokens + (now - bucket.stamp) * self.rate
        bucket.tokens = max(-float(self.burst), min(tokens_now, float(self.burst)) - tokens)
        bucket.stamp = now

    def blocked_for(self, host: str, now: float) -> float:
        """The seconds ``host`` stays blocked at ``now`` (0.0: it is not); spends nothing."""
        bucket = self._buckets.get(host)
        return bucket.blocked_until - now if bucket is not None and now < bucket.blocked_until else 0.0

    def would_allow(self, host: str, now: float) -> bool:
        """Whether :meth:`allow` would let a request of ``host`` through at ``now``; spends
        and counts nothing (for a caller that refuses elsewhere, so as to count a refusal
        once). No checkpoint."""
        bucket = self._buckets.get(host)
        if bucket is None:
            return True
        if now < bucket.blocked_until:
            return False
        return bucket.tokens + (now - bucket.stamp) * self.rate >= 1.0

    def _is_exempt(self, host: str) -> bool:
        known = self._exempt_hosts.get(host)
        if known is None:
            ip = host_ip(host)
            known = ip is not None and any(ip in network for network in self._exempt)
            if len(self._exempt_hosts) >= self.max_sources:
                self._exempt_hosts.clear()
            self._exempt_hosts[host] = known
        return known

    def _make_room(self, now: float) -> None:
        """The table is full: drop the buckets that are full again and not blocked (their
        sources have been idle for ``burst / rate`` seconds, so a fresh bucket is the same),
        at most once per that time; else the oldest bucket."""
        buckets = self._buckets
        if now >= self._next_sweep:
            rate, burst = self.rate, self.burst
            self._next_sweep = now + burst / rate
            for host in [
                h
                for h, b in buckets.items()
                if b.tokens + (now - b.stamp) * rate >= burst and now >= b.blocked_until
            ]:
                del buckets[host]
        if len(buckets) >= self.max_sources:
            del buckets[next(iter(buckets))]
