"""A circuit breaker for calls to another host: its states and transitions in one table.

Used for offloading to companions (transports/mqtt/offload.py): when no
companion answers, every offloaded request would wait out the offload
timeout before running here. The breaker stops trying for a while instead.

  closed     calls go through; a failure is remembered for ``window_s``, and
             ``failures`` of them within the window open the breaker
  open       no call goes through (the caller does the work itself at once)
             until ``open_s`` have passed
  half_open  one call goes through, the probe; the others are refused until
             it ends: success closes the breaker, failure opens it again. A
             probe that never reports (its request was cancelled before it
             ran) is replaced after ``probe_timeout_s``.

Only ``Breaker._move`` changes the state, by looking up ``TRANSITIONS``; a
pair the table does not list is a stale report (a call that started before
the breaker opened ends after it) and is ignored.

Why not pybreaker or purgatory: their releases need Python 3.9 (the units run
3.8); both count consecutive failures, not failures within a window;
pybreaker's asynchronous path needs Tornado, and purgatory's half-open state
lets every call through, not one probe. Above all both wrap the call, and the
offloader must ask "may I?" before choosing between the companion and the
local queue, in O(1) without a coroutine. This class is that question and
three reports.
"""

from __future__ import annotations

import time
from collections import deque
from enum import Enum
from typing import Callable, Deque, Dict, Optional, Tuple


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(str, Enum):
    TRIPPED = "tripped"          # the failures within the window reached the limit
    COOLED = "cooled"            # open_s have passed: let a probe through
    PROBE_OK = "probe_ok"        # a call succeeded while half-open
    PROBE_FAILED = "probe_failed"  # a call failed while half-open


S, E = BreakerState, BreakerEvent
TRANSITIONS: Dict[Tuple[BreakerState, BreakerEvent], BreakerState] = {
    (S.CLOSED, E.TRIPPED): S.OPEN,
    (S.OPEN, E.COOLED): S.HALF_OPEN,
    (S.HALF_OPEN, E.PROBE_OK): S.CLOSED,
    (S.HALF_OPEN, E.PROBE_FAILED): S.OPEN,
}
# The value of each state in a gauge: 0 closed, 1 half-open, 2 open.
GAUGE_VALUE = {S.CLOSED: 0, S.HALF_OPEN: 1, S.OPEN: 2}


class Breaker:
    """``allow()`` before a call; ``success()`` or ``failure()`` after it.

    ``failures`` 0 turns the breaker off: it never opens. ``on_change(state)``
    is called after every transition (the metric). ``clock`` is injectable
    for tests (default ``time.monotonic``)."""

    def __init__(self, failures: int, window_s: float, open_s: float, probe_timeout_s: float,
                 on_change: Optional[Callable[[BreakerState], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = failures
        self.window_s = window_s
        self.open_s = open_s
        self.probe_timeout_s = probe_timeout_s
        self.on_change = on_change
        self.clock = clock
        self.state = S.CLOSED
        self.opened = 0  # times the breaker opened (status)
        self._failures: Deque[float] = deque()
        self._until = 0.0  # open: when to let a probe through
        self._probe_at = 0.0  # half-open: when the probe went through

    def _move(self, event: BreakerEvent) -> bool:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            return False
        self.state = nxt
        now = self.clock()
        if nxt is S.OPEN:
            self.opened += 1
            self._until = now + self.open_s
        elif nxt is S.HALF_OPEN:
            self._probe_at = now
        else:
            self._failures.clear()
        if self.on_change is not None:
            self.on_change(nxt)
        return True

    def allow(self) -> bool:
        """May a call go through now? In half-open, True once: the caller is the probe."""
        state = self.state
        if state is S.CLOSED:
            return True
        now = self.clock()
        if state is S.OPEN:
            return now >= self._until and self._move(E.COOLED)
        if now - self._probe_at >= self.probe_timeout_s:  # the probe never reported
            self._probe_at = now
            return True
        return False

    def success(self) -> None:
        if self.state is S.HALF_OPEN:
            self._move(E.PROBE_OK)

    def failure(self) -> None:
        if self.state is S.HALF_OPEN:
            self._move(E.PROBE_FAILED)
        elif self.state is S.CLOSED and self.limit > 0:
            now = self.clock()
            f = self._failures
            f.append(now)
            while f and f[0] <= now - self.window_s:
                f.popleft()
            if len(f) >= self.limit:
                self._move(E.TRIPPED)

    def status(self) -> dict:
        now = self.clock()
        recent = sum(1 for t in self._failures if t > now - self.window_s)
        doc = {"state": self.state.value, "failures_in_window": recent, "failures_to_open": self.limit,
               "window_s": self.window_s, "open_s": self.open_s, "opened": self.opened}
        if self.state is S.OPEN:
            doc["probe_in_s"] = round(max(0.0, self._until - now), 3)
        return doc
