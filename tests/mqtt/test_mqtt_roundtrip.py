"""Request/response over MQTT 5 and 3.1.1 against a real mosquitto and a real ORT model."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest

from mqtt_helpers import DEVICE, body, mqtt_cfg, wait_for
from tiny_service import expected

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

ROWS = [[1, 2, 3, 4], [0.5, -1, 0, 2]]


def outputs(ans) -> np.ndarray:
    doc = ans.doc
    (y,) = doc["outputs"]
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [2, 3]
    return np.asarray(y["data"], dtype=np.float32).reshape(y["shape"])


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_request_response_both_protocols(broker, prefix, make_transport, make_client, protocol):
    await make_transport(mqtt_cfg(broker, prefix, protocol=protocol))
    client = await make_client(protocol)
    for qos in (0, 1):
        ans = await client.infer("tiny", body(ROWS), qos=qos, timeout=10)
        np.testing.assert_allclose(outputs(ans), expected(ROWS), rtol=1e-6)
        assert ans.doc["model_name"] == "tiny" and ans.doc["model_version"] == "1"
    if protocol == "3.1.1":
        # 3.1.1 has no CorrelationData: the id travels in the body and comes back.
        assert ans.doc["id"] == ans.correlation


async def test_v5_correlation_binary_version_and_errors(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix))
    client = await make_client("5")
    x = np.asarray(ROWS, dtype=np.float32)
    head = orjson.dumps({
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    })
    ans = await client.infer("tiny", head + x.tobytes(), header_length=len(head), version="1", correlation="bin-1", timeout=10)
    assert ans.correlation == b"bin-1"
    assert ans.header_length is not None
    y = np.frombuffer(ans.payload[ans.header_length:], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, expected(ROWS), rtol=1e-6)

    assert (await client.infer("nope", body(ROWS), timeout=10)).error_code == "unknown_model"
    assert (await client.infer("tiny", body(ROWS), version="9", timeout=10)).error_code == "unknown_version"
    bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    ans = await client.infer("tiny", bad, timeout=10)
    assert ans.error_code == "invalid_input" and "shape" in ans.doc["error"]
    ans = await client.infer("tiny", b"{not json", timeout=10)
    assert ans.error_code == "malformed_request"


async def test_priority_deadline_and_expiry_reach_the_request(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix))
    client = await make_client("5")
    await client.infer("tiny", body(ROWS), user_properties=[("priority", "high"), ("timeout_ms", "2500")], timeout=10)
    req = service.requests[-1]
    assert req.priority == 0 and req.timeout_s == pytest.approx(2.5)
    await client.infer("tiny", body(ROWS), expiry_s=3, timeout=10)
    assert service.requests[-1].timeout_s is not None and service.requests[-1].timeout_s <= 3
    b = body(ROWS)
    b["parameters"] = {"priority": "high", "timeout_ms": 700}
    await client.infer("tiny", b, timeout=10)
    assert service.requests[-1].priority == 0 and service.requests[-1].timeout_s == pytest.approx(0.7)
    assert service.requests[-1].client.startswith("reply:")


async def test_default_response_topic_and_reused_correlation_answered_each_time(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix))
    watcher = await make_client("5", reply_topic=f"{prefix}/{DEVICE}/responses")
    # A request with no reply path is answered on {prefix}/{device}/responses.
    sender = await make_client("3.1.1")
    raw = orjson.dumps({**body(ROWS), "id": "no-reply"})
    fut = asyncio.get_running_loop().create_future()
    watcher._calls.futures["no-reply"] = fut  # noqa: SLF001 -- the watcher matches on the body id
    sender._bridge.publish(f"{prefix}/{DEVICE}/infer/tiny", raw, 1)
    ans = await asyncio.wait_for(fut, 10)
    np.testing.assert_allclose(outputs(ans), expected(ROWS), rtol=1e-6)

    # A new request that reuses a correlation (same reply topic) is a new request: the broker
    # did not redeliver it (no DUP), so it is run and answered like the first. Only a broker
    # redelivery is a duplicate (tests/mqtt/test_mqtt_redelivery.py).
    client = await make_client("5")
    calls = service.calls
    client.send("tiny", body(ROWS), correlation="dup-1", qos=1)
    f2 = client.send("tiny", body(ROWS), correlation="dup-1", qos=1)  # the client waits on the latest
    await asyncio.wait_for(f2, 10)
    await wait_for(lambda: client.answers[b"dup-1"] == 2, what="both answers")
    await asyncio.sleep(0.3)
    assert service.calls == calls + 2
    assert client.answers[b"dup-1"] == 2


async def test_status_telemetry_and_ota_hooks(broker, prefix, make_transport, make_client):
    t = await make_transport(mqtt_cfg(broker, prefix, telemetry_interval_s=0.2, controllers=["ops"]))
    seen: dict[str, list] = {}
    watcher = await make_client("5", reply_topic=f"{prefix}-watch")
    watcher._on_message = lambda msg: seen.setdefault(msg.topic, []).append(msg)  # noqa: SLF001
    watcher._bridge._cb_message = watcher._on_message  # noqa: SLF001
    watcher._bridge.subscribe([(f"{prefix}/#", 1)])
    await wait_for(lambda: f"{prefix}/{DEVICE}/status" in seen, what="retained status")
    status = orjson.loads(seen[f"{prefix}/{DEVICE}/status"][0].payload)
    assert status["state"] == "online" and status["models"] == {"tiny": ["1"]} and status["version"] == "0.0-test"
    assert seen[f"{prefix}/{DEVICE}/status"][0].retain

    client = await make_client("5")
    await client.infer("tiny", body(ROWS), timeout=10)
    await wait_for(lambda: len(seen.get(f"{prefix}/{DEVICE}/telemetry", [])) >= 2, what="telemetry")
    docs = [orjson.loads(m.payload) for m in seen[f"{prefix}/{DEVICE}/telemetry"]]
    assert all({"mqtt", "process", "service"} <= d.keys() for d in docs)
    assert sum(d["mqtt"]["requests_per_s"] * d["mqtt"]["window_s"] for d in docs) == pytest.approx(1, abs=0.01)
    assert any(d["mqtt"]["latency_ms"].get("p99", 0) > 0 for d in docs)
    assert docs[0]["process"]["rss_bytes"] > 0 and docs[0]["service"]["queue_depth"] == 0

    # OTA commands from a configured controller (test_mqtt_ota_authority.py has the refusals).
    commands = []
    t.on_ota_command(lambda topic, cmd, source: commands.append((topic, cmd)))
    client._bridge.publish(f"{prefix}/{DEVICE}/ota", b'{"action": "check", "controller": "ops"}', 1)
    client._bridge.publish("fleet/default/ota", b'{"action": "update", "model": "tiny", "controller": "ops"}', 1)
    client._bridge.publish(f"{prefix}/{DEVICE}/ota", b"garbage", 1)
    await wait_for(lambda: len(commands) == 2, what="ota commands")
    assert commands[0] == (f"{prefix}/{DEVICE}/ota", {"action": "check"})
    t.publish_ota_state("tiny", {"state": "downloading", "version": "2"})
    await wait_for(lambda: f"{prefix}/{DEVICE}/ota/state" in seen, what="ota state")
    doc = orjson.loads(seen[f"{prefix}/{DEVICE}/ota/state"][-1].payload)
    assert doc["models"]["tiny"]["state"] == "downloading"



async def test_deadline_counts_from_receipt(broker, prefix, make_transport, make_client, tiny_model):
    """The request reaches the service stamped with when the transport got it
    (InferRequest.arrived, time.monotonic()), so its deadline counts from there."""
    import time

    from tiny_service import TinyService

    seen = []

    class Stamped(TinyService):
        async def infer(self, req, transport="socket"):
            seen.append((req.arrived, time.monotonic()))
            return await super().infer(req, transport)

    await make_transport(mqtt_cfg(broker, prefix), svc=Stamped(tiny_model))
    client = await make_client("5")
    before = time.monotonic()
    ans = await client.infer("tiny", body(ROWS), timeout=10)
    assert ans.error_code is None
    (arrived, called), = seen
    assert arrived is not None and before <= arrived <= called
