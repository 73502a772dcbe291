"""Edge and companion daemons for the offload tests: real processes on a real mosquitto.

Used by test_offload_e2e.py, test_offload_breaker.py and tests/ops/test_companion_pool.py.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import paho.mqtt.client as paho
from prometheus_client.parser import text_string_to_metric_families


def mqtt_section(broker, prefix: str, device: str, client_id: bool = True) -> dict:
    """The ``mqtt`` config of a test daemon; ``client_id`` False leaves the default (edge-agent-{device_id})."""
    doc = {
        "enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": prefix,
        "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "rate_limit": {"rate": 10000, "burst": 10000},
    }
    if client_id:
        doc["client_id"] = f"edge-agent-{prefix}-{device}"
    return doc


def make_companion(agent_factory, broker, prefix: str, device: str):
    return agent_factory(config={"mode": "companion", "device_id": device, "mqtt": mqtt_section(broker, prefix, device),
                                 "offload": {"prefix": prefix}})


def make_edge(agent_factory, broker, prefix: str, **offload):
    return agent_factory(config={"device_id": "edge-unit", "mqtt": mqtt_section(broker, prefix, "edge-unit"),
                                 "offload": {"enabled": True, "prefix": prefix, **offload}})


def wait_online(broker, prefix: str, *devices: str, timeout: float = 30.0) -> None:
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


def start_all(*agents) -> None:
    procs = [a.start(wait=False) for a in agents]
    for a in procs:
        a.wait_ready()


def metric(agent, name: str, **labels) -> float:
    """The sum of ``name``'s samples with these labels in a scrape of ``agent``."""
    status, _, text = agent.client().request("GET", "/metrics")
    assert status == 200
    total = 0.0
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def outputs(doc: dict) -> dict:
    assert "outputs" in doc, doc
    return {o["name"]: o["data"] for o in doc["outputs"]}


def slow_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def offload_digits_stream(edge, x: np.ndarray, n: int, workers: int) -> list:
    """``n`` digits requests (row i of ``x``, id ``r{i}``, uncached) through ``edge`` from
    ``workers`` threads at once; each must come back 200, offloaded, with its id. Returns
    the answers in request order."""
    from concurrent.futures import ThreadPoolExecutor

    from daemon_proc import digits_body

    bodies = [{**digits_body(x[i : i + 1]), "id": f"r{i}", "parameters": {"cache": False}} for i in range(n)]

    def ask(chunk: list) -> list:
        c = edge.client()
        return [(i, *c.infer("digits", bodies[i])) for i in chunk]

    with ThreadPoolExecutor(workers) as pool:
        results = [r for part in pool.map(ask, [list(range(k, n, workers)) for k in range(workers)]) for r in part]
    assert len(results) == n
    for i, status, doc in results:
        assert status == 200, doc
        assert doc["parameters"]["offloaded_to"] == "companion" and doc["id"] == f"r{i}", doc
    return [doc for _, _, doc in sorted(results, key=lambda r: r[0])]


def assert_each_answered_once(companions, n: int) -> None:
    """The companions shared the ``n`` offloaded requests: each served some, together each once."""
    served = [metric(c, "edge_agent_mqtt_messages_total", outcome="ok") for c in companions]
    assert all(s > 0 for s in served), served  # the broker split the stream
    assert sum(served) == n, served  # every request answered once, by one companion
