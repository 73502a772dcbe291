"""The one backoff formula (edge_agent/backoff.py): exponential, capped, half fixed and half random."""

from __future__ import annotations

import random

from edge_agent.backoff import backoff_delay


def test_each_delay_lies_in_the_upper_half_of_a_doubling_capped_bound():
    random.seed(7)
    for attempt in range(40):
        bound = min(30.0, 0.5 * 2 ** attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0) for _ in range(200)]
        assert all(bound / 2 <= d <= bound for d in delays), attempt
        assert max(delays) - min(delays) > bound / 4  # jittered: a fleet spreads out
    assert 15.0 <= backoff_delay(10_000, 0.5, 30.0) <= 30.0  # a huge attempt count stays finite


def test_the_ota_downloads_use_it():
    from edge_agent.ota import download

    assert download.backoff_delay is backoff_delay
