"""``LogBudget``: a line per event while events are few, a bounded log with a count in a flood
(delivery failures, members parked, TCP framing errors, requests that cannot be sent)."""

from __future__ import annotations

import logging

import pytest

from imc_actors.transport.limits import LogBudget


def test_a_flood_gets_its_budget_of_lines_then_a_count_in_the_next_one(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("imc_actors.test_budget")
    budget = LogBudget(3, interval=1.0)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(10):
            budget.log(logger, logging.INFO, 100.0, "event %d", i, what="events")
        budget.log(logger, logging.INFO, 100.9, "still the same second")
        budget.log(logger, logging.WARNING, 101.0, "a second later: %s", "x", what="events")
        budget.log(logger, logging.INFO, 101.1, "then nothing was left out")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "event 0"), ("INFO", "event 1"), ("INFO", "event 2"),
        ("WARNING", "a second later: x (8 more events not logged)"),
        ("INFO", "then nothing was left out"),
    ]  # fmt: skip
