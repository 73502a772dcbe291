"""Memory admission of model loads on the real daemon (edge_agent/runtime/memory.py): a version that
does not fit is refused with insufficient_memory on start-up and SIGHUP while the loaded one keeps
serving, and is loaded once it fits. "Does not fit" is made honest: its need (file size x
memory.load_factor) is real, and the watermark is computed from the memory psutil says is available
at test time, so that the old version fits and the new one does not."""

from __future__ import annotations

import json
import signal

import numpy as np
import yaml
from daemon_proc import copy_digits, digits_body, metric_sum, wait_for
from memory_models import MB, padded_digits, watermark_between

FACTOR = 2000  # digits (~10 kB) needs ~20 MB; the padded version (1 MB) ~2 GB


def index(a) -> dict:
    c = a.client()
    try:
        return {m["version"]: m for m in c.json("POST", "/v2/repository/index")[1]}
    finally:
        c.close()


def test_sighup_refuses_a_version_that_does_not_fit_and_loads_it_once_it_fits(agent_factory):
    a = agent_factory(config={"memory": {"load_factor": FACTOR, "remember": False}})
    v1 = copy_digits(a.models_dir, "1")
    a.start()
    v2 = padded_digits(a.models_dir, "2", 1_000_000)
    small, big = (v / "model.onnx" for v in (v1, v2))
    floor = watermark_between(small.stat().st_size * FACTOR, big.stat().st_size * FACTOR)
    a.config["memory"] = {"load_factor": FACTOR, "remember": False, "min_available_mb": floor}
    a.write_config()
    a.signal(signal.SIGHUP)
    wait_for(lambda: index(a).get("2", {}).get("state") == "UNAVAILABLE", timeout=30)
    row = index(a)["2"]
    assert "needs about" in row["reason"] and "memory.min_available_mb" in row["reason"], row
    assert "insufficient_memory" in a.log() or "needs about" in a.log()
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    status, doc = a.infer_once("digits", digits_body(x))
    assert status == 200 and doc["model_version"] == "1"  # the old version keeps serving
    status, doc = a.infer_once("digits", digits_body(x), version="2")
    assert status == 503 and doc["code"] == "model_not_ready"
    t = a.metrics()
    assert metric_sum(t, "edge_agent_memory_refusals_total", 'model="digits"') == 1
    assert metric_sum(t, "edge_agent_memory_min_available_bytes") == floor * MB
    assert metric_sum(t, "edge_agent_model_memory_need_bytes", 'version="2"') == big.stat().st_size * FACTOR
    # Memory freed (here: the watermark lowered): the next reload loads it.
    a.config["memory"]["min_available_mb"] = 0
    a.write_config()
    a.signal(signal.SIGHUP)
    wait_for(lambda: index(a).get("2", {}).get("state") == "READY", timeout=30)
    assert a.infer_once("digits", digits_body(x), version="2")[0] == 200


def test_startup_refuses_only_the_version_that_does_not_fit_and_remembers_what_loads_took(agent_factory):
    a = agent_factory()
    v1 = copy_digits(a.models_dir, "1")
    v2 = padded_digits(a.models_dir, "2", 1_000_000)
    small, big = (v / "model.onnx" for v in (v1, v2))
    floor = watermark_between(small.stat().st_size * FACTOR, big.stat().st_size * FACTOR)
    a.config = {"memory": {"load_factor": FACTOR, "min_available_mb": floor}}
    a.start()
    rows = index(a)
    assert rows["1"]["state"] == "READY" and rows["2"]["state"] == "UNAVAILABLE"
    x = np.zeros((1, 64), np.float32)
    status, doc = a.infer_once("digits", digits_body(x))
    assert status == 200 and doc["model_version"] == "1"
    # What version 1's load took is kept by digest for the next start (state_dir, atomic JSON).
    needs = json.loads((a.state_dir / "memory-needs.json").read_text())
    assert len(needs) == 1 and list(needs.values())[0] > 0
    a.stop()
