"""The transport-independent core: validate -> route -> cache -> batch -> respond.

Every transport calls ``InferenceService.infer`` with an ``InferRequest`` and
gets an ``InferResponse`` or an ``EdgeError`` (with its stable code). Nothing
here knows about HTTP or MQTT.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from functools import partial

from ..cache import SingleFlight, request_key
from ..cache.governor import Governor
from ..cache.keys import input_fingerprint
from ..config import Config
from ..errors import EdgeError, ModelNotReady, ShuttingDown, UnknownModel, UnknownVersion
from ..ops.metrics import REQUEST_ERRORS
from ..types import PRIORITY_HIGH, InferRequest, InferResponse
from .repository import ModelRepository, ModelVersion

log = logging.getLogger("edge_agent.service")

_now = time.monotonic


class InferenceService:
    def __init__(self, cfg: Config, repo: ModelRepository, cache=None) -> None:
        self.repo = repo
        self.cache = cache
        self.flights = SingleFlight()
        # Per model: look up only a sample while its answers are not reused.
        self._governors: dict[str, Governor] = {}
        repo.on_model_removed.append(self._forget_model)
        self.accepting = True
        self.inflight = 0
        self.started = _now()
        self.count_ok = 0
        self.count_err = 0
        # Recent end-to-end latencies (seconds) for telemetry percentiles.
        self.recent = deque(maxlen=4096)
        self.configure(cfg)
        # Observers of finished requests, e.g. the OTA canary judge:
        # fn(model_version, ok: bool, seconds: float). They see what says
        # something about the version: no cache hits, and no client errors
        # (4xx: a malformed request fails on any version).
        self.observers: list = []
        # transports/offload.Offloader when offload is on: sends work to a companion.
        self.offloader = None

    def configure(self, cfg: Config) -> None:
        """Take a (re)loaded configuration: default deadlines per priority."""
        self.cfg = cfg
        self._deadline = {PRIORITY_HIGH: cfg.batching.deadline_high_s}
        self._deadline_normal = cfg.batching.deadline_normal_s

    async def infer(self, req: InferRequest, transport: str = "socket") -> InferResponse:
        t0 = _now()
        mv: ModelVersion | None = None
        self.inflight += 1
        try:
            if not self.accepting:
                raise ShuttingDown("the daemon is shutting down")
            try:
                mv = self.repo.route(req.model, req.version)
            except (UnknownModel, UnknownVersion, ModelNotReady) as e:
                if self.offloader is None or not self.offloader.wants_unavailable(req.model):
                    raise
                return self._offloaded(await self.offloader.offload(req, e), t0)
            model = mv.model
            prepared = model.prepare(req)
            cache = self.cache
            key = None
            if cache is not None and req.use_cache and model.spec.cache.enabled:
                gov = self._governors.get(model.name)
                if gov is None:
                    c = self.cfg.cache
                    gov = self._governors[model.name] = Governor(model.name, c.sample_window, c.sample_below_hit_ratio)
                # While this model's answers are not reused, only a sample of
                # requests is keyed; the others run as with the cache off.
                fp = input_fingerprint(req)
                if gov.looks_up(fp):
                    # The key holds the model file's digest, so a new version
                    # never reads another version's answers.
                    key = request_key(model.name, model.digest, req)
                    hit = cache.get(key)
                    if hit is not None:
                        gov.hit(fp)
                        return self._finish(req, mv, hit, t0, cached=True)
            if self.offloader is not None and self.offloader.wants(mv):
                resp = await self.offloader.offload(req)
                if resp is not None:
                    return self._offloaded(resp, t0)
            limit = self._deadline.get(req.priority, self._deadline_normal)
            if req.timeout_s is not None and req.timeout_s < limit:
                limit = req.timeout_s
            deadline = req.deadline if req.deadline is not None else t0 + limit
            if key is not None:
                # Identical requests arriving while this one runs share its
                # inference. The batcher's worker thread stores the answer
                # (off the event loop) before any of them, or a later
                # request, sees it.
                put = partial(cache.put, key, ttl_s=model.spec.cache.ttl_s)
                outputs = await self.flights.run(key, lambda: mv.batcher.submit(prepared, req.priority, deadline, put))
            else:
                outputs = await mv.batcher.submit(prepared, req.priority, deadline)
            return self._finish(req, mv, outputs, t0, cached=False)
        except EdgeError as e:
            self.count_err += 1
            if mv is not None:
                mv.metrics.outcome(e.code).inc()
                if e.http_status >= 500:
                    for fn in self.observers:
                        fn(mv, False, _now() - t0)
            else:
                REQUEST_ERRORS.labels(transport, e.code).inc()
            raise
        finally:
            self.inflight -= 1

    def _forget_model(self, name: str) -> None:
        gov = self._governors.pop(name, None)
        if gov is not None:
            gov.close()

    def _finish(self, req: InferRequest, mv: ModelVersion, outputs, t0: float, cached: bool) -> InferResponse:
        dt = _now() - t0
        m = mv.metrics
        m.ok.inc()
        m.latency.observe(dt)
        self.recent.append(dt)
        self.count_ok += 1
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
        REQUEST_ERRORS.labels(transport, err.code).inc()

    def stats(self) -> dict:
        lat = sorted(self.recent)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

        return {
            "uptime_s": round(_now() - self.started, 1),
            "requests_ok": self.count_ok,
            "requests_error": self.count_err,
            "inflight": self.inflight,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
            "queue_depth": sum(mv.batcher.queued for mv in self.repo.all_versions()),
        }
