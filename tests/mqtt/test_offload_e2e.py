"""Companion mode and offload, end to end: a real mosquitto and real daemon processes.

An edge daemon with ``offload.enabled`` sends requests over MQTT to companion
daemons (``mode: companion``) that share ``$share/companion/{prefix}/offload/{model}``.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import paho.mqtt.client as paho
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from daemon_proc import REPO, copy_digits, digits_body, make_slow_model
from edge_agent.config import load_config

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _mqtt(broker, prefix: str, device: str) -> dict:
    return {
        "enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": prefix,
        "client_id": f"edge-agent-{prefix}-{device}", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
        "rate_limit": {"rate": 10000, "burst": 10000},
    }


def _companion(agent_factory, broker, prefix: str, device: str):
    return agent_factory(config={"mode": "companion", "device_id": device, "mqtt": _mqtt(broker, prefix, device),
                                 "offload": {"prefix": prefix}})


def _edge(agent_factory, broker, prefix: str, **offload):
    return agent_factory(config={"device_id": "edge-unit", "mqtt": _mqtt(broker, prefix, "edge-unit"),
                                 "offload": {"enabled": True, "prefix": prefix, **offload}})


def _wait_online(broker, prefix: str, *devices: str, timeout: float = 30.0) -> None:
    """The retained online status is published right after the subscriptions on the
    same connection, so once it is visible the daemon takes (offloaded) requests."""
    online: set[str] = set()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}")

    def on_message(cl, ud, msg):
        if msg.payload and orjson.loads(msg.payload).get("state") == "online":
            online.add(msg.topic.split("/")[1])

    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.subscribe([(f"{prefix}/{d}/status", 1) for d in devices])
    c.loop_start()
    try:
        end = time.monotonic() + timeout
        while not online >= set(devices):
            assert time.monotonic() < end, f"not online: {set(devices) - online}"
            time.sleep(0.02)
    finally:
        c.loop_stop()
        c.disconnect()


def _start_all(*agents) -> None:
    procs = [a.start(wait=False) for a in agents]
    for a in procs:
        a.wait_ready()


def _metric(agent, name: str, **labels) -> float:
    status, _, text = agent.client().request("GET", "/metrics")
    assert status == 200
    total = 0.0
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _outputs(doc: dict) -> dict:
    assert "outputs" in doc, doc
    return {o["name"]: o["data"] for o in doc["outputs"]}


def _slow_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def test_edge_offloads_a_model_it_lacks_and_falls_back_when_the_companion_is_down(agent_factory, broker, prefix):
    comp = _companion(agent_factory, broker, prefix, "comp-a")
    copy_digits(comp.models_dir)
    make_slow_model(comp.models_dir, name="remote", layers=2, width=16, max_batch=4)
    edge = _edge(agent_factory, broker, prefix, queue_depth_over=-1, timeout_s=1.0, pause_after_timeout_s=30)
    copy_digits(edge.models_dir)  # digits here too; "remote" only on the companion
    _start_all(comp, edge)
    _wait_online(broker, prefix, "comp-a", "edge-unit")

    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    status, direct = comp.client().infer("remote", _slow_body(x))
    assert status == 200
    status, via_edge = edge.client().infer("remote", _slow_body(x))
    assert status == 200, via_edge
    assert via_edge["parameters"]["offloaded_to"] == "companion"
    assert via_edge["model_name"] == "remote"
    assert _outputs(via_edge) == _outputs(direct)  # binary tensors both ways: bit for bit

    # queue_depth_over -1 offloads even a model served here.
    body = {**digits_body(X[:3]), "parameters": {"cache": False}}
    status, digits_remote = edge.client().infer("digits", body)
    assert status == 200 and digits_remote["parameters"]["offloaded_to"] == "companion"
    assert _outputs(digits_remote) == _outputs(comp.client().infer("digits", body)[1])
    assert _metric(edge, "edge_agent_offload_total", model="remote", outcome="ok") == 1
    assert _metric(edge, "edge_agent_offload_total", model="digits", outcome="ok") == 1
    # Only the companion can check a request for its model: its error comes back with its code.
    status, err = edge.client().infer("remote", _slow_body(x[:, :3]))
    assert status == 400 and err["code"] == "invalid_input" and err["error"].startswith("companion:"), err
    assert _metric(edge, "edge_agent_offload_total", model="remote", outcome="error") == 1

    assert comp.stop() == 0
    t0 = time.monotonic()
    status, local = edge.client().infer("digits", body)
    waited = time.monotonic() - t0
    assert status == 200, local
    assert "offloaded_to" not in local.get("parameters", {})
    assert waited >= 0.9  # it did wait for the companion before running here
    assert _outputs(local)["label"] == _outputs(digits_remote)["label"]
    np.testing.assert_allclose(_outputs(local)["probabilities"], _outputs(digits_remote)["probabilities"], rtol=1e-5)
    assert _metric(edge, "edge_agent_offload_total", model="digits", outcome="timeout_fallback") == 1

    # Paused after that timeout: the next busy-model request runs here without trying.
    status, again = edge.client().infer("digits", body)
    assert status == 200 and "offloaded_to" not in again.get("parameters", {})
    assert _metric(edge, "edge_agent_offload_total", model="digits", outcome="timeout_fallback") == 1

    # A model that cannot run here gets the usual code, and says why offload did not help.
    status, err = edge.client().infer("remote", _slow_body(x))
    assert status == 404, err
    assert err["code"] == "unknown_model"
    assert "no companion answered" in err["error"]
    assert _metric(edge, "edge_agent_offload_total", model="remote", outcome="timeout") == 1


def test_two_companions_share_the_offloaded_stream(agent_factory, broker, prefix):
    comps = [_companion(agent_factory, broker, prefix, d) for d in ("comp-a", "comp-b")]
    for c in comps:
        copy_digits(c.models_dir)
    edge = _edge(agent_factory, broker, prefix, timeout_s=10.0)  # no model at all here
    _start_all(*comps, edge)
    _wait_online(broker, prefix, "comp-a", "comp-b", "edge-unit")
    n = 48
    bodies = [{**digits_body(X[i : i + 1]), "id": f"r{i}", "parameters": {"cache": False}} for i in range(n)]
    direct_client = comps[0].client()
    want = [_outputs(direct_client.infer("digits", b)[1]) for b in bodies]

    def ask(chunk: list[int]) -> list[tuple[int, int, dict]]:
        c = edge.client()
        return [(i, *c.infer("digits", bodies[i])) for i in chunk]

    with ThreadPoolExecutor(6) as pool:
        results = [r for part in pool.map(ask, [list(range(k, n, 6)) for k in range(6)]) for r in part]
    assert len(results) == n
    for i, status, doc in results:
        assert status == 200, doc
        assert doc["parameters"]["offloaded_to"] == "companion"
        assert doc["id"] == f"r{i}"
        assert _outputs(doc) == want[i]
    served = [_metric(c, "edge_agent_mqtt_messages_total", outcome="ok") for c in comps]
    assert all(s > 0 for s in served), served  # the broker split the stream
    assert sum(served) == n  # every request answered once, by one companion
    assert _metric(edge, "edge_agent_offload_total", model="digits", outcome="ok") == n
    assert _metric(edge, "edge_agent_offload_total", outcome="timeout") == 0


def test_deep_local_queue_sends_requests_to_the_companion(agent_factory, broker, prefix):
    comp = _companion(agent_factory, broker, prefix, "comp-a")
    make_slow_model(comp.models_dir, layers=40, width=512)
    edge = _edge(agent_factory, broker, prefix, queue_depth_over=2, timeout_s=20.0)
    make_slow_model(edge.models_dir, layers=40, width=512)  # same seed: the same model
    _start_all(comp, edge)
    _wait_online(broker, prefix, "comp-a", "edge-unit")
    x = np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32)
    want = np.asarray(_outputs(comp.client().infer("slow", _slow_body(x))[1])["y"])
    n, workers = 36, 12

    def ask(k: int) -> list[dict]:
        c = edge.client()
        out = []
        for _ in range(n // workers):
            status, doc = c.infer("slow", _slow_body(x))
            assert status == 200, doc
            out.append(doc)
        return out

    with ThreadPoolExecutor(workers) as pool:
        docs = [d for part in pool.map(ask, range(workers)) for d in part]
    offloaded = [d for d in docs if d.get("parameters", {}).get("offloaded_to") == "companion"]
    local = [d for d in docs if d not in offloaded]
    assert offloaded, "the queue never went past queue_depth_over"
    assert local, "nothing ran locally"
    for d in docs:
        np.testing.assert_allclose(_outputs(d)["y"], want, rtol=1e-4, atol=1e-5)
    assert _metric(edge, "edge_agent_offload_total", model="slow", outcome="ok") == len(offloaded)
    assert _metric(comp, "edge_agent_mqtt_messages_total", outcome="ok") == len(offloaded)


def test_shipped_companion_config_is_valid():
    cfg = load_config(REPO / "systemd" / "companion.yaml")
    assert cfg.mode == "companion" and cfg.mqtt.enabled and cfg.mqtt.protocol == "5"
    assert not cfg.server.tcp.enabled
    assert cfg.offload.group == "companion"
