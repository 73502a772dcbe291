"""MQTT transport: KServe v2 requests on ``{prefix}/{device}/infer/{model}[/{version}]``.

One more adapter over the inference service: decode the message into an
InferRequest, call ``service.infer``, encode the InferResponse (or the error)
back to the request's reply path. MQTT 5 uses ResponseTopic + CorrelationData;
MQTT 3.1.1 clients put ``reply_to`` and ``id`` in ``parameters``. QoS 1
requests are acknowledged only after their answer is handed to the broker or
the outbox, so a daemon that dies mid-request gets the request again.

Every message is acknowledged exactly once, whatever happens while it is
handled: the broker lets only ``receive_maximum`` (256) unacknowledged messages
be in flight to us, so one that is never acknowledged holds a slot until the
session expires, and enough of them stop all delivery. Every request gets one
answer (its result or a coded error); reply topics are checked by
``ReplyTopics`` (reply_topics.py) before anything is published there.
docs/MQTT.md is the wire reference.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import struct
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import orjson
import psutil
from prometheus_client import Counter, Histogram

from ..compat import slotted_dataclass
from ..config import MqttConfig
from ..errors import EdgeError, MalformedRequest, PayloadTooLarge, RateLimited, ReplyTopicRefused
from ..serving.codec import HEADER_LENGTH, parse_priority, decode_request, encode_response
from .mqtt_bridge import BrokerSettings, PahoBridge, PublishProperties, TlsSettings, read_password
from .outbox import KIND_RESPONSE, KIND_TELEMETRY, Outbox, OutMessage
from .ratelimit import TokenBuckets
from .reply_topics import ReplyTopics

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "edge_agent_mqtt_messages_total",
    "MQTT messages received, by outcome (ok, error, malformed, too_large, rate_limited, reply_topic_refused, "
    "duplicate, bad_topic, ota, ota_refused).",
    ["outcome"],
)
PUBLISH_FAILURES = Counter(
    "edge_agent_mqtt_publish_failures_total",
    "Answers or telemetry that could not be handed to paho or the outbox (logged; the request is acknowledged all the same).",
)
REQUEST_SECONDS = Histogram(
    "edge_agent_mqtt_request_seconds", "Time from an MQTT request's arrival to its answer being handed to the broker.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Bound once: labels() is a locked dict lookup, paid per message otherwise.
_MSG_OK = MESSAGES.labels("ok")
_MSG_ERROR = MESSAGES.labels("error")
# Error code -> outcome label of a request refused before it ran.
_OUTCOMES = {
    "payload_too_large": "too_large", "rate_limited": "rate_limited", "reply_topic_refused": "reply_topic_refused",
    "internal": "error",
}

# Answers to recent QoS 1 requests, by (reply topic, correlation): a broker redelivery
# (DUP) of one of them is not run again. Bounded in count and in payload bytes; a
# larger answer keeps only its key.
_DEDUP_SIZE = 4096
_ANSWERS_MAX_BYTES = 4 * 1024 * 1024
_ANSWER_KEEP_MAX = 256 * 1024
# Decoding a hostile body may raise these from numpy/struct/recursion rather than an
# EdgeError: answered as malformed_request (MemoryError as payload_too_large).
_DECODE_ERRORS = (RecursionError, ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError, struct.error)
# After a reconnect, the same bytes under a known key are a broker's resend this long
# (a broker restored after a crash, and clients re-sending to it, do so at once).
_REDELIVERY_WINDOW_S = 60.0
# Unacknowledged outbox messages on the wire at once while flushing.
_FLUSH_WINDOW = 128


@slotted_dataclass
class _Reply:
    topic: str
    correlation: bytes | None
    id: str | None
    qos: int
    v5: bool
    expires: float | None  # wall clock, from the request's Message Expiry Interval
    dedup: str | None = None
    running: bool = False  # registered in _running: redeliveries wait for this run
    digest: int | None = None  # hash of the request's payload


class _Answered:
    """A recent answer, for a redelivery of its request. ``confirmed``: the connection
    generation on which the broker took it (None while paho or the outbox hold it);
    ``digest``: the request's payload hash (None: not known, from the last run's outbox)."""

    __slots__ = ("msg", "confirmed", "size", "digest")

    def __init__(self, msg: OutMessage | None, size: int, digest: int | None) -> None:
        self.msg = msg
        self.confirmed: int | None = None
        self.size = size
        self.digest = digest


def _user_props(props) -> dict[str, str]:
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    return {k.lower(): v for k, v in pairs} if pairs else {}


def _short(value: object, limit: int = 120) -> object:
    """A client-chosen value for a log line (logged with %r: escaped), cut to a readable length."""
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


def _lenient_params(payload: bytes) -> dict:
    """parameters of a body that failed to decode, to find a 3.1.1 reply path."""
    try:
        doc = orjson.loads(payload)
    except Exception:  # JSONDecodeError, or MemoryError on a hostile body: no reply path then
        return {}
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        return {}
    if "id" not in params and isinstance(doc.get("id"), (str, int)):
        params = {**params, "id": doc["id"]}
    return params


class MqttTransport:
    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        service,
        outbox_dir: Path,
        info: Callable[[], dict],
        agent_version: str,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.service = service
        self.info = info
        self.agent_version = agent_version
        self.base = f"{cfg.prefix}/{device_id}"
        self.infer_prefix = f"{self.base}/infer/"
        self.status_topic = f"{self.base}/status"
        self.telemetry_topic = f"{self.base}/telemetry"
        self.ota_topic = f"{self.base}/ota"
        self.ota_state_topic = f"{self.base}/ota/state"
        self.fleet_ota_topic = f"fleet/{cfg.group}/ota"
        self.default_response_topic = cfg.default_response_topic or f"{self.base}/responses"
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        self.outbox_dir = Path(outbox_dir)
        rl = cfg.rate_limit
        self._limiter = TokenBuckets(rl.rate, rl.burst, total_rate=rl.total_rate, total_burst=rl.total_burst)
        self._reply_topics = self._make_reply_topics()
        self._controllers = frozenset(cfg.controllers)
        # dedup key -> payload hash of the request running under it; and the acks (mid, qos,
        # generation) of its redeliveries, sent with its answer (allocated only for those).
        self._running: dict[str, int | None] = {}
        self._waiting: dict[str, list[tuple[int, int, int]]] = {}
        self._answered: OrderedDict[str, _Answered] = OrderedDict()
        self._answered_bytes = 0
        self._answers_sent = 0  # lets _on_request tell whether a failing request was answered
        self._connected_at = 0.0  # monotonic time of the current connection's CONNACK
        self._tasks: set[asyncio.Task] = set()
        # mid -> message paho has not yet confirmed (PUBACK for QoS 1).
        self._pending: dict[int, OutMessage] = {}
        self._pending_drained = asyncio.Event()
        self._flush_after = 0
        self._draining = False
        self._flush_task: asyncio.Task | None = None
        self._telemetry_task: asyncio.Task | None = None
        self._ota_callbacks: list[Callable] = []
        self._ota_state: dict[str, dict] = {}
        self._stopping = False
        self._started = time.time()
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._counts = {"requests": 0, "errors": 0}
        self._last_telemetry = time.monotonic()
        self._proc = psutil.Process()
        self._bridge: PahoBridge | None = None
        self._outbox: Outbox | None = None
        # Edge side of offloading: our requests to companions, by CorrelationData.
        self.offload_reply_topic: str | None = None
        self._answers: dict[bytes, asyncio.Future] = {}
        # Companion side: shared subscriptions to {offload prefix}{model} per served model.
        self.offload_prefix: str | None = None
        self._offload_group = ""
        self._offload_models: Callable[[], Iterable[str]] | None = None
        self._offload_subscribed: set[str] = set()
        self._offload_task: asyncio.Task | None = None

    def _make_reply_topics(self, offload_prefix: str | None = None) -> ReplyTopics:
        c = self.cfg
        return ReplyTopics(
            c.reply_topics, prefix=c.prefix, device=self.device_id, default_topic=self.default_response_topic,
            max_bytes=c.max_reply_topic_bytes, offload_prefix=offload_prefix,
        )

    # --- lifecycle -----------------------------------------------------------

    def _settings(self) -> BrokerSettings:
        c = self.cfg
        tls = None
        if c.tls is not None:
            tls = TlsSettings(c.tls.ca_file, c.tls.cert_file, c.tls.key_file, c.tls.insecure)
        return BrokerSettings(
            host=c.host, port=c.port, client_id=self.client_id, protocol=c.protocol, keepalive_s=c.keepalive_s,
            persistent=True, session_expiry_s=c.session_expiry_s, tls=tls, username=c.username,
            password=read_password(c.password_file), reconnect_min_s=c.reconnect_min_s, reconnect_max_s=c.reconnect_max_s,
        )

    async def start(self) -> None:
        """Returns at once; the connection is made (and remade) in the background.

        Raises ConfigError for unreadable TLS files or password file.
        """
        self._loop = asyncio.get_running_loop()
        self._outbox = Outbox(self.outbox_dir, self.cfg.outbox.max_bytes, self.cfg.outbox.max_age_s)
        self._draining = len(self._outbox) > 0
        # Answers waiting from the last run: their requests, redelivered, are not run again.
        for key in self._outbox.dedup_keys():
            self._remember(key, None, None)
        will = (self.status_topic, self._status_payload("offline", reason="lost"), 1, True)
        self._bridge = PahoBridge(
            self._settings(), on_connect=self._on_connect, on_disconnect=self._on_disconnect,
            on_message=self._on_message, on_publish=self._on_publish, will=will, manual_ack=True, name="transport",
        )
        self._bridge.start()
        self._telemetry_task = self._loop.create_task(self._telemetry_loop(), name="mqtt-telemetry")
        if self.offload_prefix is not None:
            self._offload_task = self._loop.create_task(self._offload_refresh_loop(), name="mqtt-offload-subscriptions")
        log.info("mqtt: serving %s#, broker %s:%d (MQTT %s)", self.infer_prefix, self.cfg.host, self.cfg.port, self.cfg.protocol)

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish in-flight requests, publish offline status, flush, disconnect."""
        self._stopping = True
        if self._telemetry_task is not None:
            self._telemetry_task.cancel()
        if self._offload_task is not None:
            self._offload_task.cancel()
        if self._tasks:
            done, not_done = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in not_done:
                t.cancel()
            if not_done:
                log.warning("mqtt: cancelled %d requests still running at stop (the broker will redeliver them)", len(not_done))
        if self._bridge is None:
            return
        if self._bridge.connected:
            info = self._bridge.publish(self.status_topic, self._status_payload("offline", reason="stopped"), 1, True)
            self._track(info.mid, OutMessage(self.status_topic, b"", 1, kind="status"))
            try:
                await asyncio.wait_for(self._wait_pending_empty(), timeout)
            except asyncio.TimeoutError:
                log.warning("mqtt: %d publishes not acknowledged at stop", len(self._pending))
        self._persist_pending()
        if self._flush_task is not None:
            self._flush_task.cancel()
        await self._bridge.stop(timeout)
        self._outbox.close()

    async def _wait_pending_empty(self) -> None:
        while self._pending:
            self._pending_drained.clear()
            await self._pending_drained.wait()

    def _persist_pending(self) -> None:
        # Answers paho still holds unacknowledged would die with the process.
        for m in self._pending.values():
            if m.seq is None and m.kind in (KIND_RESPONSE, KIND_TELEMETRY):
                self._outbox.put(m)
        self._pending.clear()
        self._maybe_drained()

    # --- connection events ---------------------------------------------------

    def _on_connect(self, session_present: bool) -> None:
        self._connected_at = time.monotonic()
        qos = self.cfg.qos
        self._bridge.subscribe([(f"{self.infer_prefix}#", qos), (self.ota_topic, qos), (self.fleet_ota_topic, qos)])
        if self.offload_reply_topic is not None:
            self._bridge.subscribe([(self.offload_reply_topic, 1)])
        if self.offload_prefix is not None:
            self._offload_subscribed = set()
            self._refresh_offload_subscriptions()
        self._bridge.publish(self.status_topic, self._status_payload("online"), 1, True)
        if self._ota_state:
            self._publish_ota_doc()
        # paho re-sends its own unacknowledged messages; the outbox is walked again
        # from the start, skipping rows paho still holds.
        self._flush_after = 0
        if len(self._outbox):
            self._draining = True
            self._kick_flush()

    def _on_disconnect(self) -> None:
        # QoS 0 packets not yet written are lost with the socket; outbox rows among
        # them are sent again by the next flush.
        for mid in [mid for mid, m in self._pending.items() if m.qos == 0]:
            del self._pending[mid]
        self._maybe_drained()

    def _on_publish(self, mid: int) -> None:
        m = self._pending.pop(mid, None)
        if m is not None:
            if m.seq is not None:
                self._outbox.remove(m.seq)
            if m.dedup is not None:
                self._confirmed(m)
        self._maybe_drained()

    def _track(self, mid: int, m: OutMessage) -> None:
        """Wait for paho's word that m is out (written for QoS 0, PUBACK for QoS 1)."""
        if not self._pending:
            self._bridge.publish_events(True)
        self._pending[mid] = m

    def _maybe_drained(self) -> None:
        if not self._pending:
            self._pending_drained.set()
            self._bridge.publish_events(False)

    # --- outgoing ------------------------------------------------------------

    def _props(self, m: OutMessage) -> PublishProperties | None:
        if not m.props and m.expires is None:
            return None
        corr = user = expiry = None
        if m.props:
            if m.props.get("correlation") is not None:
                corr = bytes.fromhex(m.props["correlation"])
            if m.props.get("user"):
                user = [tuple(kv) for kv in m.props["user"]]
        if m.expires is not None and m.seq is not None:
            # Only queued messages carry an expiry: the rest is sent at once.
            expiry = max(1, int(m.expires - time.time()))
        if corr is None and user is None and expiry is None:
            return None
        return PublishProperties(correlation=corr, user=user, expiry_s=expiry)

    def _send(self, m: OutMessage) -> bool:
        """Hand m to paho, or to the outbox while the broker is away. Never raises: the
        caller still has to acknowledge the request (paho raises ValueError for a topic it
        will not publish to; SQLite can fail) -- False then, logged and counted."""
        try:
            b = self._bridge
            if b.connected and not self._draining:
                info = b.publish(m.topic, m.payload, m.qos, m.retain, self._props(m))
                if info.rc == 0:
                    if m.qos > 0:
                        self._track(info.mid, m)
                    return True
                if m.qos > 0:
                    # paho keeps QoS 1 and sends it after the reconnect.
                    self._track(info.mid, m)
                    return True
            self._outbox.put(m)
            if b.connected:
                self._kick_flush()
            return True
        except Exception as e:
            PUBLISH_FAILURES.inc()
            log.error("mqtt: could not publish a %s to %r: %s: %r", m.kind, m.topic[:200], type(e).__name__, str(e)[:200])
            return False

    def _kick_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._loop.create_task(self._flush(), name="mqtt-outbox-flush")

    async def _flush(self) -> None:
        """Send outbox rows in order; each is deleted on its PUBACK."""
        while self._bridge.connected and not self._stopping:
            held = {m.seq for m in self._pending.values() if m.seq is not None}
            batch = self._outbox.peek(self._flush_after, _FLUSH_WINDOW)
            if not batch:
                self._draining = False
                return
            for m in batch:
                while len(self._pending) >= _FLUSH_WINDOW and self._bridge.connected:
                    self._pending_drained.clear()
                    try:
                        await asyncio.wait_for(self._pending_drained.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
                if not self._bridge.connected:
                    return
                self._flush_after = m.seq
                if m.seq in held:
                    continue
                info = self._bridge.publish(m.topic, m.payload, m.qos, m.retain, self._props(m))
                self._track(info.mid, m)
            await asyncio.sleep(0)

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        doc: dict = {"state": state, "device": self.device_id, "version": self.agent_version}
        if state == "online":
            doc["models"] = self._safe_info().get("models", {})
            doc["since"] = time.time()
        else:
            doc["reason"] = reason
            if reason != "lost":
                doc["ts"] = time.time()
        return orjson.dumps(doc)

    def _safe_info(self) -> dict:
        try:
            return self.info() or {}
        except Exception:  # the daemon's hook must not take the transport down
            log.exception("mqtt: info() failed")
            return {}

    # --- incoming ------------------------------------------------------------

    def _on_message(self, msg) -> None:
        """Every message is acknowledged exactly once: here, or by the request's task."""
        gen = self._bridge.generation
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a broker forwards valid UTF-8 only; never trust it blindly
            topic = None
        if self._stopping and (topic is None or topic != self.offload_reply_topic):
            return  # not acknowledged: the broker redelivers it to the next run
        owned = False
        try:
            if topic is None:
                MESSAGES.labels("bad_topic").inc()
            elif topic == self.offload_reply_topic:
                self._on_offload_answer(msg)
            elif topic.startswith(self.infer_prefix):
                owned = self._on_request(msg, gen, topic[len(self.infer_prefix):])
            elif self.offload_prefix is not None and topic.startswith(self.offload_prefix):
                # Offloaded by an edge unit: the same request, on a shared topic.
                owned = self._on_request(msg, gen, topic[len(self.offload_prefix):], self.offload_prefix)
            elif topic in (self.ota_topic, self.fleet_ota_topic):
                self._on_ota(msg)
            else:
                MESSAGES.labels("bad_topic").inc()
        except Exception:
            log.exception("mqtt: unexpected error handling a message on %r", topic)
            _MSG_ERROR.inc()
        finally:
            if not owned:
                self._ack(msg.mid, msg.qos, gen)

    def _ack(self, mid: int, qos: int, gen: int) -> None:
        try:
            self._bridge.ack(mid, qos, gen)
        except Exception:  # the connection is going; the broker redelivers on the next one
            log.exception("mqtt: acknowledging message %d failed", mid)

    def _on_request(self, msg, gen: int, rest: str, topic_prefix: str | None = None) -> bool:
        """Answer or refuse one request. True when a task now owns the message's ack.

        Whatever the body, the properties or the codec do (an EdgeError, or RecursionError,
        MemoryError, ValueError... from a hostile body), the request gets exactly one answer:
        on its reply topic when that is allowed, else on the default response topic. Should
        this code itself fail before answering, the request still gets an ``internal`` error.
        """
        answered = self._answers_sent
        try:
            return self._handle_request(msg, gen, rest, topic_prefix)
        except Exception:
            log.exception("mqtt: handling a request on %r failed unexpectedly", msg.topic)
            _MSG_ERROR.inc()
            if self._answers_sent == answered:
                props = msg.properties if self._bridge.v5 else None
                corr = getattr(props, "CorrelationData", None) if props is not None else None
                reply = _Reply(self.default_response_topic, corr, None, min(msg.qos, 1), self._bridge.v5, None)
                self._answer_error(reply, EdgeError("internal error while handling the request"))
            return False

    def _handle_request(self, msg, gen: int, rest: str, topic_prefix: str | None) -> bool:
        t0 = time.monotonic()
        props = msg.properties if self._bridge.v5 else None
        user = _user_props(props)
        reply_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        payload = msg.payload
        req = None
        err: EdgeError | None = None
        params: dict = {}
        try:
            parts = rest.split("/")
            if len(parts) not in (1, 2) or not all(parts):
                raise MalformedRequest(f"topic must be {topic_prefix or self.infer_prefix}{{model}}[/{{version}}], got {msg.topic!r}")
            if len(payload) > self.cfg.max_payload_bytes:
                raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds the limit of {self.cfg.max_payload_bytes}")
            hl = user.get(HEADER_LENGTH.lower())
            try:
                header_length = int(hl) if hl is not None else None
            except ValueError:
                raise MalformedRequest(f"user property {HEADER_LENGTH} must be an integer, got {hl[:40]!r}") from None
            decoded = decode_request(payload, parts[0], parts[1] if len(parts) == 2 else None, header_length)
            params = decoded.parameters
            self._apply_user_props(decoded, user)
            req = decoded
        except EdgeError as e:
            err = e
        except Exception as e:
            err = self._decode_failure(e, msg.topic)
        if req is None and not params and not (reply_topic and correlation is not None) and err.code != "payload_too_large":
            params = _lenient_params(payload)
        rid = params.get("id") if isinstance(params.get("id"), (str, int)) else None
        rid = str(rid) if rid is not None else (req.id if req is not None else None)

        # Where the answer may go (reply_topics.py); a refused topic is answered on the default one.
        asked = reply_topic or params.get("reply_to")
        topic = namespace = self.default_response_topic
        if asked is not None and asked != "":
            try:
                namespace = self._reply_topics.check(asked)
                topic = asked
            except ReplyTopicRefused as e:
                err = e
        reply = _Reply(
            topic=topic, correlation=correlation, id=rid, qos=min(msg.qos, 1), v5=self._bridge.v5,
            expires=time.time() + expiry if expiry else None,
        )
        if msg.qos > 0 and (correlation is not None or rid is not None):
            key = f"{topic}\0" + (f"c:{correlation.hex()}" if correlation is not None else f"i:{rid}")
            digest = hash(payload if type(payload) is bytes else bytes(payload))
            if key in self._running or key in self._answered:
                owned = self._redelivered(key, msg, gen, digest)
                if owned is not None:
                    return owned
            reply.dedup, reply.digest = key, digest
        # The namespace, not an identity the client states: see docs/MQTT.md "Rate limit".
        client = f"reply:{namespace}"
        if not self._limiter.allow(client):
            err = RateLimited(f"reply namespace {namespace!r} exceeds {self.cfg.rate_limit.rate:g} requests/s (burst {self.cfg.rate_limit.burst})")
        if err is not None:
            outcome = _OUTCOMES.get(err.code, "malformed")
            MESSAGES.labels(outcome).inc()
            self._counts["errors"] += 1
            if outcome == "reply_topic_refused":
                log.warning("mqtt: refused the reply topic of a request on %r: %r", msg.topic, err.message)
            else:
                log.info("mqtt: rejected request on %r from %r: %s (%r)", msg.topic, client, err.code, err.message)
            self._answer_error(reply, err)
            return False
        req.client = client
        # Deadlines count from receipt (the service adds how long the message
        # may have waited for the event loop before this callback ran).
        req.arrived = t0
        if reply.id is not None and req.id is None:
            req.id = reply.id
        if expiry:
            req.timeout_s = min(req.timeout_s or expiry, float(expiry))
        if not reply.v5:
            req.binary_outputs = frozenset()  # 3.1.1 has no user property to carry the header length
        if reply.dedup is not None and reply.dedup not in self._running:
            self._running[reply.dedup] = reply.digest
            reply.running = True
        task = self._loop.create_task(self._run(req, reply, msg.mid, msg.qos, gen, t0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _decode_failure(self, e: Exception, topic: str) -> EdgeError:
        """A non-EdgeError out of decoding: still answered, with a code, logged and counted."""
        if isinstance(e, MemoryError):
            log.warning("mqtt: request on %r needs more memory than there is to decode", topic)
            return PayloadTooLarge("the request needs more memory to decode than the daemon can give it")
        if isinstance(e, _DECODE_ERRORS):
            log.warning("mqtt: request on %r could not be decoded: %s: %r", topic, type(e).__name__, str(e)[:200])
            return MalformedRequest(f"the request could not be decoded ({type(e).__name__})")
        log.exception("mqtt: decoding a request on %r failed unexpectedly", topic)
        return EdgeError(f"internal error while decoding the request: {type(e).__name__}")

    def _redelivered(self, key: str, msg, gen: int, digest: int) -> bool | None:
        """A broker redelivery of a request seen before is never run twice.

        A redelivery is a message the broker flags DUP, or the same bytes under the same key
        within _REDELIVERY_WINDOW_S of a reconnect: a broker restored from its persistence file
        after a crash sends again, unflagged, what the file had not recorded as sent, and
        forwards as new the requests clients re-send to it. Elsewhere the same key is a new
        request (a client reusing a correlation).
        Still running: acknowledged with the original's answer (True: the run owns the ack).
        Answered: acknowledged now (False); the answer is published again only if the broker
        took it on an earlier connection than this one (a broker that crashed since may have
        lost it); while paho or the outbox still hold it, or the broker took it on this very
        connection, it reaches the requester anyway. None: a new request (run it).
        """
        resend_window = gen > 1 and time.monotonic() - self._connected_at < _REDELIVERY_WINDOW_S
        if key in self._running:
            if not (msg.dup or (resend_window and self._running[key] == digest)):
                return None
            self._waiting.setdefault(key, []).append((msg.mid, msg.qos, gen))
            MESSAGES.labels("duplicate").inc()
            return True
        e = self._answered.get(key)
        if e is None or not (msg.dup or (resend_window and e.digest == digest)):
            return None
        MESSAGES.labels("duplicate").inc()
        m = e.msg
        if e.confirmed is not None and e.confirmed != self._bridge.generation and m is not None:
            if m.expires is None or m.expires > time.time():
                log.info("mqtt: request redelivered on %r after its answer went out on an earlier connection: answer sent again", msg.topic)
                again = OutMessage(m.topic, m.payload, m.qos, props=m.props, expires=m.expires, dedup=key)
                self._remember(key, again, e.digest)
                self._send(again)
        else:
            log.debug("mqtt: redelivered request on %r answered already", msg.topic)
        return False

    def _remember(self, key: str, m: OutMessage | None, digest: int | None) -> None:
        old = self._answered.pop(key, None)
        if old is not None:
            self._answered_bytes -= old.size
        size = 64 + (len(m.payload) + len(m.topic) if m is not None else 0)
        if size > _ANSWER_KEEP_MAX:
            m, size = None, 64
        self._answered[key] = _Answered(m, size, digest)
        self._answered_bytes += size
        while len(self._answered) > _DEDUP_SIZE or self._answered_bytes > _ANSWERS_MAX_BYTES:
            _, gone = self._answered.popitem(last=False)
            self._answered_bytes -= gone.size

    def _confirmed(self, m: OutMessage) -> None:
        """The broker took the answer m (PUBACK)."""
        e = self._answered.get(m.dedup)
        if e is None or e.confirmed is not None:
            return
        if e.msg is None and e.size == 64:
            self._remember(m.dedup, m, e.digest)  # an answer from the outbox of the last run: keep it now
            e = self._answered[m.dedup]
        elif e.msg is not m and (m.seq is None or e.msg.seq != m.seq):
            return  # a newer answer for the same key is still on its way
        e.confirmed = self._bridge.generation

    def _apply_user_props(self, req, user: dict[str, str]) -> None:
        if "priority" in user:
            p = user["priority"]
            # "²".isdigit() is True and int("²") raises: only ASCII digits are a number here.
            if p.isascii() and p.isdigit():
                try:
                    p = int(p)
                except ValueError:  # more digits than int() takes
                    raise MalformedRequest(f"user property priority is not a valid number: {p[:40]!r}...") from None
            req.priority = parse_priority(p)
        if "timeout_ms" in user:
            try:
                tm = float(user["timeout_ms"])
            except ValueError:
                tm = -1
            if not (tm > 0 and math.isfinite(tm)):
                raise MalformedRequest(f"user property timeout_ms must be a positive number, got {user['timeout_ms'][:40]!r}")
            req.timeout_s = min(req.timeout_s or tm / 1000.0, tm / 1000.0)

    async def _run(self, req, reply: _Reply, mid: int, qos: int, gen: int, t0: float) -> None:
        waiters = None
        try:
            try:
                resp = await self.service.infer(req, "mqtt")
                if resp.id is None:
                    resp.id = reply.id
                body, header_length = encode_response(resp, req.binary_outputs)
            except EdgeError as e:
                _MSG_ERROR.inc()
                self._counts["errors"] += 1
                self._answer_error(reply, e)
            except Exception as e:  # a bug in one request must not take the transport down
                log.exception("mqtt: inference of %r failed unexpectedly", req.model)
                _MSG_ERROR.inc()
                self._counts["errors"] += 1
                self._answer_error(reply, EdgeError(f"internal error: {type(e).__name__}"))
            else:
                user = [(HEADER_LENGTH, str(header_length))] if header_length is not None else None
                self._answer(reply, body, user)
                _MSG_OK.inc()
            dt = time.monotonic() - t0
            REQUEST_SECONDS.observe(dt)
            self._latencies.append(dt)
            self._counts["requests"] += 1
        finally:
            if reply.running:
                del self._running[reply.dedup]
                waiters = self._waiting.pop(reply.dedup, None) if self._waiting else None
        # Not reached when cancelled at stop: the broker redelivers to the next run.
        self._ack(mid, qos, gen)
        for w in waiters or ():
            self._ack(*w)

    def _out(self, reply: _Reply, body: bytes, user: list | None = None) -> OutMessage:
        props = None
        if reply.v5 and (reply.correlation is not None or user):
            props = {"correlation": reply.correlation.hex() if reply.correlation is not None else None, "user": user}
        return OutMessage(reply.topic, body, reply.qos, props=props, expires=reply.expires, dedup=reply.dedup)

    def _answer(self, reply: _Reply, body: bytes, user: list | None = None) -> None:
        self._answers_sent += 1
        m = self._out(reply, body, user)
        if reply.dedup is not None:
            self._remember(reply.dedup, m, reply.digest)
        self._send(m)

    def _answer_error(self, reply: _Reply, err: EdgeError) -> None:
        doc = err.to_dict()
        if reply.id is not None:
            doc["id"] = reply.id
        self._answer(reply, orjson.dumps(doc))

    # --- offload: edge side ----------------------------------------------------

    def enable_offload_replies(self) -> str:
        """Subscribe {prefix}/{device}/offload-replies (call before start) for request()."""
        self.offload_reply_topic = f"{self.base}/offload-replies"
        return self.offload_reply_topic

    @property
    def connected(self) -> bool:
        return self._bridge is not None and self._bridge.connected

    async def request(self, topic: str, payload: bytes, header_length: int | None, timeout: float) -> tuple[bytes, int | None]:
        """Publish one request (MQTT 5 ResponseTopic + CorrelationData) and await its answer.

        Returns (payload, header_length of the answer). Raises ConnectionError when
        the request cannot be sent, TimeoutError when no answer comes within timeout.
        """
        b = self._bridge
        if self.offload_reply_topic is None:
            raise ConnectionError("offload replies are not enabled on this transport")
        if b is None or not b.connected or not b.v5:
            raise ConnectionError("not connected to the MQTT broker with MQTT 5")
        corr = os.urandom(16)
        # The broker drops a request nobody took in time; a companion never runs one past it.
        props = PublishProperties(
            correlation=corr, response_topic=self.offload_reply_topic, expiry_s=max(1, math.ceil(timeout)),
            user=[(HEADER_LENGTH, str(header_length))] if header_length is not None else None,
        )
        fut = self._loop.create_future()
        self._answers[corr] = fut
        try:
            info = b.publish(topic, payload, 1, False, props)
            if info.rc != 0:
                raise ConnectionError(f"publish to {topic} failed (paho rc {info.rc})")
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer on {self.offload_reply_topic} within {timeout:.3g} s") from None
        finally:
            self._answers.pop(corr, None)

    def _on_offload_answer(self, msg) -> None:
        props = msg.properties if self._bridge.v5 else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        fut = self._answers.pop(bytes(corr), None) if corr is not None else None
        if fut is None or fut.done():
            # Past its timeout (the request ran locally) or a QoS 1 duplicate.
            log.debug("mqtt: offload answer for an unknown or finished correlation on %s", msg.topic)
            return
        hl = _user_props(props).get(HEADER_LENGTH.lower())
        try:
            header_length = int(hl) if hl is not None else None
        except ValueError:
            header_length = -1  # the decoder turns it into a malformed answer
        fut.set_result((bytes(msg.payload), header_length))

    # --- offload: companion side -----------------------------------------------

    def serve_offload(self, group: str, prefix: str, models: Callable[[], Iterable[str]]) -> None:
        """Also take requests on {prefix}/offload/{model}[/{version}] through the shared
        subscription $share/{group}/..., for every model models() names (call before start)."""
        self.offload_prefix = f"{prefix}/offload/" if prefix else "offload/"
        self._offload_group = group
        self._offload_models = models
        # Answers to the edge units' offloaded requests; never onto the offload topics themselves.
        self._reply_topics = self._make_reply_topics(offload_prefix=self.offload_prefix)
        self._reply_topics.allow(f"{self.cfg.prefix}/+/offload-replies")

    def _offload_filters(self, model: str) -> list[str]:
        base = f"$share/{self._offload_group}/{self.offload_prefix}{model}"
        return [base, f"{base}/+"]

    def _refresh_offload_subscriptions(self) -> None:
        """Follow the served models: a model loaded by a reload starts taking offloaded work."""
        if self._bridge is None or not self._bridge.connected or not self._bridge.v5:
            return
        try:
            want = set(self._offload_models())
        except Exception:  # the daemon's hook must not take the transport down
            log.exception("mqtt: listing served models for offload failed")
            return
        added, removed = want - self._offload_subscribed, self._offload_subscribed - want
        if added:
            self._bridge.subscribe([(f, 1) for m in sorted(added) for f in self._offload_filters(m)])
        if removed:
            self._bridge.unsubscribe([f for m in sorted(removed) for f in self._offload_filters(m)])
        if added or removed:
            log.info("mqtt: taking offloaded requests for %s (group %s)", sorted(want) or "no models", self._offload_group)
        self._offload_subscribed = want

    async def _offload_refresh_loop(self) -> None:
        if not self._bridge.v5:
            log.warning("mqtt: companion offload needs MQTT 5 (ResponseTopic); offloaded requests are not served")
            return
        while True:
            await asyncio.sleep(2.0)
            self._refresh_offload_subscriptions()

    # --- OTA hooks -----------------------------------------------------------

    def on_ota_command(self, callback: Callable) -> None:
        """callback(topic: str, command: dict, source: str), sync or async, per OTA command
        from a configured controller; source says who sent it ("mqtt:{controller} on {topic}")."""
        self._ota_callbacks.append(callback)

    def _on_ota(self, msg) -> None:
        """Obeyed only when the command names one of mqtt.controllers (user property
        ``controller``, or a top-level "controller" key for MQTT 3.1.1). The name is a
        claim: the broker ACL that lets only controller accounts write the OTA topics is
        what makes it true (docs/MQTT.md "OTA commands")."""
        topic = msg.topic
        props = msg.properties if self._bridge.v5 else None
        claimed = _user_props(props).get("controller")
        try:
            doc = orjson.loads(msg.payload)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            MESSAGES.labels("malformed").inc()
            log.warning("mqtt: ignored OTA command on %r (controller %r): not a JSON object (%s)", topic, _short(claimed), e)
            return
        in_body = doc.pop("controller", None)  # the agent's parser refuses unknown keys
        if claimed is None:
            claimed = in_body
        if not isinstance(claimed, str) or claimed not in self._controllers:
            MESSAGES.labels("ota_refused").inc()
            why = "mqtt.controllers is empty" if not self._controllers else "not one of mqtt.controllers"
            log.warning("mqtt: refused OTA command on %r from controller %r: %s", topic, _short(claimed), why)
            return
        MESSAGES.labels("ota").inc()
        source = f"mqtt:{claimed} on {topic}"
        for cb in self._ota_callbacks:
            try:
                res = cb(topic, doc, source)
                if inspect.isawaitable(res):
                    t = self._loop.create_task(res)
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("mqtt: OTA command callback failed")

    def publish_ota_state(self, model: str, state: dict) -> None:
        """Retained on {prefix}/{device}/ota/state as {"models": {model: state}, "ts": ...}."""
        self._ota_state[model] = state
        if self._bridge is not None and self._bridge.connected:
            self._publish_ota_doc()

    def _publish_ota_doc(self) -> None:
        doc = {"device": self.device_id, "models": self._ota_state, "ts": time.time()}
        self._bridge.publish(self.ota_state_topic, orjson.dumps(doc), 1, True)

    # --- telemetry -----------------------------------------------------------

    def telemetry(self) -> dict:
        """The JSON published on {prefix}/{device}/telemetry (documented in docs/MQTT.md)."""
        now = time.monotonic()
        window = max(now - self._last_telemetry, 1e-6)
        self._last_telemetry = now
        lat = np.fromiter(self._latencies, dtype=np.float64)
        self._latencies.clear()
        counts, self._counts = self._counts, {"requests": 0, "errors": 0}
        pct = {f"p{q}": round(float(np.percentile(lat, q)) * 1000, 3) for q in (50, 90, 99)} if lat.size else {}
        info = self._safe_info()
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        return {
            "device": self.device_id,
            "version": self.agent_version,
            "ts": time.time(),
            "uptime_s": round(time.time() - self._started, 1),
            "mqtt": {
                "window_s": round(window, 3),
                "requests_per_s": round(counts["requests"] / window, 3),
                "errors_per_s": round(counts["errors"] / window, 3),
                "latency_ms": pct,
                "in_flight": len(self._tasks),
                "outbox_messages": len(self._outbox) if self._outbox else 0,
                "outbox_bytes": self._outbox.nbytes if self._outbox else 0,
                "connected": bool(self._bridge and self._bridge.connected),
            },
            "process": {"cpu_percent": cpu, "rss_bytes": rss},
            "service": info,
        }

    async def _telemetry_loop(self) -> None:
        self._proc.cpu_percent(None)  # first call only starts the measurement
        while True:
            await asyncio.sleep(self.cfg.telemetry_interval_s)
            try:
                doc = self.telemetry()
                self._send(OutMessage(self.telemetry_topic, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), self.cfg.qos, kind=KIND_TELEMETRY))
            except Exception:
                log.exception("mqtt: telemetry failed")
