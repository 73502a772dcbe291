"""``server``: the local socket, the optional TCP listener and the HTTP server's limits."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional  # noqa: F401 -- pydantic resolves field annotations here

from pydantic import Field, field_validator, model_validator

from .base import Section, _octal, is_loopback
from .metrics import MetricsListenerConfig


class TcpTlsConfig(Section):
    cert_file: Path = Field(description="PEM certificate (chain) the TCP listener presents.")
    key_file: Path = Field(description="PEM private key of cert_file.")


class TcpConfig(Section):
    enabled: bool = Field(False, description="Serve the HTTP API on a TCP port as well as the socket. Off by default on edge units.")
    host: str = Field("127.0.0.1", description="Address to bind. Anything but loopback (127.0.0.0/8, ::1, localhost) is refused unless tls and token_file are both set.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    token_file: Optional[Path] = Field(None, description="File holding the bearer token (at least 16 characters) that control endpoints over TCP need (`Authorization: Bearer <token>`), or a systemd credential name under $CREDENTIALS_DIRECTORY. None: control over TCP is refused (403); reads and inference stay open. Read at start; never logged.")
    tls: Optional[TcpTlsConfig] = Field(None, description="Serve TCP over TLS with this certificate and key; None for plain HTTP (loopback only).")

    @model_validator(mode="after")
    def _outside_needs_tls_and_token(self) -> "TcpConfig":
        # A --tcp override is merged into the file's data first, so it is held to this too.
        if self.enabled and not is_loopback(self.host) and (self.tls is None or self.token_file is None):
            raise ValueError(f"host {self.host!r} is not loopback: serving TCP beyond this machine needs "
                             "both server.tcp.tls and server.tcp.token_file")
        return self


class ServerLimitsConfig(Section):
    """What one HTTP connection may hold, and for how long (docs/PROTOCOL.md "Limits")."""

    max_url_bytes: int = Field(8 * 1024, gt=0, description="Longest request URL (path and query); longer is refused with uri_too_long (414) as its bytes arrive, then the connection closes.")
    max_head_bytes: int = Field(64 * 1024, gt=0, description="Largest request head (request line and headers); larger is refused with header_too_large (431) as its bytes arrive (within one socket read), then the connection closes.")
    header_timeout_s: float = Field(10.0, gt=0, description="A request head must be complete this long after its first byte; else request_timeout (408) and close.")
    body_timeout_s: float = Field(10.0, gt=0, description="Window over which a request body must progress by at least body_min_bytes_per_s; else request_timeout (408) and close.")
    body_min_bytes_per_s: int = Field(1024, ge=0, description="Slowest accepted request body, averaged over body_timeout_s (0: only a body that stalls completely times out).")
    request_max_s: float = Field(120.0, gt=0, description="Longest a request may take to arrive, head and body, from its first byte; else request_timeout (408) and close. Bounds a body sent just above body_min_bytes_per_s.")
    idle_timeout_s: float = Field(60.0, gt=0, description="A connection with no request in progress and no answer pending is closed after this long (keep-alive idle, or nothing sent since connecting).")
    send_timeout_s: float = Field(30.0, gt=0, description="A client that lets answers pile up (write buffer above its high-water mark) without draining them for this long is cut.")
    max_connections: int = Field(4096, gt=0, description="Most open HTTP connections (socket and TCP together); never more than the descriptor limit minus reserved_fds. At the cap, the connection waiting longest on its client (idle, or in a request head) is closed to make room (a head gets overloaded, 503); with every connection busy, the new one is answered overloaded and closed.")
    reserved_fds: int = Field(128, ge=0, description="Descriptors kept out of the connection cap for models, the cache's SQLite files, MQTT, logs and reloads.")


class ServerConfig(Section):
    socket: Path = Field(Path("/run/edge-agent/agent.sock"), description="Unix socket serving the KServe v2 HTTP API.")
    socket_mode: int = Field(0o660, description="Permission bits of the socket file, e.g. 0660 (octal, as a string or YAML octal).")
    socket_group: str | None = Field(None, description="Group owning the socket (e.g. edge-agent); None keeps the process group.")
    admin_group: Optional[str] = Field("edge-agent-admin", description="Group whose members (primary or supplementary group of the connecting process) may use the control endpoints over the socket: reload, promote, rollback. Root and the daemon's own user always may; None: only they. Everyone who reaches the socket may read and infer.")
    tcp: TcpConfig = Field(default_factory=TcpConfig, description="Optional TCP listener (loopback, or TLS + token).")
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest request body accepted; larger gets payload_too_large.")
    drain_timeout_s: float = Field(10.0, ge=0, description="On SIGTERM, how long in-flight requests may take to finish.")
    limits: ServerLimitsConfig = Field(default_factory=ServerLimitsConfig, description="Per-connection limits and timeouts of the HTTP server, and the connection cap.")
    metrics: MetricsListenerConfig = Field(default_factory=MetricsListenerConfig, description="Optional TCP listener serving only /metrics and health, for Prometheus (the limits above apply to it too).")

    _mode = field_validator("socket_mode", mode="before")(_octal)

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> "ServerConfig":
        m, t = self.metrics, self.tcp
        if m.enabled and t.enabled and m.port and m.port == t.port:
            raise ValueError(f"server.metrics.port and server.tcp.port are both {m.port}: the metrics listener needs a port of its own")
        return self
