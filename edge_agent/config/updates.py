"""``cache`` and ``ota``: the response cache and over-the-air model updates."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional  # noqa: F401 -- pydantic resolves field annotations here

from pydantic import Field, model_validator

from .base import Section


class CacheConfig(Section):
    enabled: bool = Field(True, description="Response cache on/off for all models (model.yaml can turn it off per model).")
    memory_max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="Bound of the in-memory LRU tier.")
    disk_max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="Bound of the SQLite tier, on its rows and on its files on disk (database + WAL + WAL index, which may exceed it by 64 KiB: an empty store's pages); past it the least recently used rows are evicted and the file shrinks. 0 disables the disk tier.")
    default_ttl_s: float = Field(24 * 3600.0, gt=0, description="Time to live of an entry unless model.yaml says otherwise.")
    sample_below_hit_ratio: float = Field(
        0.01, ge=0, le=1,
        description="When a model's hits fall below this share of its requests (over sample_window requests), only a 1/64 sample of them, chosen by a hash of the input values, is keyed, looked up and stored, in one window of sample_window requests per second of traffic or per 8 windows (the rest run as with the cache off, without single flight), until inputs repeat again: a stream of inputs that never repeat then costs the cache almost nothing. 0 looks up every request.",
    )
    sample_window: int = Field(4096, ge=256, description="Requests per verdict of sample_below_hit_ratio.")
    memo_max_bytes: int = Field(
        8 * 1024 * 1024, ge=0,
        description="Bound of the memo of encoded answers: a request whose bytes equal those of an earlier one answered from the cache gets the same response bytes back without being decoded or encoded (socket and TCP listener; requests up to 256 KiB, so a camera image is not digested twice on the event loop; never for a model while it is sampling). Memory only; 0 turns it off.",
    )


class CanaryConfig(Section):
    share: float = Field(0.05, ge=0, le=1, description="Share of live requests routed to the canary version.")
    min_requests: int = Field(200, ge=1, description="Canary requests needed before a verdict.")
    max_seconds: float = Field(600.0, gt=0, description="Window after which a verdict is given on what was seen.")
    max_error_rate_increase: float = Field(0.01, ge=0, description="Roll back when canary error rate exceeds active's by more than this.")
    max_p99_ratio: float = Field(1.5, gt=0, description="Roll back when canary p99 latency exceeds active's by this factor.")


class OtaConfig(Section):
    enabled: bool = Field(False, description="Pull model updates from the registry.")
    registry_url: str | None = Field(None, description="Base URL of the registry tree.")
    channel: str = Field("stable", description="Channel to follow.")
    models: list[str] = Field(default_factory=list, description="Models to follow; empty means every served model.")
    poll_interval_s: float = Field(300.0, gt=0, description="How often to check the channel.")
    public_keys: list[Path] = Field(default_factory=list, description="Pinned Ed25519 public keys that may sign manifests.")
    keep_versions: int = Field(3, ge=2, description="Versions kept on disk per model; active and previous are never deleted.")
    bandwidth_limit_bps: int | None = Field(None, gt=0, description="Download cap in bytes per second.")
    max_attempts: int = Field(5, ge=1, description="Attempts per step before the update is marked failed.")
    canary: CanaryConfig = Field(default_factory=CanaryConfig, description="Live-traffic trial of a staged version.")

    @model_validator(mode="after")
    def _enabled_needs_registry_and_keys(self) -> "OtaConfig":
        if self.enabled and not self.registry_url:
            raise ValueError("ota.enabled needs ota.registry_url")
        if self.enabled and not self.public_keys:
            raise ValueError("ota.enabled needs at least one pinned key in ota.public_keys")
        return self
