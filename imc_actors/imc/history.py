"""The archive as users see it: replaying lines to a joiner, and ``#history`` pages (pure).

The room actor reads the newest lines of a room's archive (:class:`HistoryLine` records, oldest
first) when an :class:`~imc_actors.imc.effects.Outcome` asks for it with a
:class:`~imc_actors.imc.effects.HistoryQuery`, and turns them into notices here.

- **Replay** (a member who just joined): one MESSAGE per line, exactly as it was relayed
  (``[user]: body``, the line's own Content-Type), with ``Notice.date`` set to the line's time
  so it goes out with a ``Date:`` header. Kind ``relay``; not stored for an unreachable member
  (``keep`` False): the member asks ``#history`` when back.
- **Pages** (``#history``): ``History:`` then ``<time UTC> [user]: body`` per line, packed
  into pages of at most :data:`PAGE_BYTES` bytes of body (so a page fits one UDP datagram with
  its headers); a single line longer than that is a page of its own (as large as the relayed
  line was). Several pages are headed ``History (1/3):`` and so on.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

from . import texts
from .effects import HistoryQuery, Notice

__all__ = ["PAGE_BYTES", "HistoryLine", "history_notices", "pages", "replay"]

#: Most bytes of body per ``#history`` page (headers add about 500: under 1300 in all, so a
#: page goes over UDP unfragmented; spec §6 sends larger messages over TCP when it can).
PAGE_BYTES = 800


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One archived chat line as read back.

    ``seq`` numbers the room's lines from 1 (per room, never reused while the room lives);
    ``sender`` the member URI; ``time`` epoch seconds; ``content_type`` as it came (None: none);
    ``body`` the bytes as sent.
    """

    seq: int
    sender: str
    time: float
    content_type: str | None
    body: bytes

    @property
    def text(self) -> str:
        """``body`` as text: in the ``charset`` its Content-Type names (``text/plain;
        charset=iso-8859-1``), UTF-8 when it names none or one Python does not know;
        undecodable bytes replaced."""
        return self.body.decode(_charset(self.content_type), "replace")


def _charset(content_type: str | None) -> str:
    """The codec of ``content_type``'s ``charset`` parameter, or ``utf-8``."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                break
    return "utf-8"


def replay(query: HistoryQuery, lines: Sequence[HistoryLine], room_uri: str) -> list[Notice]:
    """One relay-like notice per line for ``query.to``, each dated with its line's time."""
    return [
        Notice(
            query.to, b"[" + texts.user_part(line.sender).encode() + b"]: " + line.body,
            room_uri, "relay", line.content_type, date=line.time,
        )  # fmt: skip
        for line in lines
    ]


def pages(lines: Sequence[HistoryLine]) -> list[bytes]:
    """The ``#history`` pages for ``lines`` (oldest first), or the one "empty" notice."""
    if not lines:
        return [texts.HISTORY_EMPTY.encode()]
    shown = [texts.history_line(line.sender, line.time, line.text) for line in lines]
    return [page.encode() for page in texts.paged("History", shown, PAGE_BYTES)]


def history_notices(
    query: HistoryQuery, lines: Sequence[HistoryLine], room_uri: str
) -> list[Notice]:
    """What ``query`` sends once its lines are read: the replay, or the ``#history`` pages."""
    if query.replay:
        return replay(query, lines, room_uri)
    return [Notice(query.to, page, room_uri, kind="reply") for page in pages(lines)]
