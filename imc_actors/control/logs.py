"""Logging set-up: ``--log-level`` and ``--log-format text|json``.

``json`` writes one JSON object per line (``json.dumps``, so quotes, backslashes and newlines
in a message stay valid JSON): ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``,
then ``room`` and ``call_id`` when the event has them, ``exc`` with the traceback when there is
one, and any other ``extra={...}`` fields the call passed. An event "has" a room or Call-ID when
the call passed ``extra={"room": ..., "call_id": ...}``, or when its message carries them as
``room=<uri>`` / ``call_id=<id>`` (the convention the actors' log lines follow).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonFormatter", "TEXT_FORMAT", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_FIELD = re.compile(r"\b(room|call_id)=(\S+)")
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        found = {key: value.rstrip(":,;") for key, value in _FIELD.findall(message)}
        for key in ("room", "call_id"):
            value = getattr(record, key, None) or found.get(key)
            if value:
                entry[key] = str(value)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=repr)


def setup_logging(level: str = "info", log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
