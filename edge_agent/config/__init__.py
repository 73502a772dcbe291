"""Typed, validated daemon configuration.

YAML is loaded with line numbers kept per key path (yaml_lines.py), then
validated by pydantic models that forbid unknown keys; every error names the
key path and the line. One class per section; every field has a description
(docs/CONFIG.md is the reference written from them).

Rules between fields are ``model_validator(mode="after")`` methods: on the
section that holds all their keys (TLS certificate and key together, OTA's
registry and keys), else on ``Config`` (offload needs MQTT 5), whose messages
name every key they involve. So ``edge-agent check-config`` refuses what the
daemon could not run, before it starts; files it cannot see (certificates,
token and password files) are read and checked at start. Command-line
overrides are merged into the file's data and validated with it, by the same
model (``load_config(path, overrides)``).

Modules (one per group of sections; ``Config`` and ``load_config`` live here):
  base.py     Section (unknown keys forbidden), paths, logging, shared value checks
  server.py   server: socket, TCP listener, HTTP limits
  metrics.py  server.metrics: the TCP listener Prometheus scrapes
  runtime.py  runtime (ONNX Runtime, TensorRT, CUDA), batching, admission
  mqtt.py     mqtt, offload
  updates.py  cache, ota
  memory.py   memory: admission of model loads against available memory
  telemetry.py  telemetry: Jetson (tegrastats) and GPU (NVML) readers
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional  # noqa: F401 -- pydantic resolves field annotations here

from pydantic import Field, field_validator, model_validator

from ..credentials import read_secret  # noqa: F401 -- secrets named in the config are read there (systemd 245 fallback)
from ..errors import ConfigError
from ..yaml_lines import load_yaml_with_lines, merge_overrides, validate_with_lines  # noqa: F401 -- model_spec imports them from here
from .base import LoggingConfig, PathsConfig, Section, _one_topic_level, is_loopback  # noqa: F401
from .memory import MemoryConfig  # noqa: F401
from .mqtt import MqttConfig, MqttTlsConfig, OffloadConfig, OutboxConfig, RateLimitConfig  # noqa: F401
from .runtime import AdmissionConfig, BatchingConfig, CudaConfig, RuntimeConfig, TensorRTConfig  # noqa: F401
from .metrics import MetricsListenerConfig  # noqa: F401
from .server import ServerConfig, ServerLimitsConfig, TcpConfig, TcpTlsConfig  # noqa: F401
from .telemetry import TelemetryConfig  # noqa: F401
from .updates import CacheConfig, CanaryConfig, OtaConfig  # noqa: F401


class Config(Section):
    mode: Literal["edge", "companion"] = Field("edge", description="edge on a unit; companion on the central host taking offloaded work.")
    device_id: str = Field(default_factory=socket.gethostname, description="Device id used in MQTT topics and telemetry (one topic level: no / + # or leading $).")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="Where state lives.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="Local socket and optional TCP listener.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="ONNX Runtime session options.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batcher defaults.")
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig, description="Load shedding in front of the models: when the event loop lags, or a request arrives too late to make its deadline.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT transport.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Response cache.")
    ota: OtaConfig = Field(default_factory=OtaConfig, description="Over-the-air model updates.")
    offload: OffloadConfig = Field(default_factory=OffloadConfig, description="Offloading from edge units to companion hosts over MQTT.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="Memory admission of model loads (runtime/memory.py).")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Jetson (tegrastats) and GPU (NVML) gauges (ops/hwtelemetry.py).")

    @field_validator("device_id")
    @classmethod
    def _device_id_is_topic_safe(cls, v: str) -> str:
        return _one_topic_level(v)

    @model_validator(mode="after")
    def _offload_needs_mqtt_5(self) -> "Config":
        # Offloaded requests travel over MQTT and their answers come back by ResponseTopic +
        # CorrelationData, which only MQTT 5 has.
        if self.offload.enabled and not self.mqtt.enabled:
            raise ValueError("offload.enabled needs mqtt.enabled (offloaded requests travel over MQTT)")
        if self.offload.enabled and self.mqtt.protocol != "5":
            raise ValueError('offload.enabled needs mqtt.protocol "5" (answers come back by ResponseTopic '
                             "and CorrelationData)")
        if self.mode == "companion" and self.mqtt.enabled and self.mqtt.protocol != "5":
            raise ValueError('mode companion with mqtt.enabled needs mqtt.protocol "5" to take offloaded requests (it answers '
                             "to their ResponseTopic)")
        return self


def load_config(path: str | os.PathLike | None, overrides: Optional[Mapping] = None) -> Config:
    """Load and validate; ``None`` gives the embedded defaults.

    ``overrides`` (the command line's, nested like the file: ``{"server": {"socket": ...}}``)
    are laid over the file's data and validated with it, so they are held to every rule the
    file is, and a file may rely on them (``offload`` with ``--mqtt HOST:PORT``)."""
    if path is None:
        if not overrides:
            return Config()
        data, lines, source = {}, {}, "(defaults)"
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
        source = str(p)
        data, lines = load_yaml_with_lines(text, source)
    if overrides:
        data = merge_overrides({} if data is None else data, overrides)
    return validate_with_lines(Config, data, lines, source, overrides)
