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
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Dict, List, Literal, Mapping, Optional  # pydantic resolves field annotations here

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .credentials import read_secret  # noqa: F401 -- secrets named in the config are read there (systemd 245 fallback)
from .errors import ConfigError
from .yaml_lines import load_yaml_with_lines, merge_overrides, validate_with_lines


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    models_dir: Path = Field(Path("/var/lib/edge-agent/models"), description="Model repository: {name}/{version}/model.onnx + model.yaml.")
    state_dir: Path = Field(Path("/var/lib/edge-agent/state"), description="Update state machine, active/previous pointers, TensorRT engine and timing caches.")
    cache_dir: Path = Field(Path("/var/lib/edge-agent/cache"), description="On-disk response cache (SQLite, WAL).")
    outbox_dir: Path = Field(Path("/var/lib/edge-agent/outbox"), description="MQTT messages not yet acknowledged by the broker.")


class TcpTlsConfig(Section):
    cert_file: Path = Field(description="PEM certificate (chain) the TCP listener presents.")
    key_file: Path = Field(description="PEM private key of cert_file.")


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


def _octal(v):
    if isinstance(v, str):
        try:
            return int(v[2:] if v.startswith("0o") else v, 8)
        except ValueError:
            raise ValueError(f"not an octal mode: {v!r}") from None
    return v


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

    _mode = field_validator("socket_mode", mode="before")(_octal)


class TensorRTConfig(Section):
    fp16: bool = Field(True, description="trt_fp16_enable: let TensorRT pick FP16 kernels.")
    int8: bool = Field(True, description="trt_int8_enable: use INT8 for QDQ (explicitly quantized) models.")
    workspace_mb: int = Field(1024, gt=0, description="trt_max_workspace_size in MiB.")
    engine_cache: bool = Field(True, description="Cache built engines under {state_dir}/trt/, keyed by model digest + GPU + TensorRT version.")
    timing_cache: bool = Field(True, description="Keep the TensorRT timing cache under {state_dir}/trt/.")
    dla_core: int | None = Field(None, ge=0, le=1, description="Run on this DLA core (Xavier has 0 and 1); None uses the GPU.")
    builder_optimization_level: int = Field(3, ge=0, le=5, description="trt_builder_optimization_level.")
    min_subgraph_size: int = Field(1, ge=1, description="trt_min_subgraph_size.")


class CudaConfig(Section):
    device_id: int = Field(0, ge=0, description="CUDA device ordinal.")
    gpu_mem_limit_mb: int | None = Field(None, gt=0, description="Arena limit for the CUDA EP; None is unlimited.")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field("HEURISTIC", description="cuDNN convolution algorithm search.")


class RuntimeConfig(Section):
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        ["tensorrt", "cuda", "cpu"],
        description="Execution providers in order of preference; unavailable ones are skipped, CPU is always the floor.",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field("all", description="ONNX Runtime graph optimization level.")
    intra_op_num_threads: int = Field(0, ge=0, description="Threads inside one operator; 0 lets ONNX Runtime choose.")
    inter_op_num_threads: int = Field(0, ge=0, description="Threads across operators; 0 lets ONNX Runtime choose.")
    allow_spinning: bool = Field(False, description="Let ONNX Runtime's idle worker threads spin-wait. Off: on a few shared cores, spinning threads take CPU from the transports.")
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig, description="TensorRT execution provider options.")
    cuda: CudaConfig = Field(default_factory=CudaConfig, description="CUDA execution provider options.")


class BatchingConfig(Section):
    max_queue_delay_us: int = Field(500, ge=0, description="Default: how long a partial batch may wait for more requests (model.yaml overrides).")
    max_queue_size: int = Field(1024, gt=0, description="Default bound of a model's queue; a full queue rejects at once with overloaded.")
    deadline_high_s: float = Field(10.0, gt=0, description="Default deadline of a high-priority request.")
    deadline_normal_s: float = Field(30.0, gt=0, description="Default deadline of a normal-priority request.")
    stuck_after_s: float = Field(60.0, gt=0, description="A batch running longer than this marks the batcher stuck: the systemd watchdog is no longer fed.")


