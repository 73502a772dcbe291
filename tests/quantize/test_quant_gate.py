"""quantize + accuracy gate on a small synthetic classifier (fast, no MiniLM)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import get_args

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge_agent.quantize import cli as qcli
from edge_agent.quantize.convert import CALIBRATE_METHODS, PRECISION, DynamicWeights, QuantizationError, quantize
from edge_agent.digests import sha256_file
from edge_agent.quantize.gate import AccuracyGateFailed, GateThresholds
from edge_agent.quantize.version import quantize_version
from edge_agent.runtime.model_spec import load_model_spec

D_IN, D_HID, N_CLS = 16, 64, 4


def make_model(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(D_IN), (D_IN, D_HID)).astype(np.float32)
    b1 = rng.normal(0, 0.1, D_HID).astype(np.float32)
    w2 = rng.normal(0, 1 / np.sqrt(D_HID), (D_HID, N_CLS)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_CLS])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


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


def run_cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="edge-agent")
    qcli.register(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(argv)
    return args.func(args)


def test_good_qdq_passes_and_is_recorded(workdir):
    out = workdir["root"] / "models" / "tiny" / "2"
    rc = run_cli(["quantize", str(workdir["src"]), "--mode", "qdq", "--calibration", str(workdir["calib"]),
                  "--eval", str(workdir["eval"]), "--out", str(out), "--no-progress"])
    assert rc == qcli.EXIT_OK
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    spec = load_model_spec(out / "model.yaml")
    assert spec.precision == "int8-qdq"
    assert spec.accuracy["passed"] is True and spec.accuracy["task"] == "classification"
    assert spec.accuracy["figures"]["reference_top1_pct"] == 100.0
    assert spec.accuracy["figures"]["top1_drop_pp"] <= 3.0
    assert spec.accuracy["figures"]["truth"] == "labels"
    assert spec.lineage["source_sha256"] == sha256_file(workdir["src"] / "model.onnx")
    assert spec.lineage["recipe"]["mode"] == "qdq" and spec.lineage["recipe"]["per_channel"] is True
    assert (out / "labels.txt").read_text() == "a\nb\nc\nd\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["1", "2"]  # no partial dir left
    assert list(workdir["scratch"].iterdir()) == []  # scratch temp dirs removed


def test_absurd_calibration_is_refused_with_report(workdir, capsys):
    bad = workdir["root"] / "bad_calib"
    bad.mkdir()
    # Ranges 10^4 too wide: every activation rounds to zero.
    rng = np.random.default_rng(2)
    np.save(bad / "x.npy", rng.normal(size=(16, D_IN)).astype(np.float32) * 1e4)
    out = workdir["root"] / "models" / "tiny" / "3"
    rc = run_cli(["quantize", str(workdir["src"]), "--mode", "qdq", "--calibration", str(bad),
                  "--eval", str(workdir["eval"]), "--out", str(out), "--no-progress", "--json"])
    assert rc == qcli.EXIT_GATE_FAILED
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["passed"] is False
    assert report["figures"]["top1_drop_pp"] > 3.0
    assert "top-1 drop" in report["failures"][0]
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["1"]
    assert list(workdir["scratch"].iterdir()) == []


def test_gate_error_carries_code_and_figures(workdir):
    with pytest.raises(AccuracyGateFailed) as ei:
        quantize_version(workdir["src"], workdir["root"] / "v9", "dynamic", eval_source=workdir["eval"],
                         thresholds=GateThresholds(max_top1_drop_pp=-1.0), progress=False)
    e = ei.value
    assert e.code == "accuracy_gate_failed"
    assert e.report.figures["candidate_top1_pct"] >= 97.0  # a good model, refused by an impossible bar
    assert e.to_dict()["details"]["report"]["thresholds"] == {"max_top1_drop_pp": -1.0}


def test_dynamic_and_fp16_embedding_gate_from_data_reader(workdir, monkeypatch):
    # The module:function form of a data source.
    (workdir["root"] / "tiny_reader.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    rng = np.random.default_rng(5)\n"
        f"    return [{{'x': rng.normal(size=(32, {D_IN})).astype(np.float32)}} for _ in range(3)]\n"
    )
    monkeypatch.syspath_prepend(str(workdir["root"]))
    for v, mode in (("4", "dynamic"), ("5", "fp16")):
        out = workdir["root"] / "models" / "tiny" / v
        report = quantize_version(workdir["src"], out, mode, eval_source="tiny_reader:batches", task="embedding", progress=False)
        assert report.passed and report.samples == 96
        assert report.figures["mean_cosine"] >= 0.99 and report.figures["min_cosine"] >= 0.98
        spec = load_model_spec(out / "model.yaml")
        assert spec.precision == PRECISION[mode]
    m = onnx.load(str(workdir["root"] / "models" / "tiny" / "5" / "model.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # IO kept FP32
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)


@pytest.mark.parametrize("weights, dtype", [("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8)])
def test_dynamic_weight_type_is_chosen_and_recorded(workdir, weights, dtype):
    out = workdir["root"] / "models" / "tiny" / f"w{weights}"
    rc = run_cli(["quantize", str(workdir["src"]), "--mode", "dynamic", "--dynamic-weights", weights,
                  "--eval", str(workdir["eval"]), "--out", str(out), "--no-progress"])
    assert rc == qcli.EXIT_OK
    m = onnx.load(str(out / "model.onnx"))
    quantized = [i for i in m.graph.initializer if i.name.startswith(("w1", "w2")) and i.name.endswith("_quantized")]
    assert len(quantized) == 2 and {i.data_type for i in quantized} == {dtype}
    assert load_model_spec(out / "model.yaml").lineage["recipe"]["weight_type"] == weights


def test_unknown_dynamic_weight_type_is_refused(workdir):
    with pytest.raises(QuantizationError, match="dynamic weight type"):
        quantize(workdir["src"] / "model.onnx", workdir["root"] / "x.onnx", "dynamic", dynamic_weights="int4")


def test_existing_version_is_not_overwritten(workdir):
    out = workdir["root"] / "models" / "tiny" / "1"
    rc = run_cli(["quantize", str(workdir["src"]), "--mode", "dynamic", "--eval", str(workdir["eval"]),
                  "--out", str(out), "--no-progress"])
    assert rc == qcli.EXIT_ERROR
    assert load_model_spec(out / "model.yaml").precision == "fp32"


def test_cli_choices_match_implementation():
    assert set(qcli.MODES) == set(PRECISION)
    assert set(qcli.CALIBRATE_METHODS) == set(CALIBRATE_METHODS)
    assert set(qcli.DYNAMIC_WEIGHTS) == set(get_args(DynamicWeights))
    th = GateThresholds()
    assert (qcli.DEFAULT_MIN_MEAN_COSINE, qcli.DEFAULT_MIN_MIN_COSINE, qcli.DEFAULT_MAX_TOP1_DROP_PP) == (
        th.min_mean_cosine, th.min_min_cosine, th.max_top1_drop_pp)
