"""The MI FIFO: OpenSER's original management interface (spec §10), text in, text out.

A client writes a request into the server's FIFO (``mi_fifo``)::

    :imc_list_members:reply_fifo_name
    sip:chat@example.com
                                        <- empty line: end of request

and reads the answer from ``<reply_dir>/reply_fifo_name`` (an absolute name is used as is)::

    200 OK
    ROOM:: sip:chat@example.com NR_OF_MEMBERS=2
    \tMEMBER:: sip:alice@example.com
    \tMEMBER:: sip:bob@example.com
                                        <- empty line: end of reply

With ``node`` set (issue 13) the commands answer for every room of the cluster
(:func:`~.views.snapshot_of`), ``imc_list_rooms`` adds ``NODE=<node holding it>`` (``-``:
none now), and ``imc_nodes`` lists the nodes::

    200 OK
    NODE:: a LIVE=yes ROOMS=3 AGE=0.412 ADDRESSES=udp:127.0.0.2:5060

The module has two halves, as h11 does: :class:`MiParser` (pure: bytes in, :class:`MiRequest`
and :class:`MiGarbage` events out) with :func:`execute` (pure: request + rooms -> reply text),
and :func:`serve_fifo`, the Trio task that owns the file descriptors.

The FIFO is opened ``O_RDWR | O_NONBLOCK``: the server holds a writer end itself, so the reader
never sees end-of-file when a client closes, and no open ever blocks. A malformed request is
logged (and answered, when it names a reply FIFO) and the reader goes on with the next one.
Replies are written with ``O_WRONLY | O_NONBLOCK``: a reply FIFO that does not exist, has no
reader, or whose reader stops reading is logged and given up, never waited on forever.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from ..store.repository import StoreError
from .views import (
    RoomLookupError,
    RoomSource,
    find_room,
    in_cluster,
    node_rows,
    owner_uri,
    room_node,
    snapshot_of,
)

__all__ = [
    "MiGarbage",
    "MiParser",
    "MiReply",
    "MiRequest",
    "execute",
    "serve_fifo",
]

log = logging.getLogger("imc_actors.control.fifo")

#: The longest line the parser keeps; a longer one makes its request malformed.
MAX_LINE = 8192
#: The most parameter lines one request may have.
MAX_PARAMS = 32


# ---------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class MiRequest:
    """One complete request.

    ``command`` is the name between the first two colons; ``reply_fifo`` the rest of the first
    line (a name under ``reply_dir``, or an absolute path); ``params`` the parameter values in
    order (a ``name::value`` line contributes ``value``, a ``"quoted"`` value is unquoted).
    ``malformed`` is True when a parameter line could not be parsed: the answer is then
    ``400 parse error in command '<command>'``.
    """

    command: str
    reply_fifo: str
    params: tuple[str, ...] = ()
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class MiGarbage:
    """Input that is not a request and names no reply FIFO: it can only be logged.

    ``reason`` says what was wrong; ``line`` is the offending line (shortened).
    """

    reason: str
    line: str


@dataclass(frozen=True, slots=True)
class MiReply:
    """An answer: ``code``/``reason`` for the first line, then one line per node."""

    code: int
    reason: str
    nodes: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """The reply as written to the reply FIFO, ended by an empty line."""
        lines = [f"{self.code} {self.reason}", *self.nodes]
        return ("\n".join(lines) + "\n\n").encode("utf-8", "replace")


def node(name: str, value: str = "", attrs: Iterable[tuple[str, object]] = (), depth: int = 0) -> str:
    """One MI node line: tabs for ``depth``, ``NAME:: value``, then `` ATTR=value`` each."""
    text = "\t" * depth + f"{name}:: {value}"
    return text + "".join(f" {key}={val}" for key, val in attrs)


# ---------------------------------------------------------------------------------- parser
def _command_line(line: str) -> tuple[str, str] | None:
    """``(command, reply_fifo)`` when ``line`` looks like ``:command:reply``, else None."""
    if not line.startswith(":"):
        return None
    command, sep, reply = line[1:].partition(":")
    if not sep or not command.strip() or any(c.isspace() for c in command):
        return None
    return command, reply


def _param_value(line: str) -> str:
    """The value of a parameter line; raises ValueError when it cannot be parsed."""
    if line.startswith("\t"):
        raise ValueError("child nodes are not accepted by these commands")
    _, sep, value = line.partition("::")
    if sep:
        value = value[1:] if value.startswith(" ") else value
    else:
        value = line
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"') or value.endswith('\\"'):
            raise ValueError("unterminated quoted value")
        inner = value[1:-1]
        out: list[str] = []
        chars = iter(inner)
        for char in chars:
            if char == "\\":
                nxt = next(chars, "")
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            elif char == '"':
                raise ValueError("unescaped quote inside a quoted value")
            else:
                out.append(char)
        value = "".join(out)
    return value


class MiParser:
    """Splits the FIFO's byte stream into requests (sans-I/O; feed it whatever was read).

    States: *idle* (waiting for a ``:command:reply`` line; empty lines are skipped),
    *request* (collecting parameter lines until an empty line), *discard* (after garbage:
    skipping lines until an empty line, or until a line that is a valid command line, so a
    client that forgot the empty line loses only its own request).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "idle"
        self._overflow = False  # dropping the rest of an over-long line
        self._command = ""
        self._reply = ""
        self._params: list[str] = []
        self._malformed = False

    def feed(self, data: bytes) -> list[MiRequest | MiGarbage]:
        """Take ``data`` (any chunk of the stream); return the events it completes."""
        events: list[MiRequest | MiGarbage] = []
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_LINE:
                    self._buffer.clear()
                    if not self._overflow:
                        self._overflow = True
                        self._line_too_long(events)
                return events
            raw = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            if self._overflow:  # the tail of a line already reported as too long
                self._overflow = False
                continue
            if len(raw) > MAX_LINE:
                self._line_too_long(events)
                continue
            try:
                line = raw.decode("utf-8").removesuffix("\r")
            except UnicodeDecodeError:
                self._bad_line("not UTF-8", raw.decode("utf-8", "replace"), events)
                continue
            self._line(line, events)

    def _line(self, line: str, events: list[MiRequest | MiGarbage]) -> None:
        if self._state == "request":
            if line == "":
                events.append(
                    MiRequest(self._command, self._reply, tuple(self._params), self._malformed)
                )
                self._state = "idle"
                return
            if len(self._params) >= MAX_PARAMS:
                self._malformed = True
                return
            try:
                self._params.append(_param_value(line))
            except ValueError:
                self._malformed = True
            return
        if line == "":
            self._state = "idle"
            return
        parsed = _command_line(line)
        if parsed is None:
            if self._state == "idle":
                events.append(MiGarbage("a request must start with ':<command>:<reply fifo>'", line[:200]))
                self._state = "discard"
            return
        command, reply = parsed
        if not reply.strip() or "\0" in reply:
            events.append(MiGarbage(f"request for '{command}' names no reply fifo", line[:200]))
            self._state = "discard"
            return
        self._state = "request"
        self._command, self._reply = command, reply.strip()
        self._params, self._malformed = [], False

    def _bad_line(self, why: str, line: str, events: list[MiRequest | MiGarbage]) -> None:
        if self._state == "request":
            self._malformed = True
        elif self._state == "idle":
            events.append(MiGarbage(why, line[:200]))
            self._state = "discard"

    def _line_too_long(self, events: list[MiRequest | MiGarbage]) -> None:
        self._bad_line(f"line longer than {MAX_LINE} bytes", "", events)


