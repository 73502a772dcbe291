"""``telemetry``: reading the Jetson's and the GPU's state (ops/hwtelemetry.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Section


class TelemetryConfig(Section):
    """Jetson (tegrastats) and dGPU (NVML) gauges. Hardware that is absent
    exports no gauge and is not an error, so the same config serves units and
    companion hosts."""

    enabled: bool = Field(True, description="Read tegrastats on a Jetson and NVML on a host with an NVIDIA GPU, in helper threads; export edge_agent_jetson_* / edge_agent_gpu_* gauges (docs/OPERATIONS.md).")
    tegrastats: str = Field("tegrastats", description="The tegrastats command, looked up on PATH (JetPack installs /usr/bin/tegrastats); not found: no Jetson gauges.")
    nvml: bool = Field(True, description="Poll NVML (the optional nvidia-ml-py package, extra `nvml`) for dGPU utilisation, memory, temperature, power and throttling; without it or a driver: no GPU gauges.")
    interval_ms: int = Field(1000, ge=100, le=60000, description="How often tegrastats prints and NVML is polled.")
    stale_after_s: float = Field(5.0, gt=0, description="A reading older than this is not exported (the gauges go absent while tegrastats is down or restarting).")
    restart_min_s: float = Field(1.0, gt=0, description="First delay before starting a tegrastats that exited again; doubles per failed start (with jitter) up to restart_max_s.")
    restart_max_s: float = Field(60.0, gt=0, description="Longest delay between tegrastats restarts.")
    throttle_temp_c: float = Field(
        95.0, gt=0,
        description="edge_agent_jetson_thermal_throttling is 1 while any tegrastats sensor is at or above this. tegrastats does not print throttling itself: set it to your module's software-throttling trip point (its thermal design guide; the default sits a little under Xavier's and Orin's).",
    )

    @model_validator(mode="after")
    def _restart_bounds(self) -> "TelemetryConfig":
        if self.restart_min_s > self.restart_max_s:
            raise ValueError("telemetry.restart_min_s must not exceed telemetry.restart_max_s")
        return self
