"""Fixtures of the quantize tests: ``workdir``, a version of the tiny classifier
(tiny_classifier.py) with calibration and evaluation data."""

from __future__ import annotations

import tempfile

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from tiny_classifier import D_IN, N_CLS, make_model


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A source version dir, calibration/eval dirs, and a private TMPDIR to prove cleanup."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    src = tmp_path / "models" / "tiny" / "1"
    src.mkdir(parents=True)
    make_model(src / "model.onnx")
    (src / "model.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [D_IN]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "dims": [N_CLS]}],
        "labels": "labels.txt",
    }))
    (src / "labels.txt").write_text("a\nb\nc\nd\n")
    sess = ort.InferenceSession(str(src / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    calib, ev = tmp_path / "calib", tmp_path / "eval"
    calib.mkdir(), ev.mkdir()
    for i in range(4):
        np.savez(calib / f"b{i}.npz", x=rng.normal(size=(16, D_IN)).astype(np.float32))
    # Labels are the FP32 model's own clear-margin predictions, so the FP32
    # reference scores 100 % and only quantization error can lower a score.
    x = rng.normal(size=(2000, D_IN)).astype(np.float32)
    logits = sess.run(None, {"x": x})[0]
    top2 = np.sort(logits, 1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 0.3
    x, y = x[keep][:400], logits[keep][:400].argmax(1)
    for i in range(0, len(x), 100):
        np.savez(ev / f"e{i:04d}.npz", x=x[i : i + 100], labels=y[i : i + 100])
    return {"root": tmp_path, "src": src, "calib": calib, "eval": ev, "scratch": scratch}
