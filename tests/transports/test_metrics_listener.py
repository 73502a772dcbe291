"""server.metrics: the TCP port a Prometheus scrapes. A real daemon, real
sockets: it serves /metrics and health and nothing else, under the same
limits as the other listeners, and hostile traffic cannot grow its series."""

from __future__ import annotations

import socket
import time
import uuid

import numpy as np
import orjson
import paho.mqtt.client as paho
from brokers import Mosquitto, free_port
from daemon_proc import copy_digits, digits_body, metric_sum, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.client import AgentClient


def _start(agent_factory, tmp_path, **server):
    copy_digits(tmp_path / "models")
    port = free_port()
    cfg = {"server": {"metrics": {"enabled": True, "host": "127.0.0.1", "port": port}, **server}}
    a = agent_factory(config=cfg, models_dir=tmp_path / "models").start()
    return a, AgentClient(f"http://127.0.0.1:{port}", timeout=10)


def _series(text: str) -> list[str]:
    return [ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_metrics_port_serves_metrics_and_health_only(agent_factory, tmp_path):
    a, m = _start(agent_factory, tmp_path)
    status, _, body = m.request("GET", "/metrics")
    assert status == 200 and "edge_agent_ready 1.0" in body.decode()
    assert m.json("GET", "/v2/health/live")[0] == 200
    assert m.json("GET", "/v2/health/ready") == (200, {"ready": True})
    # Inference, metadata, status and control never answer here, not even for an admin.
    x = np.zeros((1, 64), np.float32)
    for method, path, body in (("POST", "/v2/models/digits/infer", digits_body(x)), ("GET", "/v2/models/digits", None),
                               ("GET", "/edge/status", None), ("POST", "/edge/reload", {}), ("GET", "/v2", None)):
        status, doc = m.json(method, path, body)
        assert status == 404 and doc["code"] == "not_found", (method, path, doc)
    # The socket still serves everything.
    assert a.infer_once("digits", digits_body(x))[0] == 200
    assert "on the metrics port" in a.log() and "serving metrics on http://127.0.0.1:" in a.log()


def test_metrics_port_obeys_the_server_limits(agent_factory, tmp_path):
    """A client dribbling a request head on the metrics port is swept like
    one on the socket: 408 request_timeout after header_timeout_s."""
    a, m = _start(agent_factory, tmp_path, limits={"header_timeout_s": 1.0})
    port = int(m.path.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        got = b""
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got, got[:200]


def test_series_stay_bounded_after_hostile_traffic(agent_factory, tmp_path):
    """Hundreds of model names, versions and paths nobody configured leave
    no series of their own: the scrape after them is the scrape before them
    plus a few error codes."""
    a, m = _start(agent_factory, tmp_path)
    x = np.zeros((1, 64), np.float32)
    c = a.client()
    assert c.infer("digits", digits_body(x))[0] == 200
    before = _series(m.request("GET", "/metrics")[2].decode())
    for i in range(300):
        c.infer(f"nosuch{i}", digits_body(x))
        c.infer("digits", digits_body(x), version=f"v{i}")
        c.request("POST", f"/v2/models/bad{i}/infer", b"{not json")
        c.request("GET", f"/v2/models/meta{i}/versions/{i}/ready")
        c.request("POST", f"/edge/models/dev{i}/promote", b"{}")
        m.request("GET", f"/scan{i}")
    c.close()
    after = _series(m.request("GET", "/metrics")[2].decode())
    text = "\n".join(after)
    for hostile in ("nosuch", "v299", "bad1", "meta1", "dev1", "scan1"):
        assert hostile not in text, [s for s in after if hostile in s][:5]
    new = sorted(set(after) - set(before))
    # One series per (transport, code, reason) refused, whatever the names: not one per name.
    assert len(new) <= 12 and all(x.startswith("edge_agent_request_errors_") for x in new), new
    assert len(after) < len(before) + 12


def test_series_stay_bounded_after_hostile_mqtt_traffic(agent_factory, tmp_path):
    """The same over MQTT: requests for hundreds of models, versions and
    topics, reply topics in other units' namespaces and OTA commands from
    strangers are answered or refused, and counted under a few outcomes."""
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        copy_digits(tmp_path / "models")
        port = free_port()
        a = agent_factory(models_dir=tmp_path / "models", config={
            "server": {"metrics": {"enabled": True, "port": port}},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "protocol": "5", "prefix": "edge",
                     # Every hostile message reaches routing, not the rate limiter.
                     "rate_limit": {"rate": 10000, "burst": 10000, "total_rate": 10000, "total_burst": 10000}}}).start()
        m = AgentClient(f"http://127.0.0.1:{port}", timeout=10)
        wait_for(lambda: metric_sum(m.request("GET", "/metrics")[2].decode(), "edge_agent_mqtt_connected") == 1, timeout=20)
        before = _series(m.request("GET", "/metrics")[2].decode())
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"hostile-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        body = orjson.dumps(digits_body(np.zeros((1, 64), np.float32)))
        n = 0
        for i in range(150):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = b"%d" % i
            if i % 2:  # a reply namespace per message, half of them another unit's
                props.ResponseTopic = f"edge/dev{i}/responses" if i % 4 == 1 else f"edge/clients/c{i}/replies"
            for topic, payload in ((f"edge/test-unit/infer/nosuch{i}", body),
                                   (f"edge/test-unit/infer/digits/v{i}", body),
                                   (f"edge/test-unit/infer/x/y/z{i}", body),
                                   (f"edge/test-unit/infer/digits", b"{garbage %d" % i),
                                   ("edge/test-unit/ota", b'{"model": "m%d", "version": "%d"}' % (i, i))):
                pub.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)
                n += 1
        pub.loop_stop()
        pub.disconnect()
        try:
            wait_for(lambda: metric_sum(m.request("GET", "/metrics")[2].decode(), "edge_agent_mqtt_messages_total") >= n, timeout=30)
        except TimeoutError:
            raise AssertionError([s for s in _series(m.request("GET", "/metrics")[2].decode()) if "mqtt" in s]) from None
        after = _series(m.request("GET", "/metrics")[2].decode())
        text = "\n".join(after)
        for hostile in ("nosuch", "v149", "z14", "dev1", "c13", '"m14"'):
            assert hostile not in text, [s for s in after if hostile in s][:5]
        new = sorted(set(after) - set(before))
        # Each refusal kind once (_total and _created): error codes and MQTT outcomes, a fixed set.
        assert len(new) <= 12 and all(x.startswith(("edge_agent_request_errors_", "edge_agent_mqtt_messages_")) for x in new), new
    finally:
        broker.stop()
