"""Companion mode and offload, end to end: a real mosquitto and real daemon processes.

An edge daemon with ``offload.enabled`` sends requests over MQTT to companion
daemons (``mode: companion``) that share ``$share/companion/{prefix}/offload/{model}``.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.datasets import load_digits

from daemon_proc import REPO, copy_digits, digits_body, make_slow_model
from offload_procs import (assert_each_answered_once, make_companion, make_edge, metric, offload_digits_stream, outputs,
                           slow_body, start_all, wait_online)
from edge_agent.config import load_config

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_edge_offloads_a_model_it_lacks_and_falls_back_when_the_companion_is_down(agent_factory, broker, prefix):
    comp = make_companion(agent_factory, broker, prefix, "comp-a")
    copy_digits(comp.models_dir)
    make_slow_model(comp.models_dir, name="remote", layers=2, width=16, max_batch=4)
    edge = make_edge(agent_factory, broker, prefix, queue_depth_over=-1, timeout_s=1.0, pause_after_timeout_s=30)
    copy_digits(edge.models_dir)  # digits here too; "remote" only on the companion
    start_all(comp, edge)
    wait_online(broker, prefix, "comp-a", "edge-unit")

    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    status, direct = comp.client().infer("remote", slow_body(x))
    assert status == 200
    status, via_edge = edge.client().infer("remote", slow_body(x))
    assert status == 200, via_edge
    assert via_edge["parameters"]["offloaded_to"] == "companion"
    assert via_edge["model_name"] == "remote"
    assert outputs(via_edge) == outputs(direct)  # binary tensors both ways: bit for bit

    # queue_depth_over -1 offloads even a model served here.
    body = {**digits_body(X[:3]), "parameters": {"cache": False}}
    status, digits_remote = edge.client().infer("digits", body)
    assert status == 200 and digits_remote["parameters"]["offloaded_to"] == "companion"
    assert outputs(digits_remote) == outputs(comp.client().infer("digits", body)[1])
    assert metric(edge, "edge_agent_offload_total", model="remote", outcome="ok") == 1
    assert metric(edge, "edge_agent_offload_total", model="digits", outcome="ok") == 1
    # Only the companion can check a request for its model: its error comes back with its code.
    status, err = edge.client().infer("remote", slow_body(x[:, :3]))
    assert status == 400 and err["code"] == "invalid_input" and err["error"].startswith("companion:"), err
    assert metric(edge, "edge_agent_offload_total", model="remote", outcome="error") == 1

    assert comp.stop() == 0
    t0 = time.monotonic()
    status, local = edge.client().infer("digits", body)
    waited = time.monotonic() - t0
    assert status == 200, local
    assert "offloaded_to" not in local.get("parameters", {})
    assert waited >= 0.9  # it did wait for the companion before running here
    assert outputs(local)["label"] == outputs(digits_remote)["label"]
    np.testing.assert_allclose(outputs(local)["probabilities"], outputs(digits_remote)["probabilities"], rtol=1e-5)
    assert metric(edge, "edge_agent_offload_total", model="digits", outcome="timeout_fallback") == 1

    # The deprecated pause_after_timeout_s 30 means a breaker that opens on one timeout:
    # the next busy-model request runs here without trying.
    status, again = edge.client().infer("digits", body)
    assert status == 200 and "offloaded_to" not in again.get("parameters", {})
    assert metric(edge, "edge_agent_offload_total", model="digits", outcome="timeout_fallback") == 1

    # A model that cannot run here gets the usual code at once, and says why offload did not help.
    status, err = edge.client().infer("remote", slow_body(x))
    assert status == 404, err
    assert err["code"] == "unknown_model"
    assert "offload breaker open" in err["error"]
    assert metric(edge, "edge_agent_offload_total", model="remote", outcome="breaker_open") == 1


def test_two_companions_share_the_offloaded_stream(agent_factory, broker, prefix):
    comps = [make_companion(agent_factory, broker, prefix, d) for d in ("comp-a", "comp-b")]
    for c in comps:
        copy_digits(c.models_dir)
    edge = make_edge(agent_factory, broker, prefix, timeout_s=10.0)  # no model at all here
    start_all(*comps, edge)
    wait_online(broker, prefix, "comp-a", "comp-b", "edge-unit")
    n = 48
    direct_client = comps[0].client()
    want = [outputs(direct_client.infer("digits", {**digits_body(X[i : i + 1]), "parameters": {"cache": False}})[1])
            for i in range(n)]
    answers = offload_digits_stream(edge, X, n, workers=6)
    assert [outputs(doc) for doc in answers] == want
    assert_each_answered_once(comps, n)
    assert metric(edge, "edge_agent_offload_total", model="digits", outcome="ok") == n
    assert metric(edge, "edge_agent_offload_total", outcome="timeout") == 0


def test_deep_local_queue_sends_requests_to_the_companion(agent_factory, broker, prefix):
    comp = make_companion(agent_factory, broker, prefix, "comp-a")
    make_slow_model(comp.models_dir, layers=40, width=512)
    edge = make_edge(agent_factory, broker, prefix, queue_depth_over=2, timeout_s=20.0)
    make_slow_model(edge.models_dir, layers=40, width=512)  # same seed: the same model
    start_all(comp, edge)
    wait_online(broker, prefix, "comp-a", "edge-unit")
    x = np.random.default_rng(2).standard_normal((1, 512)).astype(np.float32)
    want = np.asarray(outputs(comp.client().infer("slow", slow_body(x))[1])["y"])
    n, workers = 36, 12

    def ask(k: int) -> list[dict]:
        c = edge.client()
        out = []
        for _ in range(n // workers):
            status, doc = c.infer("slow", slow_body(x))
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
        np.testing.assert_allclose(outputs(d)["y"], want, rtol=1e-4, atol=1e-5)
    assert metric(edge, "edge_agent_offload_total", model="slow", outcome="ok") == len(offloaded)
    assert metric(comp, "edge_agent_mqtt_messages_total", outcome="ok") == len(offloaded)


def test_shipped_companion_config_is_valid():
    cfg = load_config(REPO / "systemd" / "companion.yaml")
    assert cfg.mode == "companion" and cfg.mqtt.enabled and cfg.mqtt.protocol == "5"
    assert not cfg.server.tcp.enabled
    assert cfg.offload.group == "companion"
