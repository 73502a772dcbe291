"""How long a request may have waited for the event loop: the measure that
deadlines and load shedding count with.

Everything the daemon does for a request before and after the model (read,
parse, decode, route, encode, write) runs on one event loop. When the loop
falls behind, the model queue need not be long at all (the issue that brought
this in: ~490,000 requests at 512-2,000 clients, not one ``overloaded``, p50
126 ms); what grows is the time a request sits in its socket before the loop
reads it. The daemon cannot see that time for one request, but it can bound
it: bytes the loop reads in one turn reached the socket after the loop last
polled, i.e. after the previous turn began. So a request parsed at ``now``
waited unseen at most ``now - (start of the previous turn)``.

``LoopLag`` keeps that bound up to date at almost no cost:

- an idle or lightly loaded loop is watched by a timer every ``interval``
  that notes how late it fires (the bound is then that lateness, or how
  overdue the pending timer already is);
- once the timer fires more than ``BUSY_S`` late, a callback re-queued with
  ``call_soon`` marks the start of every turn, exactly, for as long as the
  turns stay that long (while it is queued the loop does not block in its
  poll, so it stops as soon as a turn is short: an idle loop never spins).

``InferenceService.start`` reads two floats: ``late = now - since``, at
least ``floor``. It counts ``late`` as part of every request's age (so no
answer reaches a client after the deadline it set, though the client's
bytes waited for the loop) and refuses requests with ``overloaded`` (reason
``loop_lag``) in proportion while both it and ``sustained`` (the least
lag of the last ``SUSTAINED_SAMPLES`` samples) are above ``admission.shed_loop_lag_ms``:
a refusal costs the loop less than an answer, so it catches up, and the
requests it takes are answered within their deadlines instead of all late.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Gauge

_now = time.monotonic
INF = float("inf")

# A loop turn longer than this is "busy": the start of every turn is marked.
# Shorter turns leave requests unseen for less than this, and marking them
# would keep a nearly idle loop from sleeping in its poll.
BUSY_S = 0.001
# ``LoopLag.sustained`` is the smallest of the last this many lag samples
# (timer ticks and marked turns): shedding waits for lag that lasts. One long
# turn (a garbage collection, a model load's last step) delays the requests
# read after it once; refusing them, whatever their budget, would turn a
# hiccup into errors (seen in the e2e suite: one 54 ms turn refused requests
# with 30 s deadlines). An overloaded loop makes every turn long.
SUSTAINED_SAMPLES = 3

LOOP_LAG = Gauge(
    "edge_agent_event_loop_lag_seconds",
    "How long the event loop's turns take (while busy) or how late it ran a periodic timer: the largest value "
    "of the last 1-2 seconds. New inference requests are refused with overloaded, in proportion, while the loop "
    "lags more than admission.shed_loop_lag_ms.",
)


class LoopLag:
    """The bound ``current(now)`` on how long bytes just parsed waited for the loop.

    Read it inline as ``max(now - since, floor)``: ``since`` is when the
    previous turn began (busy loop) or when the pending timer was due
    (otherwise: overdue means the loop is stuck in a turn right now), and
    ``floor`` the last timer's lateness (0 while turns are marked)."""

    def __init__(self, interval_s: float = 0.025) -> None:
        self.interval = interval_s
        self.since = INF  # not running: nothing is late
        self.floor = 0.0
        self._due = INF
        self._marking = False
        self._priming = False  # the first mark of a chain only notes when its turn began
        self._mark = 0.0  # when the current turn began (while marking)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        # Largest lag of this second and of the last (what the gauge shows:
        # a scrape every 15 s would almost never see a single sample).
        self._max = 0.0
        self._max_before = 0.0
        self._window_end = 0.0
        # The smallest of the last SUSTAINED_SAMPLES lag samples: what the
        # loop_lag shedding rule asks besides the current bound.
        self.sustained = 0.0
        self._samples = [0.0] * SUSTAINED_SAMPLES

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None:
            return
        self._loop = loop
        self._due = self.since = _now() + self.interval
        self._handle = loop.call_later(self.interval, self._tick)
        LOOP_LAG.set_function(self.recent_max)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._marking = False  # the next _turn ends the chain
        self._due = INF
        self.since = INF
        self.floor = 0.0

    def current(self, now: float) -> float:
        late = now - self.since
        return late if late > self.floor else self.floor

    def recent_max(self) -> float:
        return max(self._max, self._max_before)

    def _note(self, now: float, lag: float) -> None:
        samples = self._samples
        samples.pop(0)
        samples.append(lag)
        self.sustained = min(samples)
        if now >= self._window_end:
            self._max_before, self._max = self._max, 0.0
            self._window_end = now + 1.0
        if lag > self._max:
            self._max = lag

    def _tick(self) -> None:
        now = _now()
        # uvloop's timers round to the millisecond: one may fire a little early.
        late = now - self._due
        if late < 0.0:
            late = 0.0
        self._due = now + self.interval
        self._handle = self._loop.call_later(self.interval, self._tick)
        if self._marking:
            return  # the turns are being marked; that measure is exact
        self._note(now, late)
        self.floor = late
        self.since = self._due
        if late > BUSY_S:
            # The loop is busy: mark every turn from here. The previous turn
            # began before the timer was due, when exactly is unknown: its
            # due time is the bound until the next turn is marked.
            self._marking = self._priming = True
            self.since = now - late
            self.floor = 0.0
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        """Runs once per loop turn (re-queued each time) while turns are long."""
        now = _now()
        if self._priming:
            # uvloop may run this in the timer's own turn: it marks the start
            # of the next turn's I/O, not a whole turn.
            self._priming = False
            self._mark = now
            if self._marking:
                self._loop.call_soon(self._turn)
            return
        length = now - self._mark
        self.since = self._mark  # the previous turn began then
        self._mark = now
        self._note(now, length)
        if self._marking and length > BUSY_S:
            self._loop.call_soon(self._turn)
            return
        # Short turn: the loop keeps up again; back to the timer.
        self._marking = False
        self.floor = 0.0
        self.since = self._due
