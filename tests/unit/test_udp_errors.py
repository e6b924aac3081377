"""Which error-queue entries count as "unreachable": ICMP port/host unreachable, nothing else."""

from __future__ import annotations

import socket
import struct

import pytest

from imc_actors.transport.udp import IP_RECVERR, IPV6_RECVERR, unreachable_destination

pytestmark = pytest.mark.skipif(IP_RECVERR is None, reason="no IP_RECVERR on this platform")


def entry(errno: int, origin: int, icmp_type: int, code: int, *, v6: bool = False):
    """One control message as ``recvmsg(..., MSG_ERRQUEUE)`` returns it."""
    level, kind = (socket.IPPROTO_IPV6, IPV6_RECVERR) if v6 else (socket.IPPROTO_IP, IP_RECVERR)
    data = struct.pack("=IBBBBII", errno, origin, icmp_type, code, 0, 0, 0) + bytes(16)
    return [(level, kind, data)]


@pytest.mark.parametrize(
    ("ancillary", "address", "expected"),
    [
        (entry(111, 2, 3, 3), ("127.0.0.9", 5060), ("127.0.0.9", 5060)),  # port unreachable
        (entry(113, 2, 3, 1), ("10.0.0.1", 5060), ("10.0.0.1", 5060)),  # host unreachable
        (entry(111, 3, 1, 4, v6=True), ("::1", 5070, 0, 0), ("::1", 5070)),  # ICMPv6 port
        (entry(113, 3, 1, 3, v6=True), ("::1", 5070, 0, 0), ("::1", 5070)),  # ICMPv6 address
        (entry(101, 2, 3, 0), ("10.0.0.1", 5060), None),  # network unreachable: not ours
        (entry(90, 2, 3, 4), ("10.0.0.1", 5060), None),  # fragmentation needed
        (entry(111, 2, 11, 0), ("10.0.0.1", 5060), None),  # time exceeded
        (entry(113, 1, 0, 0), ("10.0.0.1", 5060), None),  # a local error, no ICMP
        ([(socket.IPPROTO_IP, IP_RECVERR, b"\x6f\x00")], ("10.0.0.1", 5060), None),  # short
        ([], ("10.0.0.1", 5060), None),
        (entry(111, 2, 3, 3), None, None),  # no address to report
    ],
)
def test_unreachable_destination(ancillary, address, expected) -> None:
    assert unreachable_destination(ancillary, address) == expected
