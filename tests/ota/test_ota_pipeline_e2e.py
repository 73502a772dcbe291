"""OTA of a whole pipeline on the real daemon: one signed manifest covers model.yaml and
every step's graph, the golden outputs are the pipeline's final answers (text, boxes,
scores of rendered images), and an update goes through validation and canary to active as
a single model's does; a pipeline whose recogniser graph was changed after signing is
refused before any traffic."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ocr_daemon import differences, infer_bytes, outputs_of, rendered_cases

import ocr_reference as ref
from edge_agent.config import RuntimeConfig
from edge_agent.ota.golden import pipeline_runner_factory
from edge_agent.ota.publish import publish, set_channel

pytestmark = pytest.mark.slow
MODEL = "ocr"


def _record(a) -> dict:
    try:
        return json.loads((a.state_dir / "ota" / f"{MODEL}.json").read_text())
    except FileNotFoundError:
        return {}


def _source(build: Path, root: Path, version: str, rec_batch: int) -> Path:
    """A source version folder of the pipeline; ``rec_batch`` changes its model.yaml only."""
    src = root / "src" / MODEL / version
    shutil.copytree(build / "1", src)
    spec = yaml.safe_load((src / "model.yaml").read_text())
    spec["pipeline"][-1].setdefault("batching", {})["max_batch_size"] = rec_batch
    (src / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return src


def test_an_ota_update_of_the_whole_pipeline(agent_factory, ocr_build, devserver, registry, keys, tmp_path):
    ref.require_rapidocr()
    cases = rendered_cases(3, seed=77)
    golden_inputs = [{"image": np.array([data], dtype=object)} for data, _ in cases[:2]]
    runner = pipeline_runner_factory(lambda: SimpleNamespace(runtime=RuntimeConfig(), paths=SimpleNamespace(state_dir=tmp_path / "pub")))
    m1 = publish(_source(ocr_build, tmp_path, "1", 16), registry, keys[0], channel="stable", runner_factory=runner, golden_inputs=golden_inputs)
    assert {a.path for a in m1.artifacts} >= {"model.yaml", "det.onnx", "cls.onnx", "rec.onnx", "golden.npz"}
    assert m1.golden.runner == "pipeline" and m1.golden.outputs == ["text", "boxes", "scores"]

    config = {"ota": {"enabled": True, "registry_url": devserver.url, "public_keys": [str(keys[1])], "poll_interval_s": 0.2,
                      "canary": {"share": 0.5, "min_requests": 4, "max_seconds": 60, "max_error_rate_increase": 0.05, "max_p99_ratio": 20.0}},
              "cache": {"enabled": False}}
    a = agent_factory(config=config)
    shutil.copytree(registry / MODEL / "1", a.models_dir / MODEL / "1")
    a.start(timeout=180)
    seen, stop = [], threading.Event()

    def load():
        c = a.client(timeout=60)
        i = 0
        while not stop.is_set():
            data, want = cases[i % len(cases)]
            status, doc = infer_bytes(c, data)
            seen.append((status, doc.get("model_version"), status == 200 and differences(outputs_of(doc)["text"], outputs_of(doc)["boxes"], want)))
            i += 1

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        publish(_source(ocr_build, tmp_path, "2", 8), registry, keys[0], channel="stable", runner_factory=runner, golden_inputs=golden_inputs)
        rec = _wait(a, lambda r: r.get("state") == "active" and r.get("target") == "2", "version 2 active", 240)
        assert [h["state"] for h in rec["history"]][-3:] == ["staged", "canary", "active"], rec  # validated, then judged live
        # A pipeline whose recogniser changed after signing: refused, version 2 keeps serving.
        publish(_source(ocr_build, tmp_path, "3", 8), registry, keys[0], runner_factory=runner, golden_inputs=golden_inputs)
        rec_onnx = registry / MODEL / "3" / "rec.onnx"
        raw = bytearray(rec_onnx.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        rec_onnx.write_bytes(bytes(raw))
        set_channel(registry, MODEL, "stable", "3")
        rec = _wait(a, lambda r: r.get("state") == "failed" and r.get("target") == "3", "version 3 refused", 120)
        assert rec["code"] == "artifact_digest_mismatch", rec
        n = len(seen)
        _wait(a, lambda r: len(seen) > n + 2, "answers after the refusal", 60)
    finally:
        stop.set()
        t.join(60)
    assert [s for s in seen if s[0] != 200] == []
    assert [s for s in seen if s[2]] == []  # every answer, of either version, is RapidOCR's
    assert {s[1] for s in seen} == {"1", "2"}
    assert seen[-1][1] == "2"
    assert "model ocr/3 loaded" not in a.log()
    assert [h["state"] for h in _record(a)["history"]][-2:] == ["downloading", "failed"]


def _wait(a, pred, what: str, timeout: float):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = _record(a)
        if pred(r):
            return r
        if a.proc.poll() is not None:
            raise AssertionError(f"daemon exited waiting for {what}:\n{a.log()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; record={_record(a)}\n{a.log()[-4000:]}")
