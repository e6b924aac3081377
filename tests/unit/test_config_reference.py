"""README's configuration table, ``serve --help`` and :class:`Config` agree: every field has a
row, every row's flags are the flags ``serve`` has, and both show Config's defaults.

A new Config field fails here until README's table has a row for it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from imc_actors.cli import build_parser
from imc_actors.config import Config, default_text

README = Path(__file__).resolve().parents[2] / "README.md"
CELL_CODE = re.compile(r"`([^`]*)`")


def config_table() -> list[tuple[list[str], list[str], str]]:
    """``(fields, flags, default)`` for each row of README's configuration table."""
    text = README.read_text()
    section = text[text.index("\n## Configuration\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        fields = CELL_CODE.findall(cells[0])
        flags = re.findall(r"--[a-z-]+", cells[1])
        rows.append((fields, flags, cells[2].replace("`", "")))
    return rows


def serve_actions() -> dict[str, argparse.Action]:
    """Config field -> its ``serve`` flag's action."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["serve"]._actions if a.dest in Config.names()}


def serve_flags() -> dict[str, str]:
    """Config field -> its ``serve`` flag."""
    return {name: action.option_strings[0] for name, action in serve_actions().items()}


def test_every_field_has_exactly_one_row():
    documented = [name for fields, _, _ in config_table() for name in fields]
    assert sorted(documented) == sorted(Config.names()), (
        f"missing from README: {sorted(set(Config.names()) - set(documented))}; "
        f"not Config fields or listed twice: {sorted(n for n in documented if documented.count(n) > 1 or n not in Config.names())}"
    )


@pytest.mark.parametrize("row", config_table(), ids=lambda row: ",".join(row[0]))
def test_each_row_shows_the_flags_and_the_default(row):
    fields, flags, default = row
    have = serve_flags()
    assert flags == [have[name] for name in fields if name in have], (fields, flags)
    assert default == ", ".join(default_text(name) for name in fields)


@pytest.mark.parametrize("name", sorted(serve_flags()))
def test_each_serve_flag_shows_the_config_default(name):
    action = serve_actions()[name]
    shown = (action.help or "") % {}  # as argparse prints it
    assert shown.endswith(f"(default: {default_text(name)})"), (action.option_strings, shown)


def test_defaults_read_as_documented():
    assert default_text("listen") == "udp:127.0.0.1:5060, tcp:127.0.0.1:5060"
    assert default_text("outbound_proxy") == "none"
    assert default_text("extra_hdrs") == "none"
    assert default_text("create_on_join") == "true"
    assert default_text("restart_window") == "60.0"
    assert default_text("domains") == "the listen hosts"