# ---------------------------------------------------------------------------------- commands
def _list_rooms(source: RoomSource, params: Sequence[str]) -> MiReply:
    cluster = in_cluster(source)
    nodes = [
        node(
            "ROOM",
            "",
            (("URI", room.uri), ("MEMBERS", len(room.members)), ("OWNER", owner_uri(room)))
            + ((("NODE", room_node(source, room) or "-"),) if cluster else ()),
        )
        for room in source.rooms()
    ]
    return MiReply(200, "OK", tuple(nodes))


def _nodes(source: RoomSource, params: Sequence[str]) -> MiReply:
    """``imc_nodes``: one ``NODE:: name`` line per node of the cluster (none without one)."""
    if params:
        return MiReply(400, "too many params")
    lines = []
    for row in node_rows(source):
        age = row["age"]
        attrs = (
            ("LIVE", "yes" if row["live"] else "no"),
            ("ROOMS", row["rooms"]),
            ("AGE", "-" if age is None else f"{age:.3f}"),
            ("ADDRESSES", ",".join(row["addresses"]) or "-"),  # type: ignore[arg-type]
        )
        lines.append(node("NODE", str(row["name"]), attrs))
    return MiReply(200, "OK", tuple(lines))


def _list_members(source: RoomSource, params: Sequence[str]) -> MiReply:
    if len(params) > 1:
        return MiReply(400, "too many params")
    try:
        room = find_room(source, params[0] if params else None)
    except RoomLookupError as exc:
        if exc.kind == "missing":
            return MiReply(400, "room name not found")
        if exc.kind == "empty":
            return MiReply(400, "empty param")
        return MiReply(404, "no such room")  # as OpenSER: an unparsable URI finds no room
    nodes = [node("ROOM", room.uri, (("NR_OF_MEMBERS", len(room.members)),))]
    nodes += [node("MEMBER", member.uri, depth=1) for member in room.members]
    return MiReply(200, "OK", tuple(nodes))


