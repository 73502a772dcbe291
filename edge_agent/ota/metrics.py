"""Prometheus metrics of the update path (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REJECTIONS = Counter(
    "edge_agent_ota_rejections_total",
    "Updates refused or failed, by model and error code.",
    ["model", "code"],
)
DOWNLOAD_BYTES = Counter(
    "edge_agent_ota_download_bytes_total",
    "Artifact bytes received from the registry.",
)
DOWNLOAD_RETRIES = Counter(
    "edge_agent_ota_download_retries_total",
    "Download attempts that failed and were retried.",
)
TRANSITIONS = Counter(
    "edge_agent_ota_transitions_total",
    "Update state machine transitions, by model and new state.",
    ["model", "state"],
)
STATE = Gauge(
    "edge_agent_ota_state",
    "1 for the updater's current state of a model, 0 for the others.",
    ["model", "state"],
)
