"""MQTT against the real daemon process: same answers as the socket, restarts, Last Will."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import numpy as np
import orjson
import paho.mqtt.client as paho
import pytest
from sklearn.datasets import load_digits

from daemon_proc import DIGITS, copy_digits, digits_body
from edge_agent.transports.mqtt.client import MqttInferClient
from brokers import Mosquitto

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)
DEVICE = "test-unit"


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker", persistence=True).start()
    yield b
    b.kill()


def _agent(agent_factory, broker, prefix: str, **mqtt):
    a = agent_factory(config={"mqtt": {
        "enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": prefix,
        "client_id": f"edge-agent-{prefix}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
        "telemetry_interval_s": 0.5, **mqtt,
    }})
    copy_digits(a.models_dir)
    return a


def _outputs(doc: dict) -> dict:
    assert "outputs" in doc, doc
    return {o["name"]: o["data"] for o in doc["outputs"]}


def _retained(broker, topic: str, want: str, timeout: float = 20.0) -> dict:
    """Wait until the retained message on ``topic`` has state ``want``."""
    got: dict = {}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")
    c.on_message = lambda cl, ud, msg: got.update(doc=orjson.loads(msg.payload)) if msg.payload else None
    c.connect("127.0.0.1", broker.port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if got.get("doc", {}).get("state") == want:
                return got["doc"]
            time.sleep(0.05)
        raise AssertionError(f"{topic} never became {want}: {got}")
    finally:
        c.loop_stop()
        c.disconnect()


def test_mqtt5_and_311_answer_like_the_socket(agent_factory, broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = _agent(agent_factory, broker, prefix)
    a.start()
    _retained(broker, f"{prefix}/{DEVICE}/status", "online")
    body = digits_body(X[3:5])
    body["parameters"] = {"cache": False}
    status, via_socket = a.client().infer("digits", body)
    assert status == 200

    async def ask(protocol: str = "5", qos: int = 0, model: str = "digits", doc: dict = body) -> dict:
        c = MqttInferClient("127.0.0.1", broker.port, device=DEVICE, prefix=prefix, protocol=protocol)
        await c.connect()
        try:
            return (await c.infer(model, doc, qos=qos, timeout=20)).doc
        finally:
            await c.close()

    for protocol in ("5", "3.1.1"):
        for qos in (0, 1):
            doc = asyncio.run(ask(protocol, qos))
            assert _outputs(doc) == _outputs(via_socket), (protocol, qos)
    # An error travels back as a coded error on the reply path.
    bad = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert asyncio.run(ask(doc=bad))["code"] == "invalid_input"
    assert asyncio.run(ask(model="nosuchmodel"))["code"] == "unknown_model"
    # Refused before reaching a model: counted against the transport it came by.
    _, _, m = a.client().request("GET", "/metrics")
    errors = {ln.split("{", 1)[1].split("}", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in m.decode().splitlines()
              if ln.startswith("edge_agent_request_errors_total{")}
    assert errors == {'code="unknown_model",reason="",transport="mqtt"': 1.0}, errors


def test_requests_waiting_at_the_broker_are_served_after_a_daemon_restart(agent_factory, broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = _agent(agent_factory, broker, prefix)
    a.start()
    _retained(broker, f"{prefix}/{DEVICE}/status", "online")
    assert a.stop() == 0
    _retained(broker, f"{prefix}/{DEVICE}/status", "offline")

    async def run() -> list[dict]:
        c = MqttInferClient("127.0.0.1", broker.port, device=DEVICE, prefix=prefix, persistent=True)
        await c.connect()
        try:
            futs = [c.send("digits", digits_body(X[i : i + 1]), qos=1) for i in range(10)]
            await asyncio.sleep(0.5)
            assert not any(f.done() for f in futs), "answered while the daemon was down?"
            await asyncio.get_running_loop().run_in_executor(None, a.start)  # asyncio.to_thread is 3.9+
            answers = await asyncio.wait_for(asyncio.gather(*futs), 60)
            assert max(c.answers.values()) == 1
            return [ans.doc for ans in answers]
        finally:
            await c.close()

    docs = asyncio.run(run())
    assert [_outputs(d)["label"][0] for d in docs] == [_outputs(a.client().infer("digits", digits_body(X[i : i + 1]))[1])["label"][0] for i in range(10)]


def test_kill_9_sets_the_last_will_and_return_sets_online(agent_factory, broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = _agent(agent_factory, broker, prefix)
    a.start()
    topic = f"{prefix}/{DEVICE}/status"
    online = _retained(broker, topic, "online")
    assert any(m["name"] == "digits" for m in online["models"])
    a.kill()
    _retained(broker, topic, "offline", timeout=30)
    a.start()
    _retained(broker, topic, "online")


def test_daemon_serves_its_socket_while_the_broker_is_down(agent_factory, tmp_path):
    b = Mosquitto(tmp_path / "late", persistence=False)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = _agent(agent_factory, b, prefix)
    a.start()  # no broker yet: ready all the same
    assert a.client().infer("digits", digits_body(X[:1]))[0] == 200
    b.start()
    try:
        _retained(b, f"{prefix}/{DEVICE}/status", "online", timeout=30)
        out = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "infer", "digits", str(DIGITS / "sample.json"),
             "--mqtt", f"127.0.0.1:{b.port}", "--device", DEVICE, "--prefix", prefix, "--compact"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert _outputs(orjson.loads(out.stdout))["label"] == [2]
    finally:
        b.kill()


def test_broker_restarted_mid_stream_every_request_answered_once(agent_factory, broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = _agent(agent_factory, broker, prefix, rate_limit={"rate": 1000, "burst": 1000})
    a.start()
    _retained(broker, f"{prefix}/{DEVICE}/status", "online")
    n = 120

    async def run() -> list:
        c = MqttInferClient("127.0.0.1", broker.port, device=DEVICE, prefix=prefix, persistent=True)
        await c.connect()
        try:
            futs = []
            for i in range(n):
                futs.append(c.send("digits", digits_body(X[i : i + 1]), qos=1))
                if i == n // 3:
                    await asyncio.get_running_loop().run_in_executor(None, broker.restart, True)  # kill -9, same port and persistence
                await asyncio.sleep(0.01)
            answers = await asyncio.wait_for(asyncio.gather(*futs), 90)
            assert len(c.answers) == n and max(c.answers.values()) == 1, c.answers.most_common(3)
            return [a.doc for a in answers]
        finally:
            await c.close()

    docs = asyncio.run(run())
    labels = [_outputs(d)["label"][0] for d in docs]
    want = [_outputs(a.client().infer("digits", digits_body(X[i : i + 1]))[1])["label"][0] for i in range(n)]
    assert labels == want
    # The daemon saw the broker go and come back, and counted it.
    _, _, m = a.client().request("GET", "/metrics")
    reconnects = sum(float(ln.rsplit(" ", 1)[1]) for ln in m.decode().splitlines()
                     if ln.startswith("edge_agent_mqtt_reconnects_total{"))
    assert reconnects >= 1
