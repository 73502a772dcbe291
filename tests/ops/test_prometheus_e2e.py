"""The real thing end to end: a real Prometheus (Debian package) scrapes a real
daemon's metrics listener every second and evaluates the shipped alert rules;
overload on the daemon's socket drives EdgeAgentQueueBacklog pending then
firing in Prometheus' own API (/api/v1/alerts), and it resolves once the load
stops.

Then the daemon is killed and EdgeAgentDown (unit offline, from Prometheus'
own ``up``) fires.

The rules are the shipped file with one test-time change: those two alerts'
``for:`` goes from minutes to 2s, so the test takes seconds, not minutes;
their expressions, labels and annotations are the shipped ones (the promtool
unit tests cover the real durations)."""

from __future__ import annotations

import threading
import time

import numpy as np
import yaml
from brokers import free_port
from daemon_proc import make_slow_model
from prom_tools import RULES, Prometheus

from edge_agent.client import AgentClient

CLIENTS = 160  # concurrent requests, one each in flight: a backlog above 100 on a one-row model


def _rules_with_short_for(tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    by = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert by["EdgeAgentQueueBacklog"]["for"] == "2m" and by["EdgeAgentQueueBacklog"]["expr"].strip() == "edge_agent_queue_depth > 100"
    assert by["EdgeAgentDown"]["for"] == "2m" and by["EdgeAgentDown"]["expr"].strip() == 'up{job="edge-agent"} == 0'
    by["EdgeAgentQueueBacklog"]["for"] = by["EdgeAgentDown"]["for"] = "2s"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load(agent, stop: threading.Event, sent: list) -> None:
    x = np.zeros((1, 1024), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": x.ravel().tolist()}]}
    c = agent.client(timeout=60)
    try:
        while not stop.is_set():
            c.infer("slow", body)
            sent.append(1)
    finally:
        c.close()


def test_backlog_alert_fires_in_prometheus_and_resolves_then_down_fires(agent_factory, tmp_path):
    models = tmp_path / "models"
    make_slow_model(models, layers=120)  # ~10 ms a row, one row a batch
    port = free_port()
    a = agent_factory(models_dir=models, config={
        "server": {"metrics": {"enabled": True, "port": port}},
        "batching": {"max_queue_size": 1024}}).start()
    prom = Prometheus([f"127.0.0.1:{port}"], _rules_with_short_for(tmp_path), labels={"device": "test-unit"})
    stop = threading.Event()
    sent: list = []
    threads = [threading.Thread(target=_load, args=(a, stop, sent), daemon=True) for _ in range(CLIENTS)]
    try:
        _overload_then_calm(a, prom, stop, sent, threads)
        assert prom.alerts("EdgeAgentDown") == []
        a.kill()
        end = time.monotonic() + 30
        while not [x for x in prom.alerts("EdgeAgentDown") if x["state"] == "firing"] and time.monotonic() < end:
            time.sleep(0.2)
        (down,) = prom.alerts("EdgeAgentDown")
        assert down["state"] == "firing" and down["labels"]["device"] == "test-unit", down
        assert down["labels"]["severity"] == "critical" and down["labels"]["instance"] == f"127.0.0.1:{port}"
    finally:
        stop.set()
        prom.stop()


def _overload_then_calm(a, prom, stop, sent, threads) -> None:
    prom.wait_up()
    assert prom.alerts("EdgeAgentQueueBacklog") == []
    try:
        for t in threads:
            t.start()
        seen = set()
        end = time.monotonic() + 60
        while "firing" not in seen and time.monotonic() < end:
            for alert in prom.alerts("EdgeAgentQueueBacklog"):
                seen.add(alert["state"])
                if alert["state"] == "firing":
                    assert alert["labels"]["model"] == "slow" and alert["labels"]["device"] == "test-unit", alert
                    assert alert["labels"]["severity"] == "warning" and float(alert["value"]) > 100, alert
            time.sleep(0.2)
        assert seen == {"pending", "firing"}, (seen, len(sent), prom.log()[-2000:])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    end = time.monotonic() + 60
    while prom.alerts("EdgeAgentQueueBacklog") and time.monotonic() < end:
        time.sleep(0.5)
    assert prom.alerts("EdgeAgentQueueBacklog") == [], "still active after the load stopped"
    # Prometheus saw the queue, not just the alert: its own query of the shipped expression is empty now.
    assert prom.api("/api/v1/query?query=edge_agent_queue_depth%20%3E%20100")["data"]["result"] == []
    assert AgentClient(str(a.socket)).json("GET", "/v2/health/ready")[0] == 200