COMMANDS = {
    "imc_list_rooms": _list_rooms,
    "imc_list_members": _list_members,
    "imc_nodes": _nodes,
}


def execute(source: RoomSource, request: MiRequest) -> MiReply:
    """Answer one request from the rooms' committed state (pure; no I/O, no checkpoint)."""
    handler = COMMANDS.get(request.command)
    if handler is None:
        return MiReply(500, f"command '{request.command}' not available")
    if request.malformed:
        return MiReply(400, f"parse error in command '{request.command}'")
    return handler(source, request.params)


# ---------------------------------------------------------------------------------- Trio
def reply_path(reply_dir: str, name: str) -> str:
    """Where the reply for ``name`` goes: ``name`` itself when absolute, else under ``reply_dir``."""
    return name if os.path.isabs(name) else os.path.join(reply_dir, name)


def _has_reader(path: str) -> bool:
    """True when some process has the FIFO at ``path`` open for reading: opening it to write
    without blocking works then, and fails with ENXIO when nobody reads it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _make_fifo(path: str) -> os.stat_result:
    """Create the FIFO (replacing a stale one, as Kamailio does; one another process reads is
    not stale: startup stops), and its directory when that
    is missing (``/run/imc/`` on a fresh machine; it is left at exit); return its stat."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise OSError(exc.errno, f"mi_fifo: cannot create directory {parent} for {path}: {why}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISFIFO(st.st_mode):
            raise OSError(errno.EEXIST, f"mi_fifo: {path} exists and is not a FIFO")
        if _has_reader(path):  # another server's, running: not stale (it would lose its MI)
            raise OSError(errno.EBUSY, f"mi_fifo: {path} is being read by another process (a running server?)")
        os.unlink(path)
    try:
        os.mkfifo(path, 0o660)
    except OSError as exc:
        raise OSError(exc.errno, f"mi_fifo: cannot create {path}: {exc.strerror}") from None
    return os.lstat(path)


