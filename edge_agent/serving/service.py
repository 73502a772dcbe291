"""The transport-independent core: admit -> route -> cache -> batch -> respond.

Every transport calls ``InferenceService.infer`` with an ``InferRequest`` and
gets an ``InferResponse`` or an ``EdgeError`` (with its stable code). Nothing
here knows about HTTP or MQTT.

A request's deadline counts from its arrival (``InferRequest.arrived``: the
first byte of an HTTP request, the receipt of an MQTT message), not from when
the service sees it: time spent waiting for the event loop is part of the
budget the client gave. Admission comes first, before the cache and the
batcher, and costs a few float comparisons: a request whose deadline has
passed, or is nearer than its model's usual batch time, gets
``deadline_exceeded``; while the event loop lags (serving/admission.py), or
when a request has used most of its budget before reaching the service, it
gets ``overloaded``. No answer is sent after its deadline: an answer that
is ready only after it is replaced by ``deadline_exceeded``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from functools import partial
from types import CoroutineType

from ..cache import SKIP, CacheFront, Hit
from ..config import Config
from ..errors import DeadlineExceeded, EdgeError, ModelNotReady, Overloaded, ShuttingDown, UnknownModel, UnknownVersion
from ..ops.metrics import REQUEST_ERRORS
from ..types import PRIORITY_HIGH, InferRequest, InferResponse
from .admission import LoopLag
from .repository import ModelRepository, ModelVersion

log = logging.getLogger("edge_agent.service")

_now = time.monotonic



def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an ascending, non-empty
    sequence: the one calculation behind every latency percentile the daemon
    reports (status, MQTT telemetry)."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]

class Started:
    """A request ``InferenceService.start`` has set going: ``future`` ends
    with the outputs, or with the whole response when ``whole`` (offloaded
    work); the rest is what ``settle`` needs to count and finish it. Work
    that is a coroutine (single flight, offload) is run as a task here, so
    every caller waits on a future, the same way; any other ``work`` must
    be a future (the batcher's)."""

    __slots__ = ("future", "req", "mv", "t0", "whole", "deadline")

    def __init__(self, work, req: InferRequest, mv: ModelVersion | None, t0: float, whole: bool,
                 deadline: float = float("inf")) -> None:
        # A class check, not asyncio.isfuture: this runs for every request.
        self.future = asyncio.ensure_future(work) if work.__class__ is CoroutineType else work
        self.req = req
        self.mv = mv
        self.t0 = t0
        self.whole = whole
        self.deadline = deadline


class InferenceService:
    def __init__(self, cfg: Config, repo: ModelRepository, cache=None) -> None:
        self.repo = repo
        self.cache = cache
        # What the cache decides per request (Hit, Miss or Skip), with its
        # governors, single flight and memo of encoded answers (cache/front.py).
        self.front = CacheFront(cache, cfg.cache, route=repo.route, answered=self._count_ok)
        # Names of the models whose governor samples: transports skip the memo for them.
        self.sampling_models = self.front.governors.sampling
        repo.on_model_removed.append(self.front.forget)
        self.accepting = True
        self.inflight = 0
        self.started = _now()
        self.count_ok = 0
        self.count_err = 0
        # Recent end-to-end latencies (seconds) for telemetry percentiles.
        self.recent = deque(maxlen=4096)
        # Refusal counters by (transport, code, reason), bound once: under
        # load shedding they count thousands of refusals a second.
        self._refusals: dict[tuple[str, str, str], object] = {}
        self._admit_credit = 0.0  # loop_lag shedding: admit a request each time this reaches 1
        # How late the event loop runs. Measured from here, the one object
        # every transport goes through, on the loop the service is built on
        # (none: never sheds on lag, e.g. a service built outside a loop).
        self.loop_lag = LoopLag(cfg.admission.loop_lag_interval_ms / 1000.0)
        try:
            self.loop_lag.start(asyncio.get_running_loop())
        except RuntimeError:
            pass
        self.configure(cfg)
        # Observers of finished requests, e.g. the OTA canary judge:
        # fn(model_version, ok: bool, seconds: float). They see what says
        # something about the version: no cache hits, and no client errors
        # (4xx: a malformed request fails on any version).
        self.observers: list = []
        # transports/mqtt/offload.Offloader when offload is on: sends work to a companion.
        self.offloader = None

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded configuration: default deadlines per priority,
        and the admission thresholds."""
        self.cfg = cfg
        self._deadline = {PRIORITY_HIGH: cfg.batching.deadline_high_s}
        self._deadline_normal = cfg.batching.deadline_normal_s
        a = cfg.admission
        self._shed_lag = a.shed_loop_lag_ms / 1000.0 if a.shed_loop_lag_ms > 0 else float("inf")
        self._shed_age = a.shed_age_fraction
        self.loop_lag.interval = a.loop_lag_interval_ms / 1000.0

    def close(self) -> None:
        """Stop measuring the event loop's lag."""
        self.loop_lag.stop()

    async def infer(self, req: InferRequest, transport: str = "socket") -> InferResponse:
        """The answer to ``req``; raises an ``EdgeError`` (counted and observed).
        ``start``, then ``settle`` once its future is done: the same two
        halves the HTTP transport calls from callbacks."""
        r = self.start(req, transport)
        if r.__class__ is not Started:
            return r
        try:
            await r.future
        except Exception:
            pass  # the work's own error: settle raises it, counted
        except BaseException:  # this task was cancelled (the future with it)
            self.inflight -= 1
            raise
        return self.settle(r, transport)

    def start(self, req: InferRequest, transport: str = "socket") -> InferResponse | Started:
        """``infer`` without a coroutine, for transports that answer from a
        callback (the HTTP server), with no task or coroutine per request.

        Returns the response when it is known at once (a cache hit), else a
        ``Started`` whose ``future`` ends with the answer; once it is done,
        the caller hands the ``Started`` to ``settle``. Raises an
        ``EdgeError`` as ``infer`` does."""
        t0 = _now()
        mv: ModelVersion | None = None
        self.inflight += 1
        try:
            if not self.accepting:
                raise ShuttingDown("the daemon is shutting down")
            # Admission, before routing, the cache and the batcher: a few
            # float operations (the clock was read above). ``late``: how long
            # the request's bytes may have waited for the loop before the
            # transport saw them (admission.py), counted as part of its age,
            # so no answer reaches a client after the deadline it set though
            # a lagging loop hid that wait.
            lag = self.loop_lag
            late = t0 - lag.since
            if late < lag.floor:
                late = lag.floor
            arrived = req.arrived
            if arrived is None or arrived > t0:
                arrived = t0
            arrived -= late
            deadline = req.deadline
            if deadline is None:
                limit = self._deadline.get(req.priority, self._deadline_normal)
                if req.timeout_s is not None and req.timeout_s < limit:
                    limit = req.timeout_s
                deadline = req.deadline = arrived + limit
            if deadline <= t0:
                raise DeadlineExceeded(f"deadline passed {(t0 - deadline) * 1000:.1f} ms before the request reached the "
                                       f"service (event loop {late * 1000:.1f} ms late); it was not run")
            if late > self._shed_lag and lag.sustained > self._shed_lag:
                # Refuse in proportion to the lag (at twice the threshold,
                # every other request), not all: when refusing alone keeps
                # the loop this busy, refusing all would answer nobody.
                self._admit_credit += self._shed_lag / late
                if self._admit_credit < 1.0:
                    raise Overloaded(f"the daemon's event loop runs {late * 1000:.0f} ms late (admission.shed_loop_lag_ms "
                                     f"{self._shed_lag * 1000:.0f}); refused at once", reason="loop_lag")
                self._admit_credit -= 1.0
            if t0 - arrived > self._shed_age * (deadline - arrived):
                raise Overloaded(f"the request reached the service {(t0 - arrived) * 1000:.1f} ms after it arrived, more than "
                                 f"{self._shed_age:g} of its {(deadline - arrived) * 1000:.1f} ms budget; refused at once", reason="late")
            try:
                mv = self.repo.route(req.model, req.version)
            except (UnknownModel, UnknownVersion, ModelNotReady) as e:
                if self.offloader is None or not self.offloader.wants_unavailable(req.model):
                    raise
                return Started(self._offload_unavailable(req, e, t0), req, None, t0, True, deadline)
            model = mv.model
            if deadline - t0 < mv.batcher.expected_run:
                raise DeadlineExceeded(f"{(deadline - t0) * 1000:.1f} ms left before the deadline, model '{model.name}' needs "
                                       f"about {mv.batcher.expected_run * 1000:.1f} ms; the request was not run")
            prepared = model.prepare(req)
            # The cache's one decision (cache/front.py): Hit, Miss or SKIP.
            found = self.front.lookup(mv, req)
            if found.__class__ is Hit:
                self.inflight -= 1
                resp = self._finish(req, mv, found.outputs, t0, cached=True)
                resp.cache_key = found.key
                return resp
            if self.offloader is not None and self.offloader.wants(mv):
                return Started(self._offload_first(req, mv, prepared, deadline, found, t0), req, mv, t0, True, deadline)
            if found is not SKIP:
                return Started(self._submit_shared(mv, prepared, req.priority, deadline, found), req, mv, t0, False, deadline)
            return Started(mv.batcher.submit(prepared, req.priority, deadline), req, mv, t0, False, deadline)
        except EdgeError as e:
            self.inflight -= 1
            self._failed(mv, e, t0, transport)
            raise
        except BaseException:  # a bug: the transport answers 500
            self.inflight -= 1
            raise

    def settle(self, r: Started, transport: str = "socket") -> InferResponse:
        """The answer of a ``Started`` whose future is done; raises its
        ``EdgeError``, counted and observed."""
        self.inflight -= 1
        try:
            value = r.future.result()
            if _now() > r.deadline:
                raise _late(r)
        except EdgeError as e:
            self._failed(r.mv, e, r.t0, transport)
            raise
        return self._complete(r, value)

    def _complete(self, r: Started, value) -> InferResponse:
        if r.whole:  # the work ended with the response itself
            return value
        return self._finish(r.req, r.mv, value, r.t0, cached=False)

    def _submit_shared(self, mv: ModelVersion, prepared, priority: int, deadline: float, miss):
        # Identical requests arriving while this one runs share its
        # inference. The batcher's worker thread stores the answer (off the
        # event loop) before any of them, or a later request, sees it.
        store = miss.store
        return self.front.share(miss, lambda: mv.batcher.submit(prepared, priority, deadline, store))

    async def _offload_first(self, req: InferRequest, mv: ModelVersion, prepared, deadline: float, found, t0: float) -> InferResponse:
        resp = await self.offloader.offload(req)
        if resp is not None:
            return self._offloaded(resp, t0)
        if found is not SKIP:
            outputs = await self._submit_shared(mv, prepared, req.priority, deadline, found)
        else:
            outputs = await mv.batcher.submit(prepared, req.priority, deadline)
        return self._finish(req, mv, outputs, t0, cached=False)

    async def _offload_unavailable(self, req: InferRequest, err: EdgeError, t0: float) -> InferResponse:
        return self._offloaded(await self.offloader.offload(req, err), t0)

    def _failed(self, mv: ModelVersion | None, e: EdgeError, t0: float, transport: str) -> None:
        self.count_err += 1
        if mv is not None:
            mv.metrics.outcome(e.code).inc()
            if e.http_status >= 500:
                for fn in self.observers:
                    fn(mv, False, _now() - t0)
            if e.__class__ is Overloaded:  # queue full: counted with the other refusals too, by reason
                self._refused(transport, e)
        else:
            self._refused(transport, e)

    def _refused(self, transport: str, e: EdgeError) -> None:
        key = (transport, e.code, getattr(e, "reason", ""))
        c = self._refusals.get(key)
        if c is None:
            c = self._refusals[key] = REQUEST_ERRORS.labels(*key)
        c.inc()

    # --- the memo of encoded answers (cache/memo.py) ---------------------------

    def memo_lookup(self, transport: bytes, name: str, version: str | None, request: bytes):
        """Before decoding: the encoded answer a transport kept for a request
        of exactly these bytes. Returns (answer, pin): ``answer`` is None on
        a miss; ``pin`` is None when the memo does not apply, else
        (memo key, the version routed to): the transport must decode the
        request for that version (``InferRequest.version``), so that what it
        keeps with ``memo_keep`` is that version's answer, whatever a canary
        split would pick next. Transports need not call it for the models in
        ``sampling_models``: their inputs do not repeat, so their bytes are
        not digested. The rules are the memo's (cache/memo.py); a daemon
        shutting down answers nothing from it."""
        memo = self.front.memo
        if memo is None or not self.accepting:
            return None, None
        return memo.lookup(transport, name, version, request)

    def memo_keep(self, key: bytes, resp: InferResponse, answer, size: int) -> None:
        """After encoding a cached answer: keep ``answer`` (``size`` bytes)
        under the ``key`` that ``memo_lookup`` gave."""
        self.front.memo.keep(key, resp, answer, size)

    def _count_ok(self, mv: ModelVersion, dt: float) -> None:
        m = mv.metrics
        m.ok.inc()
        m.latency.observe(dt)
        self.recent.append(dt)
        self.count_ok += 1

    def _finish(self, req: InferRequest, mv: ModelVersion, outputs, t0: float, cached: bool) -> InferResponse:
        dt = _now() - t0
        self._count_ok(mv, dt)
        if not cached:
            for fn in self.observers:
                fn(mv, True, dt)
        return InferResponse(model=mv.name, version=mv.version, outputs=outputs, id=req.id, cached=cached)

    def _offloaded(self, resp: InferResponse, t0: float) -> InferResponse:
        # A companion's answer says nothing about our versions: no model metrics, no observers.
        self.recent.append(_now() - t0)
        self.count_ok += 1
        return resp

    def refused(self, transport: str, err: EdgeError) -> None:
        """Count an error raised by a transport before the request reached us."""
        self.count_err += 1
        self._refused(transport, err)

    def stats(self) -> dict:
        lat = sorted(self.recent)

        def pct(p: float) -> float | None:
            return round(percentile(lat, p) * 1000, 3) if lat else None

        return {
            "uptime_s": round(_now() - self.started, 1),
            "requests_ok": self.count_ok,
            "requests_error": self.count_err,
            "inflight": self.inflight,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
            "queue_depth": sum(mv.batcher.queued for mv in self.repo.all_versions()),
            "event_loop_lag_ms": round(self.loop_lag.recent_max() * 1000, 1),
        }


def _late(r: Started) -> DeadlineExceeded:
    """An answer ready only after its deadline is not sent: the client was
    promised none after it (and has most likely given up waiting)."""
    return DeadlineExceeded(f"the answer was ready {(_now() - r.deadline) * 1000:.1f} ms after the deadline; not sent")
