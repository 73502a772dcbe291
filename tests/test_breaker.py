"""The circuit breaker's table (edge_agent/breaker.py), on a clock the test moves."""

from __future__ import annotations

from edge_agent.breaker import TRANSITIONS, Breaker, BreakerEvent, BreakerState

S = BreakerState


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(failures: int = 3, window_s: float = 10.0, open_s: float = 5.0, probe_timeout_s: float = 2.0):
    clock, seen = Clock(), []
    return Breaker(failures, window_s, open_s, probe_timeout_s, on_change=seen.append, clock=clock), clock, seen


def tripped():
    """A breaker just opened by three failures."""
    b, clock, seen = make()
    for _ in range(3):
        b.failure()
    assert b.state is S.OPEN
    return b, clock, seen


def test_the_table_has_exactly_the_four_transitions():
    assert TRANSITIONS == {
        (S.CLOSED, BreakerEvent.TRIPPED): S.OPEN,
        (S.OPEN, BreakerEvent.COOLED): S.HALF_OPEN,
        (S.HALF_OPEN, BreakerEvent.PROBE_OK): S.CLOSED,
        (S.HALF_OPEN, BreakerEvent.PROBE_FAILED): S.OPEN,
    }


def test_opens_on_failures_within_the_window_only():
    b, clock, seen = make()
    b.failure()
    clock.t += 6
    b.failure()
    clock.t += 6  # the first failure is out of the 10 s window now
    b.failure()
    assert b.state is S.CLOSED and b.allow()
    b.failure()  # three within 10 s
    assert b.state is S.OPEN and seen == [S.OPEN]
    assert not b.allow()


def test_successes_while_closed_do_not_reset_the_window():
    b, clock, _ = make()
    for _ in range(2):
        b.failure()
        b.success()
    b.failure()
    assert b.state is S.OPEN


def test_half_open_lets_one_probe_through_then_closes_on_success():
    b, clock, seen = tripped()
    clock.t += 4.9
    assert not b.allow()
    clock.t += 0.1
    assert b.allow() and b.state is S.HALF_OPEN  # the probe
    assert not b.allow() and not b.allow()  # the others run locally meanwhile
    b.success()
    assert b.state is S.CLOSED and b.allow()
    assert seen == [S.OPEN, S.HALF_OPEN, S.CLOSED]
    assert b.status()["failures_in_window"] == 0  # closed afresh


def test_a_failed_probe_opens_again_for_open_s():
    b, clock, seen = tripped()
    clock.t += 5
    assert b.allow()
    b.failure()
    assert b.state is S.OPEN and b.opened == 2
    clock.t += 4
    assert not b.allow()
    clock.t += 1
    assert b.allow()


def test_a_probe_that_never_reports_is_replaced():
    b, clock, _ = tripped()
    clock.t += 5
    assert b.allow()
    clock.t += 1.9
    assert not b.allow()
    clock.t += 0.1
    assert b.allow() and b.state is S.HALF_OPEN


def test_stale_reports_while_open_change_nothing():
    b, clock, seen = tripped()
    b.success()  # a call that started while closed answers late
    b.failure()
    assert b.state is S.OPEN and seen == [S.OPEN] and b.opened == 1


def test_zero_failures_never_opens():
    b, _, seen = make(failures=0)
    for _ in range(100):
        b.failure()
    assert b.state is S.CLOSED and b.allow() and seen == []


def test_status_says_when_the_probe_goes():
    b, clock, _ = tripped()
    clock.t += 2
    st = b.status()
    assert st["state"] == "open" and st["probe_in_s"] == 3.0 and st["failures_in_window"] == 3
