"""What fleet rollout's arguments mean (fleet/plan.py): waves, thresholds, durations, selectors."""

from __future__ import annotations

import pytest

from edge_agent.fleet.plan import (allowed_errors, needed, parse_duration, parse_selectors, parse_threshold,
                                   parse_waves, plan_waves)

UNITS = [f"u{i:03d}" for i in range(50)]


@pytest.mark.parametrize("spec, sizes", [
    ("1,10%,50%,100%", [1, 4, 20, 25]),
    ("10%,50%,100%", [5, 20, 25]),
    ("100%", [50]),
    ("3,3,100%", [3, 1, 46]),      # a wave never stands still: the second 3 still takes one more unit
    ("60", [50]),                  # more than there are: all of them, in one wave
    ("1%,2%", [1, 49]),            # the last wave takes whatever is left
])
def test_waves_are_cumulative_and_cover_every_unit_once(spec, sizes):
    waves = plan_waves(reversed(UNITS), parse_waves(spec))
    assert [len(w) for w in waves] == sizes
    assert sum(waves, []) == UNITS  # ordered by device id, each once


def test_a_plan_of_few_units_has_no_empty_wave():
    assert plan_waves(["b", "a"], parse_waves("1,10%,50%,100%")) == [["a"], ["b"]]
    assert plan_waves([], parse_waves("100%")) == []


@pytest.mark.parametrize("bad", ["", "0", "0%", "101%", "-1", "ten", "5,,6", "1.5"])
def test_bad_waves_are_refused(bad):
    with pytest.raises(ValueError, match="wave"):
        parse_waves(bad)


def test_thresholds():
    assert needed(parse_threshold("100%", "s"), 9) == 9
    assert needed(parse_threshold("90%", "s"), 5) == 5  # a share rounds up
    assert needed(parse_threshold("50%", "s"), 0) == 0
    assert needed(parse_threshold("3", "s"), 2) == 2
    assert allowed_errors(parse_threshold("0", "e"), 50) == 0
    assert allowed_errors(parse_threshold("10%", "e"), 50) == 5
    for bad in ("x", "-1", "120%", "1.5"):
        with pytest.raises(ValueError, match="--error-threshold"):
            parse_threshold(bad, "--error-threshold")


def test_durations_and_selectors():
    assert [parse_duration(t) for t in ("30m", "90s", "1.5h", "500ms", "12")] == [1800, 90, 5400, 0.5, 12]
    for bad in ("0s", "soon", "-3m", "5d"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert parse_selectors(["site=lab", "ring=a"]) == {"site": "lab", "ring": "a"}
    for bad in (["site"], ["si te=x"], ["site=a b"], ["=x"]):
        with pytest.raises(ValueError):
            parse_selectors(bad)
