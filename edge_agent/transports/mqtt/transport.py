"""MQTT transport: KServe v2 requests on ``{prefix}/{device}/infer/{model}[/{version}]``.

One more adapter over the inference service, and the thin part of this package:
it routes each incoming message (requests -> inbound.py's ``parse_request`` then
``service.infer``; offload answers -> rpc.py; OTA commands -> ota_commands.py),
hands answers to delivery.py, and owns start/stop. MQTT 5 uses ResponseTopic +
CorrelationData; MQTT 3.1.1 clients put ``reply_to`` and ``id`` in ``parameters``.
QoS 1 requests are acknowledged only after their answer is handed to the broker
or the outbox, so a daemon that dies mid-request gets the request again.

Every message is acknowledged exactly once, whatever happens while it is
handled: the broker lets only ``receive_maximum`` (256) unacknowledged messages
be in flight to us, so one that is never acknowledged holds a slot until the
session expires, and enough of them stop all delivery. Every request gets one
answer (its result or a coded error). docs/MQTT.md is the wire reference.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import orjson

from ...config import MqttConfig
from ...errors import EdgeError, RateLimited
from ...serving.codec import HEADER_LENGTH, encode_response
from .bridge import BrokerSettings, PahoBridge, PublishProperties, TlsSettings, read_password
from .companion import Companion
from .delivery import Delivery
from .inbound import Reply, parse_request, user_props
from .ota_commands import OtaCommands
from .outbox import KIND_TELEMETRY, Outbox, OutMessage
from .ratelimit import TokenBuckets
from .reply_topics import ReplyTopics
from .rpc import Calls
from .telemetry import MESSAGES, MSG_ERROR, Telemetry
from .topics import DeviceTopics, offload_replies_filter

log = logging.getLogger(__name__)

# Error code -> outcome label of a request refused before it ran.
_OUTCOMES = {
    "payload_too_large": "too_large", "rate_limited": "rate_limited", "reply_topic_refused": "reply_topic_refused",
    "internal": "error",
}
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower()


class MqttTransport:
    def __init__(
        self, cfg: MqttConfig, device_id: str, service, outbox_dir: Path, info: Callable[[], dict], agent_version: str,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.service = service
        self.topics = DeviceTopics.build(cfg.prefix, device_id, cfg.group, cfg.default_response_topic)
        self.client_id = cfg.client_id or f"edge-agent-{device_id}"
        self.outbox_dir = Path(outbox_dir)
        rl = cfg.rate_limit
        self._limiter = TokenBuckets(rl.rate, rl.burst, total_rate=rl.total_rate, total_burst=rl.total_burst)
        self._reply_topics = self._make_reply_topics()
        self._ota = OtaCommands(device_id, frozenset(cfg.controllers), self.topics.ota_state)
        self._telemetry = Telemetry(device_id, agent_version, info, cfg.group, cfg.labels)
        self._stats = self._telemetry.stats
        self._connected_at = 0.0  # monotonic time of the current connection's CONNACK
        self._tasks: set[asyncio.Task] = set()
        self._background: list[asyncio.Task] = []
        self._stopping = False
        self._bridge: PahoBridge | None = None
        self._delivery: Delivery | None = None
        # Edge side of offloading: our requests to companions, by CorrelationData.
        self.offload_reply_topic: str | None = None
        self._calls = Calls()
        # Companion side: shared subscriptions to the offload topics of served models.
        self._companion: Companion | None = None
        self.offload_prefix: str | None = None

    def _make_reply_topics(self, offload_prefix: str | None = None) -> ReplyTopics:
        c = self.cfg
        return ReplyTopics(
            c.reply_topics, prefix=c.prefix, device=self.device_id, default_topic=self.topics.responses,
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
        outbox = Outbox(self.outbox_dir, self.cfg.outbox.max_bytes, self.cfg.outbox.max_age_s)
        self._delivery = Delivery(outbox, self._loop)
        will = (self.topics.status, self._status_payload("offline", reason="lost"), 1, True)
        self._bridge = PahoBridge(
            self._settings(), on_connect=self._on_connect, on_disconnect=self._delivery.on_disconnect,
            on_message=self._on_message, on_publish=self._delivery.on_publish, will=will, manual_ack=True, name="transport",
        )
        self._delivery.bridge = self._bridge
        self._bridge.start()
        self._background.append(self._loop.create_task(self._telemetry_loop(), name="mqtt-telemetry"))
        if self._companion is not None:
            self._background.append(
                self._loop.create_task(self._companion.refresh_loop(self._bridge), name="mqtt-offload-subscriptions"))
        log.info("mqtt: serving %s#, broker %s:%d (MQTT %s)", self.topics.infer_prefix, self.cfg.host, self.cfg.port, self.cfg.protocol)

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish in-flight requests, publish offline status, flush, disconnect -- in that order."""
        # 1. Take no new work: _on_message leaves new messages unacknowledged from here on,
        #    so the broker redelivers them to the next run.
        self._stopping = True
        d = self._delivery
        if d is not None:
            d.stopping = True
        # 2. Background loops (telemetry, companion subscriptions) publish nothing more.
        for t in self._background:
            t.cancel()
        # 3. Let running requests finish and answer (their acks go out with the answers);
        #    the ones cut off are redelivered by the broker.
        if self._tasks:
            done, not_done = await asyncio.wait(set(self._tasks), timeout=timeout)
            for t in not_done:
                t.cancel()
            if not_done:
                log.warning("mqtt: cancelled %d requests still running at stop (the broker will redeliver them)", len(not_done))
        if self._bridge is None:
            return
        # 4. Say goodbye (retained "offline/stopped", replacing the last will) and wait for
        #    the broker to confirm what paho holds, answers included.
        if self._bridge.connected:
            info = self._bridge.publish(self.topics.status, self._status_payload("offline", reason="stopped"), 1, True)
            d.track(info.mid, OutMessage(self.topics.status, b"", 1, kind="status"))
            try:
                await asyncio.wait_for(d.wait_all_confirmed(), timeout)
            except asyncio.TimeoutError:
                log.warning("mqtt: %d publishes not acknowledged at stop", len(d.unconfirmed))
        # 5. Whatever the broker did not confirm goes to the outbox for the next run.
        d.persist_unconfirmed()
        # 6. Disconnect (a clean DISCONNECT: the broker does not publish the last will),
        #    then close the outbox, which nothing writes to any more.
        await self._bridge.stop(timeout)
        d.outbox.close()

    # --- connection events ---------------------------------------------------

    def _on_connect(self, session_present: bool) -> None:
        self._connected_at = time.monotonic()
        b = self._bridge
        b.subscribe(self.topics.subscriptions(self.cfg.qos))
        if self.offload_reply_topic is not None:
            b.subscribe([(self.offload_reply_topic, 1)])
        if self._companion is not None:
            self._companion.on_connect(b)
        b.publish(self.topics.status, self._status_payload("online"), 1, True)
        if self._ota.state:
            self._ota.publish_state(b)
        self._delivery.on_connect()

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        return orjson.dumps(self._telemetry.status(state, reason))

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
        infer_prefix = self.topics.infer_prefix
        try:
            if topic is None:
                MESSAGES.labels("bad_topic").inc()
            elif topic == self.offload_reply_topic:
                self._on_offload_answer(msg)
            elif topic.startswith(infer_prefix):
                owned = self._on_request(msg, gen, topic[len(infer_prefix):], infer_prefix)
            elif self.offload_prefix is not None and topic.startswith(self.offload_prefix):
                # Offloaded by an edge unit: the same request, on a shared topic.
                owned = self._on_request(msg, gen, topic[len(self.offload_prefix):], self.offload_prefix)
            elif topic == self.topics.ota or topic == self.topics.fleet_ota:
                self._ota.on_command(msg, self._bridge.v5, self._spawn)
            else:
                MESSAGES.labels("bad_topic").inc()
        except Exception:
            log.exception("mqtt: unexpected error handling a message on %r", topic)
            MSG_ERROR.inc()
        finally:
            if not owned:
                self._ack(msg.mid, msg.qos, gen)

    def _ack(self, mid: int, qos: int, gen: int) -> None:
        try:
            self._bridge.ack(mid, qos, gen)
        except Exception:  # the connection is going; the broker redelivers on the next one
            log.exception("mqtt: acknowledging message %d failed", mid)

    def _spawn(self, coro) -> None:
        t = self._loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _on_request(self, msg, gen: int, rest: str, topic_prefix: str) -> bool:
        """Answer or refuse one request. True when a task now owns the message's ack.

        Whatever the body, the properties or the codec do (an EdgeError, or RecursionError,
        MemoryError, ValueError... from a hostile body), the request gets exactly one answer:
        on its reply topic when that is allowed, else on the default response topic. Should
        this code itself fail before answering, the request still gets an ``internal`` error.
        """
        d = self._delivery
        answered = d.answers_sent
        try:
            return self._handle_request(msg, gen, rest, topic_prefix)
        except Exception:
            log.exception("mqtt: handling a request on %r failed unexpectedly", msg.topic)
            MSG_ERROR.inc()
            if d.answers_sent == answered:
                props = msg.properties if self._bridge.v5 else None
                corr = getattr(props, "CorrelationData", None) if props is not None else None
                reply = Reply(self.topics.responses, corr, None, min(msg.qos, 1), self._bridge.v5, None)
                d.answer_error(reply, EdgeError("internal error while handling the request"))
            return False

    def _handle_request(self, msg, gen: int, rest: str, topic_prefix: str) -> bool:
        t0 = time.monotonic()
        d = self._delivery
        req, reply = parse_request(msg, rest, self._bridge.v5, topic_prefix, self.cfg.max_payload_bytes, self._reply_topics)
        key = reply.dedup
        if key is not None and (key in d.running or key in d.answered):
            owned = d.redelivered(key, msg, gen, reply.digest, self._connected_at)
            if owned is not None:
                MESSAGES.labels("duplicate").inc()
                return owned
        # The namespace, not an identity the client states: see docs/MQTT.md "Rate limit".
        client = "reply:" + reply.namespace
        if not self._limiter.allow(client):
            rl = self.cfg.rate_limit
            req = RateLimited(f"reply namespace {reply.namespace!r} exceeds {rl.rate:g} requests/s (burst {rl.burst})")
        if isinstance(req, EdgeError):
            outcome = _OUTCOMES.get(req.code, "malformed")
            self._stats.refused(outcome)
            if outcome == "reply_topic_refused":
                log.warning("mqtt: refused the reply topic of a request on %r: %r", msg.topic, req.message)
            else:
                log.info("mqtt: rejected request on %r from %r: %s (%r)", msg.topic, client, req.code, req.message)
            d.answer_error(reply, req)
            return False
        req.client = client
        # Deadlines count from receipt (the service adds how long the message
        # may have waited for the event loop before this callback ran).
        req.arrived = t0
        if key is not None and key not in d.running:
            d.running[key] = reply.digest
            reply.running = True
        self._spawn(self._run(req, reply, msg.mid, msg.qos, gen, t0))
        return True

    async def _run(self, req, reply: Reply, mid: int, qos: int, gen: int, t0: float) -> None:
        d = self._delivery
        waiters = None
        try:
            error = True
            try:
                resp = await self.service.infer(req, "mqtt")
                if resp.id is None:
                    resp.id = reply.id
                body, header_length = encode_response(resp, req.binary_outputs)
            except EdgeError as e:
                d.answer_error(reply, e)
            except Exception as e:  # a bug in one request must not take the transport down
                log.exception("mqtt: inference of %r failed unexpectedly", req.model)
                d.answer_error(reply, EdgeError(f"internal error: {type(e).__name__}"))
            else:
                d.answer(reply, body, [(HEADER_LENGTH, str(header_length))] if header_length is not None else None)
                error = False
            self._stats.done(time.monotonic() - t0, error)
        finally:
            if reply.running:
                waiters = d.finished(reply.dedup)
        # Not reached when cancelled at stop: the broker redelivers to the next run.
        self._ack(mid, qos, gen)
        for w in waiters or ():
            self._ack(*w)

    # --- offload: edge side ----------------------------------------------------

    def enable_offload_replies(self) -> str:
        """Subscribe {prefix}/{device}/offload-replies (call before start) for request()."""
        self.offload_reply_topic = self.topics.offload_replies
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
        with self._calls.call(corr) as fut:
            info = b.publish(topic, payload, 1, False, props)
            if info.rc != 0:
                raise ConnectionError(f"publish to {topic} failed (paho rc {info.rc})")
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no answer on {self.offload_reply_topic} within {timeout:.3g} s") from None

    def _on_offload_answer(self, msg) -> None:
        props = msg.properties if self._bridge.v5 else None
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        hl = user_props(props).get(_HEADER_LENGTH_KEY)
        try:
            header_length = int(hl) if hl is not None else None
        except ValueError:
            header_length = -1  # the decoder turns it into a malformed answer
        if corr is None or not self._calls.resolve(bytes(corr), (bytes(msg.payload), header_length)):
            # Past its timeout (the request ran locally) or a QoS 1 duplicate.
            log.debug("mqtt: offload answer for an unknown or finished correlation on %s", msg.topic)

    # --- offload: companion side -----------------------------------------------

    def serve_offload(self, group: str, prefix: str, models: Callable[[], Iterable[str]]) -> None:
        """Also take requests on {prefix}/offload/{model}[/{version}] through the shared
        subscription $share/{group}/..., for every model models() names (call before start)."""
        self._companion = Companion(group, prefix, models)
        self.offload_prefix = self._companion.prefix
        # Answers to the edge units' offloaded requests; never onto the offload topics themselves.
        self._reply_topics = self._make_reply_topics(offload_prefix=self.offload_prefix)
        self._reply_topics.allow(offload_replies_filter(self.cfg.prefix))

    # --- OTA hooks -----------------------------------------------------------

    def on_ota_command(self, callback: Callable) -> None:
        """callback(topic: str, command: dict, source: str), sync or async, per OTA command
        from a configured controller; source says who sent it ("mqtt:{controller} on {topic}")."""
        self._ota.callbacks.append(callback)

    def publish_ota_state(self, model: str, state: dict) -> None:
        """Retained on {prefix}/{device}/ota/state as {"models": {model: state}, "ts": ...}."""
        self._ota.state[model] = state
        if self._bridge is not None and self._bridge.connected:
            self._ota.publish_state(self._bridge)

    # --- telemetry -----------------------------------------------------------

    def telemetry(self) -> dict:
        """The JSON published on {prefix}/{device}/telemetry (documented in docs/MQTT.md)."""
        d = self._delivery
        return self._telemetry.document(
            len(self._tasks), d.outbox if d is not None else None, bool(self._bridge and self._bridge.connected))

    async def _telemetry_loop(self) -> None:
        self._telemetry.start_cpu_measure()
        while True:
            await asyncio.sleep(self.cfg.telemetry_interval_s)
            try:
                doc = self.telemetry()
                self._delivery.send(OutMessage(
                    self.topics.telemetry, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), self.cfg.qos, kind=KIND_TELEMETRY))
            except Exception:
                log.exception("mqtt: telemetry failed")
