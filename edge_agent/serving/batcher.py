"""Dynamic batcher: one per model version.

Requests are queued from the event loop into per-priority deques; a worker
thread (``instances`` of them, sharing the queue and the session, for CPU
serving where two single-threaded runs beat one two-threaded run) takes as
many as fit in ``max_batch`` rows (high priority first),
waiting at most ``max_delay`` for a partial batch to fill, runs it off the
event loop (ORT releases the GIL), and resolves every future of the batch with
a single ``call_soon_threadsafe``. While a batch runs, the next one gathers by
itself, so under load batches grow without any added delay.

With several instances, a worker takes at most its share of the queued
requests, ``ceil(queued / instances)``, and wakes another worker for the
rest. Without that, whichever worker came free first took the whole queue,
and the others ran what trickled in one request at a time: MiniLM at 32
clients ran 28 % of its batches with one text (on one thread, a text costs
~30 % more alone than in a batch of 8) and its workers waited on an empty
queue 11-14 % of the time (docs/BENCHMARKS.md).

A request is never run past its deadline. A queued request is answered
``deadline_exceeded`` at its deadline, by a timer on the loop armed for the
earliest deadline in the queue (the loop is where answers are written, so
the answer leaves then, not at the next periodic sweep: that one answered up
to 50 ms late). A worker does not start a request whose deadline is nearer
than the model's usual batch time (``expected_run``): it would finish late.
A full queue rejects at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from ..errors import DeadlineExceeded, EdgeError, InferenceFailed, Overloaded, ShuttingDown
from ..ops.metrics import BATCHER_STUCK, QUEUE_DEPTH, ModelMetrics
from ..runtime.session import LoadedModel, Prepared
from ..types import PRIORITY_HIGH, PRIORITY_NORMAL

log = logging.getLogger("edge_agent.batcher")

_now = time.monotonic
INF = float("inf")
# The deadline timer fires no sooner than this after it is armed: when many
# queued requests expire one after another, one sweep every millisecond
# answers them all (each within a millisecond of its deadline) instead of one
# sweep of the queue per request.
TIMER_MIN_S = 0.001
# Weight of the newest batch in expected_run (a moving average over ~8 batches).
RUN_EWMA = 0.125


class _Queued:
    """A request waiting in the batcher's queue: its prepared inputs, the
    future its answer resolves, its deadline, when it was queued, and
    ``store(outputs)`` for the response cache, run on the worker (or None)."""

    __slots__ = ("prepared", "future", "deadline", "enqueued", "store")

    def __init__(self, prepared: Prepared, future: asyncio.Future, deadline: float, enqueued: float, store) -> None:
        self.prepared = prepared
        self.future = future
        self.deadline = deadline
        self.enqueued = enqueued
        self.store = store


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _fail_all(futures: list, exc: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(exc)



def _collect_expired(queued, now: float, expired: list, earliest: float) -> float:
    """Append the requests of ``queued`` whose deadline has passed to
    ``expired``; return the earliest deadline of the others (or ``earliest``)."""
    for p in queued:
        d = p.deadline
        if d <= now:
            expired.append(p)
        elif d < earliest:
            earliest = d
    return earliest

class Batcher:
    def __init__(
        self,
        model: LoadedModel,
        loop: asyncio.AbstractEventLoop,
        metrics: ModelMetrics,
        max_delay_s: float,
        max_queue: int,
        preferred_rows: int | None = None,
        instances: int = 1,
    ) -> None:
        self.model = model
        self.loop = loop
        self.metrics = metrics
        # Models without a batch axis run one request at a time.
        self.max_rows = model.max_batch if model.max_batch > 0 else 1
        if preferred_rows:
            self.max_rows = min(self.max_rows, preferred_rows)
        self.concat = model.max_batch > 0
        self.max_delay = max_delay_s
        self.max_queue = max_queue
        self._queues = {PRIORITY_HIGH: deque(), PRIORITY_NORMAL: deque()}
        self._order = (self._queues[PRIORITY_HIGH], self._queues[PRIORITY_NORMAL])
        self._size = 0
        self._incoming: list[tuple[int, _Queued]] = []  # submitted this loop turn (loop thread only)
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._stop = False
        self.inflight = 0  # requests taken by the worker and not yet resolved
        self.heartbeat = _now()  # last time a worker looped (idle or not)
        self._started: dict[int, float] = {}  # worker index -> when its running batch began
        self.batches = 0
        # Seconds one batch usually takes (moving average; 0 until one ran).
        self.expected_run = 0.0
        # The deadline timer (loop thread only): armed for the earliest
        # deadline of a queued request, or later than none.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self.instances = max(1, instances)
        QUEUE_DEPTH.labels(model.name, model.version).set_function(lambda: self.queued)
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), name=f"batcher-{model.name}-{model.version}" + (f"-{i}" if i else ""), daemon=True)
            for i in range(self.instances)
        ]
        for t in self._threads:
            t.start()

    @property
    def batch_started(self) -> float | None:
        """When the longest-running batch began (None when no worker is running one)."""
        started = list(self._started.values())
        return min(started) if started else None

    # --- event-loop side -----------------------------------------------------

    def submit(self, prepared: Prepared, priority: int, deadline: float,
               store: Callable[[dict], None] | None = None) -> asyncio.Future:
        """Queue a request. ``store(outputs)``, if given, runs on the worker
        thread with the request's answer before its future is resolved (the
        response cache's put: off the event loop, and done before anyone,
        the caller included, sees the answer).

        Requests submitted in one turn of the event loop reach the workers
        together, at the end of that turn: one lock and one wake-up for all
        of them, not one each. Woken per request, a worker waiting for its
        batch to fill took the GIL from the loop on every submit; at 64
        clients, handing over per turn saved 1.4 µs of CPU per request, +3 %
        throughput (docs/BENCHMARKS.md)."""
        if self._closing:
            raise ShuttingDown(f"model '{self.model.name}' version {self.model.version} is unloading")
        incoming = self._incoming
        # Only this thread adds to _size, so a stale read can only overcount.
        if self._size + len(incoming) >= self.max_queue:
            raise Overloaded(f"model '{self.model.name}': queue full ({self.max_queue} waiting)", reason="queue_full")
        fut = self.loop.create_future()
        incoming.append((priority, _Queued(prepared, fut, deadline, _now(), store)))
        if len(incoming) == 1:
            self.loop.call_soon(self._hand_over)
        if deadline < self._timer_at:
            self._arm(deadline)
        return fut

    def room(self) -> int:
        """Requests ``submit`` still takes before refusing with overloaded: a caller with several
        to submit at once (a pipeline's crops) checks first, rather than leave some queued for
        an answer it will not wait for."""
        return max(0, self.max_queue - self._size - len(self._incoming))

    def _arm(self, when: float) -> None:
        """(Re)arm the deadline timer for ``when`` (loop thread). Requests
        of one priority mostly share one budget, so deadlines mostly grow
        in submit order and this runs about once per queue turnover."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        delay = when - _now()
        self._timer = self.loop.call_later(delay if delay > TIMER_MIN_S else TIMER_MIN_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        self.sweep_expired()

    def _hand_over(self) -> None:
        """On the loop, once per turn: move the turn's requests to the workers."""
        incoming = self._incoming
        if not incoming:
            return
        self._incoming = []
        queues = self._queues
        with self._cond:
            stopped = self._stop
            if not stopped:
                for priority, p in incoming:
                    queues[priority].append(p)
                self._size += len(incoming)
                self._cond.notify()
        if stopped:  # close() takes what waits here, so only a future change could get here
            for _, p in incoming:
                _set_exception(p.future, ShuttingDown("model unloaded before the request ran"))

    def sweep_expired(self) -> int:
        """Fail queued requests whose deadline has passed, and arm the
        deadline timer for the earliest deadline left (on the loop; the
        timer calls it, and so may anyone, e.g. a periodic safety net)."""
        now = _now()
        expired: list[_Queued] = []
        earliest = INF
        if self._size:
            with self._cond:
                for q in self._order:
                    n = len(expired)
                    earliest = _collect_expired(q, now, expired, earliest)
                    if len(expired) > n:
                        keep = [p for p in q if p.deadline > now]
                        q.clear()
                        q.extend(keep)
                self._size -= len(expired)
        incoming = self._incoming
        if incoming:  # submitted this turn, not handed over yet
            n = len(expired)
            earliest = _collect_expired((p for _, p in incoming), now, expired, earliest)
            if len(expired) > n:
                incoming[:] = [e for e in incoming if e[1].deadline > now]
        if earliest < self._timer_at:
            self._arm(earliest)
        if expired:
            exc = DeadlineExceeded("deadline passed while queued; the request was not run")
            for p in expired:
                _set_exception(p.future, exc)
        return len(expired)

    @property
    def queued(self) -> int:
        return self._size + len(self._incoming)

    def alive(self, stuck_after_s: float) -> bool:
        """Every worker thread lives and none is stuck in one batch."""
        started = self.batch_started
        ok = all(t.is_alive() for t in self._threads) and not (
            started is not None and _now() - started > stuck_after_s
        )
        BATCHER_STUCK.labels(self.model.name, self.model.version).set(0 if ok else 1)
        return ok

    async def drain(self, timeout: float) -> bool:
        """Stop taking requests, wait for the queued and running ones."""
        with self._cond:
            self._closing = True
        end = _now() + timeout
        while (self.queued or self.inflight) and _now() < end:
            await asyncio.sleep(0.01)
        return not (self.queued or self.inflight)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._cond:
            self._closing = True
            self._stop = True
            left = [p for q in self._order for p in q] + [p for _, p in self._incoming]
            self._incoming = []
            for q in self._order:
                q.clear()
            self._size = 0
            self._cond.notify_all()
        for p in left:
            self.loop.call_soon_threadsafe(_set_exception, p.future, ShuttingDown("model unloaded before the request ran"))
        end = _now() + 5
        for t in self._threads:
            t.join(timeout=max(0.0, end - _now()))
        self.metrics.remove()

    # --- worker thread -------------------------------------------------------

    def _take(self) -> list[_Queued]:
        """Under the lock: pop up to max_rows rows, high priority first, in
        order, and no more than this instance's share of the queued requests."""
        batch: list[_Queued] = []
        rows = 0
        share = -(-self._size // self.instances)
        for q in self._order:
            while q:
                r = q[0].prepared.rows
                if batch and (rows + r > self.max_rows or len(batch) >= share):
                    return batch
                batch.append(q.popleft())
                self._size -= 1
                rows += r
                if not self.concat:
                    return batch
        return batch

    def _rows_queued(self) -> int:
        return sum(p.prepared.rows for q in self._order for p in q)

    def _worker(self, index: int) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._size and not self._stop:
                    self.heartbeat = _now()
                    cond.wait(1.0)
                if self._stop:
                    return
                if self.max_delay > 0 and self.concat:
                    # Let a partial batch fill, but never past max_delay.
                    end = _now() + self.max_delay
                    while self._rows_queued() < self.max_rows and not self._stop:
                        left = end - _now()
                        if left <= 0:
                            break
                        cond.wait(left)
                batch = self._take()
                self.inflight += len(batch)
                if self._size and self.instances > 1:
                    cond.notify()  # an idle worker takes the rest
            self.heartbeat = now = _now()
            self._run(batch, now, index)

    def _run(self, batch: list[_Queued], now: float, index: int = 0) -> None:
        live = []
        expired = []
        # Not started unless it can finish by its deadline, as far as the
        # recent batches tell.
        last_start = now + self.expected_run
        for p in batch:
            (live if p.deadline > last_start else expired).append(p)
        loop = self.loop
        if expired:
            exc = DeadlineExceeded("deadline passed, or too near to run the model, while queued; the request was not run")
            loop.call_soon_threadsafe(_fail_all, [p.future for p in expired], exc)
        if not live:
            self._done(len(batch))
            return
        m = self.metrics
        for p in live:
            m.queue.observe(now - p.enqueued)
        self._started[index] = started = time.monotonic()
        try:
            results = self._run_isolated(live)
        finally:
            t = time.monotonic()
            m.compute.observe(t - started)
            e = self.expected_run
            self.expected_run = t - started if not e else e + (t - started - e) * RUN_EWMA
            del self._started[index]
            self.heartbeat = t
            with self._cond:
                self.batches += 1
        m.batch.observe(sum(p.prepared.rows for p in live))
        for p, r in zip(live, results):
            if p.store is not None and not isinstance(r, BaseException):
                try:
                    p.store(r)
                except Exception:  # noqa: BLE001 - storing must never fail the request
                    log.exception("model %s/%s: storing an answer failed", self.model.name, self.model.version)
        loop.call_soon_threadsafe(self._resolve, [p.future for p in live], results)
        self._done(len(batch))

    def _run_isolated(self, live: list[_Queued]) -> list:
        """Run the batch; if it fails, run its requests one by one so only the
        request that breaks the model gets the error."""
        try:
            return self.model.run_batch([p.prepared for p in live])
        except Exception as e:  # noqa: BLE001 - a batch must never kill its thread
            if len(live) == 1:
                err = e if isinstance(e, EdgeError) else InferenceFailed(f"model '{self.model.name}': {e}")
                log.error("model %s/%s: request failed: %s", self.model.name, self.model.version, err)
                return [err]
            log.warning("model %s/%s: batch of %d failed (%s); retrying one by one", self.model.name, self.model.version, len(live), e)
            return [self._run_isolated([p])[0] for p in live]

    def _done(self, n: int) -> None:
        with self._cond:
            self.inflight -= n

    @staticmethod
    def _resolve(futures, results) -> None:
        for f, r in zip(futures, results):
            if not f.done():
                if isinstance(r, BaseException):
                    f.set_exception(r)
                else:
                    f.set_result(r)
