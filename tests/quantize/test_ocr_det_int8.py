"""`edge-agent quantize` on the OCR pipeline version: its det step becomes a static QDQ INT8
graph calibrated on rendered text images, written only when the gate (box F1 at IoU 0.5,
pipeline CER, both vs FP32, on other rendered images) passes; refused, nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml

from daemon_proc import REPO

pytestmark = pytest.mark.slow
pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime==1.4.4 (extras dev) not installed")


def sh(*argv, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=900, cwd=REPO, env=env,
                          check=check)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ocrq")
    sh(REPO / "scripts" / "build_ocr.py", "--out", root / "build", "--no-progress")
    sh(REPO / "scripts" / "render_ocr_samples.py", "--out", root / "calib", "--count", "2", "--seed", "61")
    sh(REPO / "scripts" / "render_ocr_samples.py", "--out", root / "eval", "--count", "3", "--seed", "62")
    return root


def quantize(setup, out, *extra):
    return sh("-m", "edge_agent.cli", "quantize", setup / "build" / "ocr" / "1", "--mode", "qdq", "--calibration", setup / "calib",
              "--eval", setup / "eval", "--out", out, "--json", "--no-progress", *extra, check=False)


def test_int8_det_is_written_when_the_gate_passes(setup):
    out = setup / "build" / "ocr" / "2"
    r = quantize(setup, out)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["passed"] and report["figures"]["box_f1_iou50"] >= 0.98 and report["figures"]["cer"] <= 0.01
    assert sorted(p.name for p in out.iterdir()) == ["cls.onnx", "det.onnx", "model.yaml", "rec.onnx"]
    det = onnx.load(str(out / "det.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in det.graph.node) > 50
    for f in ("cls.onnx", "rec.onnx"):
        assert (out / f).read_bytes() == (setup / "build" / "ocr" / "1" / f).read_bytes()
    spec = yaml.safe_load((out / "model.yaml").read_text())
    assert spec["pipeline"] == yaml.safe_load((setup / "build" / "ocr" / "1" / "model.yaml").read_text())["pipeline"]
    assert spec["accuracy"]["task"] == "ocr-det" and spec["lineage"]["step_precision"] == "int8-qdq"


def test_refused_by_the_gate_writes_nothing(setup):
    out = setup / "refused"
    r = quantize(setup, out, "--min-box-f1", "1.01")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "box F1" in r.stdout and not out.exists()
    assert not [p for p in setup.iterdir() if p.name.startswith(".refused")]
