"""The wedge test: 300 poison requests against the real daemon and a real mosquitto, then valid
requests are answered within 1 s, and a restarted daemon gets nothing of the poison back.

Before the fix, a request whose ResponseTopic paho refuses to publish to ("#", "replies/+")
raised inside the transport before the request was acknowledged; each such message kept one
of the 256 in-flight slots (MQTT 5 Receive Maximum) of the daemon's persistent session, and
past 256 the broker delivered nothing more, for an hour and across restarts.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_digits

from daemon_proc import copy_digits, digits_body
from edge_agent.transports.mqtt.bridge import PublishProperties
from edge_agent.transports.mqtt.client import MqttInferClient
from brokers import Mosquitto

pytestmark = pytest.mark.timeout(180)

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)
DEVICE = "test-unit"
POISON = 300  # wildcard reply topics: each held a slot before the fix
OTHER = 60  # other refused reply topics, 3.1.1 reply_to, priority "²"


@pytest.fixture
def broker(tmp_path):
    # No broker persistence: saving on every change would make mosquitto, not the daemon, the
    # bottleneck (~100 messages/s); the daemon's session survives its own restart all the same.
    b = Mosquitto(tmp_path / "broker", persistence=False).start()
    yield b
    b.kill()


def _metric_sum(agent, name: str) -> float:
    _, _, text = agent.client().request("GET", "/metrics")
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.decode().splitlines() if ln.startswith((name + "{", name + " ")))


def test_poison_requests_never_wedge_mqtt_serving(agent_factory, broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    # Default rate limit on purpose: the poison shares one bucket, valid clients keep theirs.
    a = agent_factory(config={"device_id": DEVICE, "mqtt": {
        "enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": prefix,
        "client_id": f"edge-agent-{prefix}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
    }})
    copy_digits(a.models_dir)
    a.start()
    infer_topic = f"{prefix}/{DEVICE}/infer/digits"
    default_topic = f"{prefix}/{DEVICE}/responses"
    wildcards = ["#", "replies/+", "+", f"{prefix}/+/replies/#", "replies/a/#"]
    others = ["$SYS/x", "fleet/default/ota", f"{prefix}/{DEVICE}/ota", f"{prefix}/{DEVICE}/status",
              f"{prefix}/other/infer/digits", "replies/" + "x" * 60_000]
    good = orjson.dumps({**digits_body(X[:1]), "parameters": {"cache": False}})

    async def connect(**kw) -> MqttInferClient:
        c = MqttInferClient("127.0.0.1", broker.port, device=DEVICE, prefix=prefix, **kw)
        await c.connect()
        return c

    async def valid_requests_answered_within_1s(n: int) -> None:
        c = await connect()
        try:
            for i in range(n):
                t0 = time.monotonic()
                ans = await c.infer("digits", digits_body(X[i : i + 1]), qos=1, timeout=1.0)
                assert ans.error_code is None, ans.doc
                assert time.monotonic() - t0 < 1.0
        finally:
            await c.close()

    async def wait_online() -> None:
        c = await connect()
        try:
            end = time.monotonic() + 30
            while True:  # the first answer proves the subscriptions are in place
                try:
                    await c.infer("digits", digits_body(X[:1]), timeout=2)
                    return
                except TimeoutError:
                    assert time.monotonic() < end, "daemon never answered over MQTT"
        finally:
            await c.close()

    async def attack() -> None:
        seen: list = []
        watcher = await connect(reply_topic="#")
        watcher._bridge._cb_message = lambda m: seen.append((m.topic, bytes(m.payload)))  # noqa: SLF001
        v5 = await connect()
        v311 = await connect(protocol="3.1.1")
        await asyncio.sleep(0.3)
        for i in range(POISON):
            props = PublishProperties(
                correlation=f"p{i}".encode(), response_topic=wildcards[i % len(wildcards)],
                # What escaped the old rate limit: a fresh client_id user property each time.
                user=[("client_id", f"attacker-{i}")],
            )
            v5._bridge.publish(infer_topic, good, 1, False, props)  # noqa: SLF001
            if i % 50 == 0:
                await asyncio.sleep(0)
        for i in range(OTHER):
            topic = others[i % len(others)]
            if i % 3 == 0:  # MQTT 3.1.1: the reply topic in the body
                doc = {**orjson.loads(good), "parameters": {"reply_to": (wildcards + others)[i % 11], "id": f"o{i}"}}
                v311._bridge.publish(infer_topic, orjson.dumps(doc), 1)  # noqa: SLF001
            else:
                user = [("client_id", f"other-{i}"), ("priority", "²" if i % 3 == 1 else "high")]
                props = PublishProperties(correlation=f"o{i}".encode(), response_topic=topic, user=user)
                v5._bridge.publish(infer_topic, good, 1, False, props)  # noqa: SLF001
        await valid_requests_answered_within_1s(5)
        # Every poison request was answered, on the default response topic, and nowhere else.
        end = time.monotonic() + 20
        while sum(tp == default_topic for tp, _ in seen) < POISON + OTHER:
            assert time.monotonic() < end, f"{sum(tp == default_topic for tp, _ in seen)} of {POISON + OTHER} poison requests answered"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert sum(tp == default_topic for tp, _ in seen) == POISON + OTHER
        codes = {orjson.loads(p)["code"] for tp, p in seen if tp == default_topic}
        assert codes <= {"reply_topic_refused", "rate_limited", "malformed_request"}, codes
        leaked = [tp for tp, p in seen if tp in others and not (tp.endswith("/status") and b'"state"' in p)]
        assert not leaked, "an answer went to a refused topic"
        for c in (watcher, v5, v311):
            await c.close()

    asyncio.run(wait_online())
    asyncio.run(attack())
    assert _metric_sum(a, "edge_agent_mqtt_messages_total") == POISON + OTHER + 6

    # Nothing of the poison was left unacknowledged in the persistent session: a restarted
    # daemon gets no redelivery, and serves at once.
    assert a.stop() == 0
    a.start()
    asyncio.run(wait_online())
    asyncio.run(valid_requests_answered_within_1s(5))
    assert _metric_sum(a, "edge_agent_mqtt_messages_total") == _metric_sum(a, "edge_agent_mqtt_request_seconds_count") == 6
