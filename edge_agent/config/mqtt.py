"""``mqtt`` and ``offload``: the MQTT transport and offloading to companion hosts."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional  # noqa: F401 -- pydantic resolves field annotations here

from pydantic import Field, field_validator, model_validator

from .base import Section, _one_topic_level, _topic_levels


LABEL_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_label(text: object, what: str) -> str:
    """A label key or value (mqtt.labels, ``fleet rollout --select``); ValueError names ``what``."""
    if not isinstance(text, str) or not LABEL_RE.fullmatch(text):
        raise ValueError(f"{what} {text!r}: 1-64 characters of letters, digits, . _ -")
    return text


class RateLimitConfig(Section):
    rate: float = Field(10.0, gt=0, description="Requests per second per client (token refill rate).")
    burst: int = Field(20, gt=0, description="Bucket size: requests a client may send at once.")
    total_rate: float = Field(
        500.0, gt=0,
        description="Requests per second of all MQTT clients together. A client names its own reply namespace, the "
        "per-client key, so rotating it escapes the per-client bucket (the broker ACL only keeps it from reading the "
        "answers); this bound holds whatever identities requests claim. Size it on what the unit can serve.")
    total_burst: int = Field(1000, gt=0, description="Bucket size of total_rate: requests all clients may send at once.")


class MqttTlsConfig(Section):
    ca_file: Path | None = Field(None, description="CA certificate to verify the broker.")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key for mutual TLS.")
    insecure: bool = Field(False, description="Skip hostname verification (testing only).")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> "MqttTlsConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class OutboxConfig(Section):
    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Disk bound of the outbox; telemetry is dropped before responses.")
    max_age_s: float = Field(24 * 3600.0, gt=0, description="Messages older than this are dropped.")


class MqttConfig(Section):
    enabled: bool = Field(False, description="Serve requests over MQTT.")
    host: str = Field("localhost", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version of the daemon's connection.")
    client_id: str | None = Field(None, description="Client id; default edge-agent-{device_id}. Must be stable for the persistent session.")
    prefix: str = Field("edge", description="Topic prefix: {prefix}/{device}/infer/{model}.")
    group: str = Field("default", description="Fleet group: commands on fleet/{group}/ota.")
    qos: Literal[0, 1] = Field(1, description="QoS of subscriptions and responses.")
    keepalive_s: int = Field(30, gt=0, description="MQTT keepalive.")
    session_expiry_s: int = Field(3600, ge=0, description="MQTT 5 session expiry: requests queued at the broker survive a restart this long.")
    default_response_topic: str | None = Field(None, description="Where answers go when a request names no reply topic, or names one it may not have (reply_topic_refused); default {prefix}/{device}/responses.")
    reply_topics: List[str] = Field(
        ["{prefix}/clients/+/replies/#", "replies/#"],
        description="MQTT topic filters a requester may name as its reply topic (placeholders {prefix}, {device}); the default response topic is always allowed, and a companion also allows the edge units' {prefix}/+/offload-replies. Whatever is listed, answers never go to a topic with wildcards, starting with $, longer than max_reply_topic_bytes, under {prefix}/{device}/ or fleet/, nor to a device's infer, ota, status or telemetry topics. The rate limit is keyed on the reply topic up to the first level a wildcard of the allowing filter matched (edge/clients/bob).",
    )
    max_reply_topic_bytes: int = Field(256, gt=0, le=65535, description="Longest reply topic (UTF-8 bytes) answers are published to; longer gets reply_topic_refused.")
    controllers: List[str] = Field(
        default_factory=list,
        description="Identities whose OTA commands on {prefix}/{device}/ota and fleet/{group}/ota are obeyed: the MQTT 5 user property controller, or (MQTT 3.1.1) a top-level \"controller\" key in the command. Empty: MQTT OTA commands are refused. Only as good as the broker ACL that lets only controller accounts write those topics (systemd/mosquitto-edge.acl).",
    )
    labels: Dict[str, str] = Field(
        default_factory=dict,
        description="Key/value labels of this unit (site, hardware, ring, ...), published in its retained {prefix}/{device}/status (also in the Last Will), so `edge-agent fleet rollout --select key=value` can choose units by them. Keys and values: 1-64 characters of letters, digits, . _ -.",
    )
    max_payload_bytes: int = Field(1024 * 1024, gt=0, description="Larger request payloads get payload_too_large.")
    username: str | None = Field(None, description="Broker username.")
    password_file: Path | None = Field(None, description="File holding the password (or a systemd credential name under $CREDENTIALS_DIRECTORY). Never logged.")
    tls: MqttTlsConfig | None = Field(None, description="TLS settings; None for plain TCP.")
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, description="Per-client token bucket.")
    telemetry_interval_s: float = Field(30.0, gt=0, description="Period of {prefix}/{device}/telemetry.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay (jittered exponential backoff).")
    reconnect_max_s: float = Field(30.0, gt=0, description="Largest reconnect delay.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Disk queue for messages produced while the broker is away.")

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_topic(cls, v: str) -> str:
        # Every topic the unit serves and answers on is built from it: a
        # wildcard here put one into the default response topic (every answer
        # to it failed to publish), "$..." is the broker's own space.
        return _topic_levels(v, "one or more topic levels")

    @field_validator("group")
    @classmethod
    def _group_is_a_level(cls, v: str) -> str:
        v = _topic_levels(v, "one topic level")
        if "/" in v:
            raise ValueError("must be one topic level (no /)")
        return v

    @field_validator("reply_topics")
    @classmethod
    def _reply_topics_are_filters(cls, v: List[str]) -> List[str]:
        from ..transports.mqtt.reply_topics import split_filter

        for f in v:
            try:
                split_filter(f.format(prefix="p", device="d"))
            except (KeyError, IndexError):
                raise ValueError(f"{f!r}: the only placeholders are {{prefix}} and {{device}}") from None
        return v

    @field_validator("labels")
    @classmethod
    def _labels_are_plain(cls, v: Dict[str, str]) -> Dict[str, str]:
        # They travel in JSON and on the fleet CLI's command line (key=value): no separators, no spaces.
        for key, value in v.items():
            check_label(key, "label key")
            check_label(value, f"label {key!r}'s value")
        return v

    @field_validator("controllers")
    @classmethod
    def _controllers_are_names(cls, v: List[str]) -> List[str]:
        if any(not c or c != c.strip() for c in v):
            raise ValueError("controller identities must be non-empty, without surrounding spaces")
        return v


class BreakerConfig(Section):
    failures: int = Field(5, ge=0, description="Edge: offloads left unanswered (timeout, broker unreachable) within window_s that open the circuit breaker; while open, requests run here at once without waiting for a companion. 0: the breaker never opens.")
    window_s: float = Field(60.0, gt=0, description="Edge: how long an unanswered offload counts towards failures.")
    open_s: float = Field(30.0, gt=0, description="Edge: how long the breaker stays open before one request goes to the companions as a probe (half-open): answered, the breaker closes; not, it opens again for open_s.")


class OffloadConfig(Section):
    enabled: bool = Field(False, description="Edge: send some requests to companion hosts over MQTT instead of running them here (needs mqtt.enabled, MQTT 5).")
    models: list[str] = Field(default_factory=list, description="Edge: models whose requests may be offloaded; empty means all.")
    queue_depth_over: int = Field(64, ge=-1, description="Edge: offload a request when its model's local queue already holds more than this many requests; -1 offloads every request.")
    also_when_unavailable: bool = Field(True, description="Edge: offload requests for a model or version not served here (unknown, or failed to load) instead of answering with the error.")
    timeout_s: float = Field(2.0, gt=0, description="Edge: how long to wait for a companion's answer; past it the request runs locally, or gets the usual error if it cannot.")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Edge: the circuit breaker on offloading (docs/OPERATIONS.md \"Circuit breaker\").")
    pause_after_timeout_s: Optional[float] = Field(None, ge=0, description="Deprecated, use breaker: still accepted, as breaker {failures: 1, open_s: this} (0: failures 0, never open) when breaker is not given; a warning is logged.")
    prefix: str = Field("", description="Topic prefix of offload requests: {prefix}/offload/{model}[/{version}]; empty means top-level offload/{model}. Must match on edge units and companions.")
    group: str = Field("companion", description="Companion: shared-subscription group ($share/{group}/...); the companions of one group split the offloaded requests, each request goes to one of them.")

    @field_validator("prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, v: str) -> str:
        v = v.strip("/")
        if any(c in v for c in "+#") or v.startswith("$"):
            raise ValueError("must not contain + or # nor start with $")
        return v

    @field_validator("group")
    @classmethod
    def _group_is_topic_safe(cls, v: str) -> str:
        return _one_topic_level(v)

    @model_validator(mode="before")
    @classmethod
    def _pause_after_timeout_is_a_breaker(cls, data):
        # The old pause (one timeout stops offloading for N s) is a breaker
        # that opens on one failure: kept so existing configs mean what they did.
        p = data.get("pause_after_timeout_s") if isinstance(data, dict) else None
        if p is not None:
            logging.getLogger("edge_agent.config").warning(
                "offload.pause_after_timeout_s is deprecated: use offload.breaker (failures, window_s, open_s)")
            if "breaker" not in data and isinstance(p, (int, float)) and not isinstance(p, bool) and p >= 0:
                data = {**data, "breaker": {"failures": 1, "open_s": p} if p > 0 else {"failures": 0}}
        return data