class FifoServer:
    """The MI FIFO reader (see the module docstring); start :meth:`run` with ``nursery.start``.

    ``reply_retries``/``reply_wait``: how often and how long apart to retry opening a reply
    FIFO that has no reader yet (a client may open it just after writing its request);
    ``reply_timeout``: how long a reply may take to write before it is given up;
    ``max_replies``: replies written at once (beyond that the reader waits: backpressure).
    """

    def __init__(
        self,
        source: RoomSource,
        path: str,
        reply_dir: str = "/tmp/",
        *,
        reply_retries: int = 4,
        reply_wait: float = 0.08,
        reply_timeout: float = 5.0,
        max_replies: int = 16,
    ) -> None:
        self.source = source
        self.path = path
        self.reply_dir = reply_dir
        self.reply_retries = reply_retries
        self.reply_wait = reply_wait
        self.reply_timeout = reply_timeout
        self._slots = trio.Semaphore(max_replies)
        self.requests = 0
        self.malformed = 0
        self.replies_failed = 0

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the FIFO, report its path, then serve requests until cancelled.

        Raises OSError (naming ``mi_fifo``) when the FIFO cannot be created, or (naming
        ``reply_dir``) when ``reply_dir`` is not a directory: every relative reply would fail. On
        cancellation replies being written are abandoned and the FIFO is removed.
        """
        if not os.path.isdir(self.reply_dir):
            raise OSError(errno.ENOTDIR, f"reply_dir: {self.reply_dir} is not a directory")
        created = _make_fifo(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            stream = trio.lowlevel.FdStream(fd)
            async with stream, trio.open_nursery() as nursery:
                log.debug("MI FIFO listening on %s", self.path)
                task_status.started(self.path)
                parser = MiParser()
                while True:
                    data = await stream.receive_some(65536)
                    for event in parser.feed(data):
                        await self._dispatch(event, nursery)
        finally:
            try:
                if os.lstat(self.path).st_ino == created.st_ino:
                    os.unlink(self.path)
            except OSError:
                pass

    async def _dispatch(self, event: MiRequest | MiGarbage, nursery: trio.Nursery) -> None:
        if isinstance(event, MiGarbage):
            self.malformed += 1
            log.warning("MI FIFO: malformed request ignored (%s): %r", event.reason, event.line)
            return
        self.requests += 1
        try:
            view = await snapshot_of(self.source) if event.command in COMMANDS else self.source
            reply = execute(view, event)
        except StoreError as exc:
            log.warning("MI FIFO: %s: reading the cluster's rooms failed: %s", event.command, exc)
            reply = MiReply(500, "cluster view unavailable")
        except Exception:  # a bug must not take the reader (and the server) down
            log.exception("MI FIFO: %s failed", event.command)
            reply = MiReply(500, f"command '{event.command}' failed")
        if reply.code >= 400:
            self.malformed += event.malformed
            log.info("MI FIFO: %s -> %d %s", event.command, reply.code, reply.reason)
        await self._slots.acquire()
        nursery.start_soon(self._reply, reply_path(self.reply_dir, event.reply_fifo), reply.encode())

    async def _reply(self, path: str, data: bytes) -> None:
        try:
            if not await self._write_reply(path, data):
                self.replies_failed += 1
        finally:
            self._slots.release()

    async def _write_reply(self, path: str, data: bytes) -> bool:
        """Write ``data`` to the reply FIFO at ``path``; False (logged) when that cannot be done."""
        fd = -1
        for attempt in range(self.reply_retries + 1):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
                break
            except OSError as exc:
                if exc.errno == errno.ENXIO and attempt < self.reply_retries:
                    await trio.sleep(self.reply_wait)  # no reader yet: give the client a moment
                    continue
                why = "has no reader" if exc.errno == errno.ENXIO else exc.strerror
                log.warning("MI FIFO: cannot open reply fifo %s: %s; reply dropped", path, why)
                return False
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                log.warning("MI FIFO: reply target %s is not a FIFO; reply dropped", path)
                os.close(fd)
                return False
        except OSError:
            os.close(fd)
            return False
        stream = trio.lowlevel.FdStream(fd)
        try:
            with trio.move_on_after(self.reply_timeout) as scope:
                await stream.send_all(data)
            if scope.cancelled_caught:
                log.warning("MI FIFO: reader of %s stopped reading; reply abandoned", path)
                return False
            return True
        except (trio.BrokenResourceError, OSError) as exc:
            log.warning("MI FIFO: writing reply to %s failed: %s", path, exc)
            return False
        finally:
            await trio.aclose_forcefully(stream)


async def serve_fifo(
    source: RoomSource,
    path: str,
    reply_dir: str = "/tmp/",
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the MI FIFO at ``path`` for ``source`` until cancelled (``nursery.start`` it)."""
    await FifoServer(source, path, reply_dir).run(task_status=task_status)
