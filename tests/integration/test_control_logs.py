"""``--log-format json``: one valid JSON object per line, with room and Call-ID when known."""

from __future__ import annotations

import io
import json
import logging

from imc_actors.control.logs import JsonFormatter, setup_logging


def record(message: str, *args, exc: BaseException | None = None, **extra) -> dict:
    formatter = JsonFormatter()
    log = logging.LogRecord("imc_actors.test", logging.WARNING, __file__, 1, message, args, None)
    if exc is not None:
        log.exc_info = (type(exc), exc, exc.__traceback__)
    for key, value in extra.items():
        setattr(log, key, value)
    line = formatter.format(log)
    assert "\n" not in line
    return json.loads(line)


def test_quotes_backslashes_and_newlines_stay_valid_json():
    entry = record('said "hi" \\ then\nleft %s', '"quoted"')
    assert entry["message"] == 'said "hi" \\ then\nleft "quoted"'
    assert entry["level"] == "WARNING" and entry["logger"] == "imc_actors.test"
    assert entry["time"].endswith("+00:00")


def test_room_and_call_id_from_the_message_or_extra():
    entry = record("room=%s commit failed call_id=%s: %s", "sip:chat@x", "abc@host", "disk full")
    assert entry["room"] == "sip:chat@x" and entry["call_id"] == "abc@host"
    entry = record("delivery failed", room="sip:r@x", call_id="c1", peer=("1.2.3.4", 5060))
    assert (entry["room"], entry["call_id"], entry["peer"]) == ("sip:r@x", "c1", "('1.2.3.4', 5060)")
    assert "room" not in record("nothing to see")


def test_exceptions_are_one_field():
    try:
        raise ValueError('bad "value"')
    except ValueError as exc:
        entry = record("crashed", exc=exc)
    assert entry["exc"].startswith("Traceback") and 'ValueError: bad "value"' in entry["exc"]


def test_setup_logging_json_and_text():
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    stream = io.StringIO()
    try:
        setup_logging("debug", "json", stream)
        logging.getLogger("imc_actors.x").info('a "quoted" %s', "word")
        setup_logging("info", "text", stream)
        logging.getLogger("imc_actors.x").debug("hidden")
        logging.getLogger("imc_actors.x").info("plain")
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    first, second = stream.getvalue().splitlines()
    assert json.loads(first)["message"] == 'a "quoted" word'
    assert second.endswith(" INFO imc_actors.x: plain")
