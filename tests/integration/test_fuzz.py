"""A short seeded pass of the fuzz harness (``python -m bench.fuzz``): parser and the whole
request path (SipCore, registrar, conference on SQLite). The long runs are in bench/RESULTS.md."""

from __future__ import annotations

from bench.fuzz import fuzz, random_inputs


async def test_three_thousand_seeded_inputs_crash_nothing(tmp_path) -> None:
    # 3,000 since #history, #topic and #info joined the command words: they thin out the
    # #create/#join/chat sequences, and the first 2,000 inputs of seed 0 no longer hold an
    # accepted chat line (the 202 below).
    report = await fuzz(3000, seed_value=0, out=tmp_path)
    text = "\n".join(report.lines())
    assert report.inputs == 3000
    assert report.crashes == 0, text
    assert list(tmp_path.iterdir()) == []  # no crashing input was written
    # The inputs reach every layer: refused and answered, dropped, routed to rooms and the
    # registrar, with room state made and kept.
    assert report.outcomes["refused, answered"] > 200, text
    assert report.outcomes["refused, dropped"] > 20, text
    assert report.outcomes["MESSAGE routed"] > 300, text
    assert report.outcomes["REGISTER routed"] > 100, text
    for code in (200, 202, 400, 403, 404, 405, 414):
        assert report.answers[code] > 0, (code, text)
    assert report.rooms > 0 and report.members > report.rooms, text


async def test_the_hypothesis_engine_feeds_the_same_path(tmp_path) -> None:
    report = await fuzz(200, seed_value=1, engine="hypothesis", out=tmp_path)
    assert report.inputs >= 200
    assert report.crashes == 0, "\n".join(report.lines())
    assert report.outcomes["MESSAGE routed"] > 0


def test_an_input_is_made_again_from_its_seed_and_index() -> None:
    """``--replay``: input k of a seed does not depend on the inputs before it."""
    run = dict(random_inputs(7, 0, 50))
    assert dict(random_inputs(7, 42, 1)) == {42: run[42]}
    assert dict(random_inputs(8, 42, 1)) != {42: run[42]}
