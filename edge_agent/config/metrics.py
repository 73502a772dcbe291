"""``server.metrics``: the optional TCP listener a Prometheus scrapes.

Prometheus cannot scrape a Unix socket, so a unit watched from a central
Prometheus needs a TCP port; this one answers only ``/metrics`` and the health
routes (never inference or control), so it may face the site network without
the main TCP listener's TLS and token (docs/OPERATIONS.md "Scraping").
"""

from __future__ import annotations

from pydantic import Field

from .base import Section


class MetricsListenerConfig(Section):
    enabled: bool = Field(False, description="Serve /metrics and the health routes (/v2/health/live, /v2/health/ready) on a TCP port of their own, for Prometheus. Off by default on edge units; on in the companion example (systemd/companion.yaml).")
    host: str = Field("127.0.0.1", description="Address to bind: loopback for a Prometheus agent on the unit; the unit's site-network address (or 0.0.0.0) for a central Prometheus. Only metrics and health are served there, no inference or control; firewall it to the Prometheus host.")
    port: int = Field(9464, ge=0, le=65535, description="TCP port (0 picks a free one; the log line `serving metrics on` names it).")
