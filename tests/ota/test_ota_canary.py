"""The canary judge's rules, on a fake clock (no daemon needed)."""

import pytest

from edge_agent.config import CanaryConfig
from edge_agent.ota.canary import CanaryWindow


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def window(**cfg):
    base = dict(share=0.5, min_requests=20, max_seconds=60, max_error_rate_increase=0.02, max_p99_ratio=2.0)
    clock = Clock()
    return CanaryWindow("m", "2", "1", CanaryConfig(**{**base, **cfg}), clock), clock


def feed(w, version, n, seconds=0.010, errors=0):
    for i in range(n):
        w.observe(version, i >= errors, seconds)


def test_waits_for_requests_or_time_then_promotes_an_equal_version():
    w, clock = window()
    feed(w, "1", 30)
    feed(w, "2", 19)
    assert w.verdict()[0] is None
    feed(w, "2", 1)
    verdict, why = w.verdict()
    assert verdict == "promote" and "canary 20 requests, active 30" in why


@pytest.mark.parametrize("canary_errors,verdict", [(0, "promote"), (1, "promote"), (2, "rollback"), (10, "rollback")])
def test_error_rate_increase_beyond_the_allowance_rolls_back(canary_errors, verdict):
    w, _ = window(min_requests=40)
    feed(w, "1", 100, errors=1)          # 1 % on active
    feed(w, "2", 40, errors=canary_errors)  # +0, +1.5, +4, +24 points over active
    assert w.verdict()[0] == verdict


def test_latency_uses_p99_with_enough_samples_and_ignores_tiny_gaps():
    w, _ = window(min_requests=100)
    feed(w, "1", 200, seconds=0.001)
    feed(w, "2", 100, seconds=0.0025)      # 2.5x but only 1.5 ms slower: noise floor
    assert w.verdict()[0] == "promote"
    w2, _ = window(min_requests=100)
    feed(w2, "1", 200, seconds=0.010)
    feed(w2, "2", 100, seconds=0.030)
    verdict, why = w2.verdict()
    assert verdict == "rollback" and why.startswith("p99 latency")


def test_one_hiccup_in_a_small_window_does_not_fail_a_good_version():
    w, _ = window()
    feed(w, "1", 20, seconds=0.010)
    feed(w, "2", 19, seconds=0.010)
    w.observe("2", True, 0.5)  # one scheduler stall: the max, but not the p90 of 20
    assert w.verdict()[0] == "promote"


def test_no_traffic_promotes_after_the_window_and_all_failed_rolls_back():
    w, clock = window()
    clock.t = 61
    assert w.verdict()[0] == "promote"
    w2, clock2 = window(min_requests=5)
    feed(w2, "1", 5, errors=5)
    feed(w2, "2", 5, errors=5)
    assert w2.verdict()[0] == "rollback"
