"""Core Prometheus metrics (Prometheus naming: base units, _total counters).

Hot-path metrics are bound to their label values once per model version
(``ModelMetrics``) so a request pays for an observe, not a label lookup.
Queue depth is read at scrape time, costing the request path nothing.
"""

from __future__ import annotations

import psutil
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter("edge_agent_requests_total", "Inference requests by model, version and outcome (ok or error code).", ["model", "version", "outcome"])
REQUEST_ERRORS = Counter("edge_agent_request_errors_total", "Requests refused before reaching a model, by transport and error code; and every overloaded refusal, by reason (queue_full, loop_lag, late; empty for other codes).", ["transport", "code", "reason"])
REQUEST_LATENCY = Histogram("edge_agent_request_duration_seconds", "End-to-end latency inside the daemon, decode to encode.", ["model", "version"], buckets=LATENCY_BUCKETS)
QUEUE_LATENCY = Histogram("edge_agent_queue_duration_seconds", "Time a request waited in the batcher queue.", ["model", "version"], buckets=LATENCY_BUCKETS)
COMPUTE_LATENCY = Histogram("edge_agent_compute_duration_seconds", "Time of one batch in ONNX Runtime, post-processing included.", ["model", "version"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("edge_agent_batch_size", "Rows per executed batch.", ["model", "version"], buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("edge_agent_queue_depth", "Requests waiting in the batcher queue.", ["model", "version"])
MODEL_INFO = Gauge("edge_agent_model_info", "Loaded model versions; value 1, the bound provider as a label.", ["model", "version", "provider", "precision", "default"])
MODEL_ARTIFACT = Gauge("edge_agent_model_artifact_info", "The ONNX file each loaded version serves, chosen for this CPU/provider "
                       "from model.yaml artifacts (model.onnx when none are declared); value 1.", ["model", "version", "artifact", "target"])
MODEL_LOAD_FAILURES = Counter("edge_agent_model_load_failures_total", "Model versions that failed to load.", ["model"])
WARMUP_SECONDS = Gauge("edge_agent_model_warmup_seconds", "Warm-up time of a loaded model version.", ["model", "version"])
READY = Gauge("edge_agent_ready", "1 when every model is loaded and warm and the daemon takes requests.")
PROVIDER_FALLBACK = Gauge("edge_agent_provider_fallback", "1 for each loaded model version running on a provider (bound) below one ONNX Runtime offered "
                          "and that failed (wanted), e.g. TensorRT not bound; gone with the version. The counter "
                          "edge_agent_provider_fallbacks_total counts the loads.", ["model", "version", "wanted", "bound"])
BATCHER_STUCK = Gauge("edge_agent_batcher_stuck", "1 when a batcher thread is dead or has not finished a batch within stuck_after_s.", ["model", "version"])


class ModelMetrics:
    """Children of the core metrics bound to one model version."""

    __slots__ = ("ok", "latency", "queue", "compute", "batch", "model", "version", "_outcomes")

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.ok = REQUESTS.labels(model, version, "ok")
        self.latency = REQUEST_LATENCY.labels(model, version)
        self.queue = QUEUE_LATENCY.labels(model, version)
        self.compute = COMPUTE_LATENCY.labels(model, version)
        self.batch = BATCH_SIZE.labels(model, version)
        self._outcomes: dict[str, Counter] = {}

    def outcome(self, code: str):
        c = self._outcomes.get(code)
        if c is None:
            c = self._outcomes[code] = REQUESTS.labels(self.model, self.version, code)
        return c

    def remove(self) -> None:
        for metric in (REQUEST_LATENCY, QUEUE_LATENCY, COMPUTE_LATENCY, BATCH_SIZE, QUEUE_DEPTH, BATCHER_STUCK):
            try:
                metric.remove(self.model, self.version)
            except KeyError:
                pass


class _ProcessCollector:
    """CPU and memory of this process via psutil (same on x86_64 and aarch64)."""

    def __init__(self) -> None:
        self._proc = psutil.Process()

    def collect(self):
        with self._proc.oneshot():
            t = self._proc.cpu_times()
            mem = self._proc.memory_info()
            threads = self._proc.num_threads()
        c = CounterMetricFamily("edge_agent_process_cpu_seconds", "CPU time of the daemon process.", labels=["mode"])
        c.add_metric(["user"], t.user)
        c.add_metric(["system"], t.system)
        yield c
        yield GaugeMetricFamily("edge_agent_process_resident_memory_bytes", "Resident memory of the daemon process.", value=mem.rss)
        yield GaugeMetricFamily("edge_agent_process_threads", "Threads of the daemon process.", value=threads)
        vm = psutil.virtual_memory()
        yield GaugeMetricFamily("edge_agent_system_memory_available_bytes", "Memory available on the host (shared with the GPU on Jetson).", value=vm.available)
        yield GaugeMetricFamily("edge_agent_system_memory_total_bytes", "Memory of the host (shared with the GPU on Jetson).", value=vm.total)


_registered = False


def register_process_collector() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(_ProcessCollector())
        _registered = True
