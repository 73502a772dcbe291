"""What every config section shares: forbidding unknown keys, the paths, logging,
and the small value checks several sections use (octal modes, topic levels, loopback)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional  # noqa: F401 -- pydantic resolves field annotations here

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    models_dir: Path = Field(Path("/var/lib/edge-agent/models"), description="Model repository: {name}/{version}/model.onnx + model.yaml.")
    state_dir: Path = Field(Path("/var/lib/edge-agent/state"), description="Update state machine, active/previous pointers, TensorRT engine and timing caches.")
    cache_dir: Path = Field(Path("/var/lib/edge-agent/cache"), description="On-disk response cache (SQLite, WAL).")
    outbox_dir: Path = Field(Path("/var/lib/edge-agent/outbox"), description="MQTT messages not yet acknowledged by the broker.")


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, "localhost").
    A name other than localhost is not resolved here (check-config may run on another
    machine), so it counts as reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _octal(v):
    if isinstance(v, str):
        try:
            return int(v[2:] if v.startswith("0o") else v, 8)
        except ValueError:
            raise ValueError(f"not an octal mode: {v!r}") from None
    return v


def _topic_levels(v: str, what: str) -> str:
    """A topic name part built into the unit's topics: no wildcards, no
    $-topics, no empty level, no NUL (MQTT forbids it), no surrounding /."""
    v = v.strip("/")
    if not v or any(c in v for c in "+#\x00") or v.startswith("$") or "//" in v:
        raise ValueError(f"must be {what}: non-empty, without + # NUL or empty levels, not starting with $")
    return v


def _one_topic_level(v: str) -> str:
    """One level of a topic (the device id, a shared-subscription group): one rule, one message."""
    if not v or any(c in v for c in "/+#"):
        raise ValueError("must be non-empty and contain none of / + #")
    return v


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per line (for log shippers) instead of text.")
