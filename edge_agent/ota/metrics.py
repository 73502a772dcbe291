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
CANARY_REQUESTS = Counter(
    "edge_agent_ota_canary_requests_total",
    "Requests finished during a canary window, by model, role (canary or active) and outcome (ok or error).",
    ["model", "role", "outcome"],
)
CANARY_VERDICTS = Counter(
    "edge_agent_ota_canary_verdicts_total",
    "Canary verdicts, by model and verdict (promote or rollback).",
    ["model", "verdict"],
)
COMMANDS = Counter(
    "edge_agent_ota_commands_total",
    "OTA commands received (MQTT), by outcome (accepted or rejected).",
    ["outcome"],
)
POLL_ERRORS = Counter(
    "edge_agent_ota_poll_errors_total",
    "Registry polls or commands that failed before an update began, by model and error code.",
    ["model", "code"],
)