class AdmissionConfig(Section):
    """Load shedding in front of the models (serving/admission.py). The
    daemon's event loop reads, decodes and answers every request; when it
    falls behind, every request waits longer before the daemon even sees it,
    so a full model queue is no longer the first sign of overload."""

    shed_loop_lag_ms: float = Field(
        50.0, ge=0,
        description="While a request read now may have waited longer than this for the event loop (its previous turn plus the current one so far, edge_agent_event_loop_lag_seconds), refuse new inference requests with overloaded (reason loop_lag), in proportion: at twice this lag every other one, at four times three in four. 0 never sheds on lag (the wait still counts against deadlines).",
    )
    loop_lag_interval_ms: float = Field(25.0, gt=0, le=1000, description="How often a timer checks an idle or lightly loaded event loop for lag (how late it fires); once it fires over 1 ms late, every turn of the loop is timed until the turns are short again.")
    shed_age_fraction: float = Field(
        0.5, gt=0, le=1,
        description="Refuse with overloaded (reason late) a request that reaches the service after more than this share of its deadline budget has gone since it arrived (read behind other requests): it would most likely miss its deadline, and refusing it at once leaves the time to requests that can still make theirs. 1 refuses only when the budget is spent.",
    )


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


def _topic_levels(v: str, what: str) -> str:
    """A topic name part built into the unit's topics: no wildcards, no
    $-topics, no empty level, no NUL (MQTT forbids it), no surrounding /."""
    v = v.strip("/")
    if not v or any(c in v for c in "+#\x00") or v.startswith("$") or "//" in v:
        raise ValueError(f"must be {what}: non-empty, without + # NUL or empty levels, not starting with $")
    return v


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
        from .transports.mqtt.reply_topics import split_filter

        for f in v:
            try:
                split_filter(f.format(prefix="p", device="d"))
            except (KeyError, IndexError):
                raise ValueError(f"{f!r}: the only placeholders are {{prefix}} and {{device}}") from None
        return v

    @field_validator("controllers")
    @classmethod
    def _controllers_are_names(cls, v: List[str]) -> List[str]:
        if any(not c or c != c.strip() for c in v):
            raise ValueError("controller identities must be non-empty, without surrounding spaces")
        return v


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
        description="Bound of the memo of encoded answers: a request whose bytes equal those of an earlier one answered from the cache gets the same response bytes back without being decoded or encoded (socket and TCP listener; never for a model while it is sampling). Memory only; 0 turns it off.",
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


class OffloadConfig(Section):
    enabled: bool = Field(False, description="Edge: send some requests to companion hosts over MQTT instead of running them here (needs mqtt.enabled, MQTT 5).")
    models: list[str] = Field(default_factory=list, description="Edge: models whose requests may be offloaded; empty means all.")
    queue_depth_over: int = Field(64, ge=-1, description="Edge: offload a request when its model's local queue already holds more than this many requests; -1 offloads every request.")
    also_when_unavailable: bool = Field(True, description="Edge: offload requests for a model or version not served here (unknown, or failed to load) instead of answering with the error.")
    timeout_s: float = Field(2.0, gt=0, description="Edge: how long to wait for a companion's answer; past it the request runs locally, or gets the usual error if it cannot.")
    pause_after_timeout_s: float = Field(5.0, ge=0, description="Edge: after a timeout, stop offloading busy models for this long, so a dead companion costs one timeout rather than one per request (unavailable models are still tried). 0 never pauses.")
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
        if not v or any(c in v for c in "/+#"):
            raise ValueError("must be non-empty and contain none of / + #")
        return v


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per line (for log shippers) instead of text.")


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

    @field_validator("device_id")
    @classmethod
    def _device_id_is_topic_safe(cls, v: str) -> str:
        if not v or any(c in v for c in "/+#") :
            raise ValueError("must be non-empty and contain none of / + #")
        return v

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


