"""OTA staging under memory admission, on the real daemon with a real registry over HTTP: an update
whose version does not fit ends ``failed`` with insufficient_memory before it is loaded anywhere,
and the old version keeps serving. The watermark is computed from psutil at test time (memory_models.py)."""

from __future__ import annotations

import json
import shutil
import time

from daemon_proc import metric_sum, wait_for
from memory_models import MB, watermark_between

from edge_agent.ota.publish import publish

FACTOR = 2000


def record(a) -> dict:
    try:
        return json.loads((a.state_dir / "ota" / "linear.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def infer(a):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
    return a.infer_once("linear", body)


def test_an_update_that_does_not_fit_ends_failed_and_the_old_version_serves(agent_factory, devserver, registry,
                                                                            src_models, keys):
    publish(src_models("1"), registry, keys[0], channel="stable")
    v2 = src_models("2", seed=1, pad_bytes=1_000_000)
    floor = watermark_between((registry / "linear" / "1" / "model.onnx").stat().st_size * FACTOR,
                              (v2 / "model.onnx").stat().st_size * FACTOR)
    a = agent_factory(config={
        "ota": {"enabled": True, "registry_url": devserver.url, "public_keys": [str(keys[1])], "poll_interval_s": 0.2},
        "cache": {"enabled": False}, "memory": {"load_factor": FACTOR, "min_available_mb": floor}})
    shutil.copytree(registry / "linear" / "1", a.models_dir / "linear" / "1")
    a.start()
    assert infer(a)[0] == 200
    publish(v2, registry, keys[0], channel="stable")
    wait_for(lambda: record(a).get("state") == "failed" and record(a).get("target") == "2", timeout=60)
    rec = record(a)
    assert rec["code"] == "insufficient_memory" and "needs about" in rec["reason"], rec
    assert [h["state"] for h in rec["history"]][-4:] == ["downloading", "verifying", "staged", "failed"]
    status, doc = infer(a)
    assert status == 200 and doc["model_version"] == "1"
    assert "model linear/2 loaded" not in a.log()
    time.sleep(0.5)  # a few more polls: the refused version is not tried again by itself
    text = a.metrics()
    assert metric_sum(text, "edge_agent_memory_refusals_total", 'during="ota_staging"') == 1
    assert metric_sum(text, "edge_agent_ota_rejections_total", 'code="insufficient_memory"') == 1
    assert metric_sum(text, "edge_agent_memory_min_available_bytes") == floor * MB
