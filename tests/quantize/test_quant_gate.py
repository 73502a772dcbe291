"""quantize + accuracy gate on a small synthetic classifier (fast, no MiniLM)."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from edge_agent.quantize import cli as qcli
from edge_agent.quantize.convert import CALIBRATE_METHODS, PRECISION, DynamicWeights, QuantizationError, quantize
from edge_agent.digests import sha256_file
from edge_agent.quantize.gate import AccuracyGateFailed, GateThresholds
from edge_agent.quantize.version import quantize_version
from edge_agent.runtime.model_spec import load_model_spec
from tiny_classifier import D_IN, run_cli


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
