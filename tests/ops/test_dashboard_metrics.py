"""Every metric the alert rules and the Grafana dashboard name is one the
daemon really exports: a real daemon (digits model, cache, MQTT to a real
mosquitto, the systemd watchdog protocol, an ONNX Runtime that offers
TensorRT it cannot bind) is scraped on its metrics port and the names
compared. What only exists on other hardware or after events is listed in
CONDITIONAL with the module that defines it, and checked there."""

from __future__ import annotations

import json
import os
import re
import socket

import numpy as np
import pytest
from brokers import Mosquitto, free_port
from daemon_proc import REPO, copy_digits, digits_body, wait_for
from prom_tools import DASHBOARD, dashboard_exprs, names_in, rule_names

from edge_agent.client import AgentClient

# name -> (module defining it, why a test daemon here does not export it)
CONDITIONAL = {
    "edge_agent_ota_state": ("edge_agent/ota/metrics.py", "only with ota.enabled and a registry"),
    "edge_agent_offload_breaker_state": ("edge_agent/transports/mqtt/offload.py", "only on edge units with offload.enabled"),
    "edge_agent_offload_total": ("edge_agent/transports/mqtt/offload.py", "only on edge units with offload.enabled"),
}
# Jetson / dGPU telemetry and memory admission (issue 20 items 5 and 6, branch s3-telem): the
# hardware ones are absent here (the watermark is exported whenever admission is on). Those not
# scraped are checked against the code once that code is in the tree.
TELEMETRY = {
    "edge_agent_jetson_gpu_load_ratio", "edge_agent_jetson_emc_load_ratio", "edge_agent_jetson_temperature_celsius",
    "edge_agent_jetson_power_watts", "edge_agent_jetson_thermal_throttling", "edge_agent_gpu_utilization_ratio",
    "edge_agent_gpu_memory_used_bytes", "edge_agent_gpu_memory_total_bytes", "edge_agent_gpu_temperature_celsius",
    "edge_agent_gpu_power_watts", "edge_agent_gpu_throttled", "edge_agent_memory_min_available_bytes",
    "edge_agent_memory_refusals_total",
}
PROMETHEUS_OWN = {"up"}  # Prometheus' own series for each target


def _family(sample: str) -> str:
    """The name a module defines for a sample name (histogram and counter suffixes off)."""
    return re.sub(r"_(bucket|sum|count|total)$", "", sample)


def _defined_in(path: str, name: str) -> bool:
    return f'"{_family(name)}' in (REPO / path).read_text()


def _defined_anywhere(name: str) -> bool:
    return any(f'"{_family(name)}' in p.read_text() for p in (REPO / "edge_agent").rglob("*.py"))


def used_names() -> set[str]:
    names = set()
    for expr in dashboard_exprs():
        names |= names_in(expr)
    for found in rule_names().values():
        names |= found
    return names


@pytest.fixture
def scraped(tmp_path, agent_factory):
    """The sample names of a real daemon's /metrics, read on its metrics port."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(  # ORT offers TensorRT, which cannot bind here: a real fallback
            "import onnxruntime as _o\n_real = _o.get_available_providers\n"
            "_o.get_available_providers = lambda: ['TensorrtExecutionProvider', *_real()]\n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        copy_digits(tmp_path / "models")
        port = free_port()
        env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", ""), str(REPO)]),
               "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "300000"}
        a = agent_factory(models_dir=tmp_path / "models", env=env, config={
            "server": {"metrics": {"enabled": True, "port": port}},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "protocol": "5"}}).start()
        x = np.zeros((1, 64), np.float32)
        assert a.infer_once("digits", digits_body(x))[0] == 200
        assert a.infer_once("digits", digits_body(x))[0] == 200  # a cache hit
        a.infer_once("nosuch", digits_body(x))  # a refusal
        m = AgentClient(f"http://127.0.0.1:{port}")
        # edge_agent_batcher_stuck is set by the watchdog check, every WATCHDOG_USEC / 3 from the first tick.
        wait_for(lambda: "\nedge_agent_batcher_stuck{" in m.request("GET", "/metrics")[2].decode(), timeout=10)
        text = m.request("GET", "/metrics")[2].decode()
        notify.close()
        yield {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    finally:
        broker.stop()


def test_every_metric_the_rules_and_dashboard_name_is_exported(scraped):
    used = used_names()
    assert len(used) > 30  # the extraction found the dashboard's and the rules' names
    missing = used - scraped - PROMETHEUS_OWN
    unexplained = missing - set(CONDITIONAL) - TELEMETRY
    assert not unexplained, f"named by ops/ but not exported: {sorted(unexplained)}"
    for name in missing & set(CONDITIONAL):
        path, why = CONDITIONAL[name]
        assert _defined_in(path, name), f"{name} ({why}) is not defined in {path}"
    # A conditional name the daemon exports after all belongs off the list.
    assert not set(CONDITIONAL) & scraped, "exported here: not conditional"


def test_telemetry_names_are_defined_once_telemetry_is_in_the_tree():
    if not _defined_anywhere("edge_agent_jetson_temperature_celsius"):
        pytest.skip("the Jetson/GPU telemetry (issue 20 item 5, branch s3-telem) is not merged yet")
    assert {n for n in TELEMETRY if not _defined_anywhere(n)} == set()
    assert TELEMETRY <= used_names()


def test_the_dashboard_is_importable():
    """What Grafana's import needs: a datasource input, a $device variable every
    panel query filters on, unique panel ids, no panels overlapping."""
    doc = json.loads(DASHBOARD.read_text())
    assert doc["__inputs"][0]["pluginId"] == "prometheus" and doc["uid"] == "edge-agent"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["device"]["query"]["query"] == "label_values(edge_agent_ready, device)"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
        for t in p.get("targets", ()):
            assert 'device=~"$device"' in t["expr"], (p["title"], t["expr"])
