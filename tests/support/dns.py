"""A few lines of DNS over UDP (RFC 1035, RFC 2782): ask one server for SRV or A records.

Enough for the tests to read what a local dnsmasq serves, without a resolver library; and to
give a server process a name server of the test's own (``resolv_wrapper``)."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

TYPE_A, TYPE_SRV = 1, 33


@dataclass(frozen=True, slots=True)
class SrvTarget:
    """One SRV record's data (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


def _query(name: str, qtype: int) -> tuple[int, bytes]:
    ident = secrets.randbits(16)
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # recursion desired, 1 question
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return ident, header + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _name(data: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at ``offset``; the offset after it."""
    parts: list[str] = []
    end = None
    for _ in range(128):  # bounded: a pointer loop cannot hang the test
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length == 0:
            return ".".join(parts), end if end is not None else offset + 1
        parts.append(data[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    raise ValueError("DNS name too long or looping")


def _answers(data: bytes, ident: int, qtype: int) -> list[bytes | tuple[bytes, int]]:
    got, flags, questions, answers = struct.unpack("!HHHH", data[:8])
    if got != ident or not flags & 0x8000:
        raise ValueError("not the answer to our query")
    if flags & 0x000F:
        raise LookupError(f"DNS error, rcode {flags & 0x000F}")
    offset = 12
    for _ in range(questions):
        offset = _name(data, offset)[1] + 4
    found: list[bytes | tuple[bytes, int]] = []
    for _ in range(answers):
        offset = _name(data, offset)[1]
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        if rtype == qtype:
            found.append((data, offset) if qtype == TYPE_SRV else data[offset : offset + length])
        offset += length
    return found


async def _ask(server: tuple[str, int], name: str, qtype: int) -> list[bytes | tuple[bytes, int]]:
    ident, packet = _query(name, qtype)
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(server)
        for _ in range(5):  # UDP: ask again after a second without an answer
            await sock.send(packet)
            with trio.move_on_after(1):
                while True:
                    data = await sock.recv(4096)
                    try:
                        return _answers(data, ident, qtype)
                    except ValueError:
                        continue  # a stray datagram: keep waiting for ours
    raise TimeoutError(f"no DNS answer from {server} for {name}")


async def resolve_srv(server: tuple[str, int], name: str) -> list[SrvTarget]:
    """The SRV records of ``name`` (e.g. ``_sip._udp.example.org``) at ``server``."""
    records = []
    for data, offset in await _ask(server, name, TYPE_SRV):  # type: ignore[misc]
        priority, weight, port = struct.unpack("!HHH", data[offset : offset + 6])
        records.append(SrvTarget(priority, weight, port, _name(data, offset + 6)[0]))
    return records


async def resolve_a(server: tuple[str, int], name: str) -> list[str]:
    """The IPv4 addresses of ``name`` at ``server``."""
    return [socket.inet_ntoa(rdata) for rdata in await _ask(server, name, TYPE_A)]  # type: ignore[arg-type]


def a_answer(query: bytes, addresses: dict[str, str]) -> bytes | None:
    """The response to ``query`` of a name server that knows ``addresses`` (name -> IPv4) and
    nothing else: the A record of a name it knows, an empty NOERROR answer to any other
    question about it (AAAA), NXDOMAIN for other names; None for what is no query."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    ident, _flags, questions = struct.unpack("!HHH", query[:6])
    if questions != 1:
        return None
    name, end = _name(query, 12)
    qtype = struct.unpack("!H", query[end : end + 2])[0]
    question = query[12 : end + 4]
    known = name.lower() in addresses
    answers = b""
    if known and qtype == TYPE_A:
        address = socket.inet_aton(addresses[name.lower()])
        answers = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, 1, 0, 4) + address  # TTL 0
    flags = 0x8180 if known else 0x8183  # response, recursion desired/available; NXDOMAIN
    count = 1 if answers else 0
    return struct.pack("!HHHHHH", ident, flags, 1, count, 0, 0) + question + answers


@functools.cache
def can_unshare_resolv() -> bool:
    """Root, ``unshare`` and a bind mount over /etc/resolv.conf in a new mount namespace
    (what :func:`resolv_wrapper` does; a container without CAP_SYS_ADMIN refuses the mount)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as probe:
        probe.write("nameserver 127.0.0.1\n")
        probe.flush()
        done = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount --bind {probe.name} /etc/resolv.conf"],
            capture_output=True, check=False,
        )  # fmt: skip
    return done.returncode == 0


def resolv_wrapper(resolv: Path) -> tuple[str, ...]:
    """A ``serve_process`` wrapper: the server runs in a mount namespace of its own whose
    /etc/resolv.conf is ``resolv``."""
    return ("unshare", "-m", "sh", "-c", f'mount --bind {resolv} /etc/resolv.conf && exec "$@"', "sh")


#: Skips a test whose server needs a resolv.conf of its own where that cannot be had.
needs_own_resolv = pytest.mark.skipif(
    not can_unshare_resolv(), reason="needs root and unshare -m (a resolv.conf of the server's own)"
)
