"""MQTT request statistics, kept once, and the telemetry document built from them.

``RequestStats.done`` is the one call per answered request: it feeds the
Prometheus series (edge_agent_mqtt_messages_total ok/error,
edge_agent_mqtt_request_seconds) and the telemetry window together, so the
counts and latencies of the telemetry JSON (docs/MQTT.md "Telemetry") are the
same events Prometheus counted. Percentiles use ``percentile`` (nearest rank),
the calculation the service's own stats use.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Dict, Optional

import psutil
from prometheus_client import Counter, Histogram

from ...serving.service import percentile

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "edge_agent_mqtt_messages_total",
    "MQTT messages received, by outcome (ok, error, malformed, too_large, rate_limited, reply_topic_refused, "
    "duplicate, bad_topic, ota, ota_refused).",
    ["outcome"],
)
REQUEST_SECONDS = Histogram(
    "edge_agent_mqtt_request_seconds", "Time from an MQTT request's arrival to its answer being handed to the broker.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Bound once: labels() is a locked dict lookup, paid per message otherwise.
MSG_OK = MESSAGES.labels("ok")
MSG_ERROR = MESSAGES.labels("error")


class RequestStats:
    """Requests, errors and latencies of the MQTT transport since the last telemetry window."""

    __slots__ = ("requests", "errors", "latencies", "_window_start")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque = deque(maxlen=10_000)
        self._window_start = time.monotonic()

    def done(self, seconds: float, error: bool) -> None:
        """One request ran and was answered (its result or an error from the service)."""
        (MSG_ERROR if error else MSG_OK).inc()
        if error:
            self.errors += 1
        REQUEST_SECONDS.observe(seconds)
        self.latencies.append(seconds)
        self.requests += 1

    def refused(self, outcome: str) -> None:
        """One request refused before it ran (counted under its outcome label)."""
        MESSAGES.labels(outcome).inc()
        self.errors += 1

    def window(self) -> Dict[str, object]:
        """The telemetry "mqtt" fields from the counts, and start a new window."""
        now = time.monotonic()
        span = max(now - self._window_start, 1e-6)
        self._window_start = now
        lat = sorted(self.latencies)
        self.latencies.clear()
        requests, errors, self.requests, self.errors = self.requests, self.errors, 0, 0
        pct = {f"p{q}": round(percentile(lat, q / 100) * 1000, 3) for q in (50, 90, 99)} if lat else {}
        return {
            "window_s": round(span, 3),
            "requests_per_s": round(requests / span, 3),
            "errors_per_s": round(errors / span, 3),
            "latency_ms": pct,
        }


class Telemetry:
    """The JSON published on {prefix}/{device}/telemetry (documented in docs/MQTT.md)."""

    def __init__(self, device_id: str, agent_version: str, info: Callable[[], dict], group: str = "default",
                 labels: Optional[Dict[str, str]] = None) -> None:
        self.device_id = device_id
        self.group = group
        self.labels = dict(labels or {})
        self.agent_version = agent_version
        self.stats = RequestStats()
        self._info = info
        self._started = time.time()
        self._proc = psutil.Process()

    def start_cpu_measure(self) -> None:
        self._proc.cpu_percent(None)  # the first call only starts the measurement

    def safe_info(self) -> dict:
        try:
            return self._info() or {}
        except Exception:  # the daemon's hook must not take the transport down
            log.exception("mqtt: info() failed")
            return {}

    def document(self, in_flight: int, outbox, connected: bool) -> dict:
        mqtt = self.stats.window()
        info = self.safe_info()
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        mqtt.update(
            in_flight=in_flight,
            outbox_messages=len(outbox) if outbox else 0,
            outbox_bytes=outbox.nbytes if outbox else 0,
            connected=connected,
        )
        return {
            "device": self.device_id,
            "version": self.agent_version,
            "ts": time.time(),
            "uptime_s": round(time.time() - self._started, 1),
            "mqtt": mqtt,
            "process": {"cpu_percent": cpu, "rss_bytes": rss},
            "service": info,
        }

    def status(self, state: str, reason: Optional[str] = None) -> dict:
        """The retained status document (online, or offline with a reason)."""
        # group and labels in the Last Will too: the fleet inventory knows an offline unit by them.
        doc: dict = {"state": state, "device": self.device_id, "version": self.agent_version, "group": self.group,
                     "labels": self.labels}
        if state == "online":
            doc["models"] = self.safe_info().get("models", {})
            doc["since"] = time.time()
        else:
            doc["reason"] = reason
            if reason != "lost":
                doc["ts"] = time.time()
        return doc
