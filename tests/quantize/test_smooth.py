"""SmoothQuant (quantize/smooth.py) and per-version session settings, on small real graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge_agent.config import RuntimeConfig
from edge_agent.quantize.convert import QuantizationError, quantize
from edge_agent.quantize.smooth import smooth, weight_matmuls
from edge_agent.quantize.version import quantize_version
from edge_agent.runtime import providers as providers_mod
from edge_agent.runtime.session import LoadedModel

D, H, OUT = 32, 64, 8
OUTLIERS = [3, 17]  # input channels ~100x larger than the rest, as in transformer activations


def make_model(path: Path) -> None:
    """x -> LayerNorm-free two-branch MLP: q = x@wq, k = x@wk (shared input), y = relu(q + k)@wo."""
    rng = np.random.default_rng(0)
    wq, wk = (rng.normal(0, D**-0.5, (D, H)).astype(np.float32) for _ in range(2))
    wo = rng.normal(0, H**-0.5, (H, OUT)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="block/q/MatMul"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="block/k/MatMul"),
        helper.make_node("Add", ["q", "k"], ["s"], name="sum"),
        helper.make_node("Relu", ["s"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "wo"], ["y"], name="block/out/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "smooth-test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(w, n) for w, n in ((wq, "wq"), (wk, "wk"), (wo, "wo"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def inputs(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    x[:, OUTLIERS] *= 100.0
    return x


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def model(tmp_path) -> Path:
    p = tmp_path / "fp32.onnx"
    make_model(p)
    return p


def calibration(n_batches: int = 4) -> list[dict]:
    return [{"x": inputs(64, 100 + i)} for i in range(n_batches)]


def test_smoothed_graph_computes_the_same_function(model, tmp_path):
    out = tmp_path / "smoothed.onnx"
    info = smooth(model, out, calibration(), alpha=0.5)
    assert info == {"smooth_alpha": 0.5, "smooth_nodes": ["*"], "smoothed_tensors": 2}  # x (q and k share it) and h
    g = onnx.load(str(out)).graph
    muls = [n for n in g.node if n.op_type == "Mul"]
    assert len(muls) == 2
    # q and k read the one smoothed copy of x; the graph stays topologically valid.
    consumers = {n.name: n.input[0] for n in g.node if n.op_type == "MatMul"}
    assert consumers["block/q/MatMul"] == consumers["block/k/MatMul"] == muls[0].output[0]
    x = inputs(200, 7)
    ref, got = run(model, x), run(out, x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
    # The outlier channels were scaled down, the weight rows up.
    inv = numpy_helper.to_array(next(i for i in g.initializer if i.name == muls[0].input[1]))
    assert inv[OUTLIERS].max() < np.delete(inv, OUTLIERS).min()


def test_smoothing_lowers_dynamic_int8_error_on_outlier_activations(model, tmp_path):
    x = inputs(500, 9)
    ref = run(model, x)
    plain, smoothed = tmp_path / "plain.onnx", tmp_path / "smooth-int8.onnx"
    quantize(model, plain, "dynamic", progress=False)
    recipe = quantize(model, smoothed, "dynamic", calibration(), smooth_alpha=0.5, progress=False)
    assert recipe["smooth_alpha"] == 0.5 and recipe["smoothed_tensors"] == 2
    err_plain = np.abs(run(plain, x) - ref).mean()
    err_smooth = np.abs(run(smoothed, x) - ref).mean()
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)


def test_smooth_nodes_selects_matmuls(model, tmp_path):
    assert {k: [n.name for n in v] for k, v in weight_matmuls(onnx.load(str(model)), ["*/out/*"]).items()} == {"h": ["block/out/MatMul"]}
    out = tmp_path / "s.onnx"
    assert smooth(model, out, calibration(), 0.7, ["*/out/*"])["smoothed_tensors"] == 1


def test_bad_smoothing_requests_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="between 0 and 1"):
        smooth(model, tmp_path / "a.onnx", calibration(), alpha=1.5)
    with pytest.raises(ValueError, match="no MatMul"):
        smooth(model, tmp_path / "b.onnx", calibration(), alpha=0.5, nodes=["nothing/*"])
    with pytest.raises(QuantizationError, match="calibration"):
        quantize(model, tmp_path / "c.onnx", "dynamic", None, smooth_alpha=0.5, progress=False)
    with pytest.raises(QuantizationError, match="no MatMul"):
        quantize(model, tmp_path / "d.onnx", "dynamic", calibration(), smooth_alpha=0.5, smooth_nodes=["nothing/*"], progress=False)
    assert not (tmp_path / "c.onnx").exists() and not (tmp_path / "d.onnx").exists()


def test_version_records_smoothing_and_session_settings_which_the_daemon_applies(model, tmp_path, monkeypatch):
    src = tmp_path / "models" / "m" / "1"
    src.mkdir(parents=True)
    model.rename(src / "model.onnx")
    (src / "model.yaml").write_text(yaml.safe_dump({
        "name": "m", "max_batch_size": 64,
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [D]}],
        "outputs": [{"name": "y", "datatype": "FP32", "dims": [OUT]}],
    }))
    calib_dir, eval_dir = tmp_path / "calib", tmp_path / "eval"
    calib_dir.mkdir(), eval_dir.mkdir()
    for i, b in enumerate(calibration()):
        np.savez(calib_dir / f"b{i}.npz", **b)
    np.savez(eval_dir / "e.npz", x=inputs(100, 11))
    out = src.parent / "2"
    quantize_version(src, out, "dynamic", eval_source=eval_dir, calibration=calib_dir, task="embedding",
                     smooth_alpha=0.5, disabled_optimizers=["SkipLayerNormFusion"], progress=False)
    spec = yaml.safe_load((out / "model.yaml").read_text())
    assert spec["session"] == {"disabled_optimizers": ["SkipLayerNormFusion"]}
    assert spec["lineage"]["recipe"]["smooth_alpha"] == 0.5
    # The daemon's loader hands the list to ONNX Runtime (spied, the real session is built).
    seen = []
    real = providers_mod.NoFallbackSession  # the InferenceSession the loader builds (ORT's own fallback off)

    def spy(*a, **kw):
        seen.append(kw.get("disabled_optimizers"))
        return real(*a, **kw)

    monkeypatch.setattr(providers_mod, "NoFallbackSession", spy)
    m = LoadedModel("m", "2", out, RuntimeConfig(), tmp_path / "state")
    assert seen == [["SkipLayerNormFusion"]]
    assert m.provider == "cpu"


def test_cli_refuses_smoothing_without_calibration(model, tmp_path, capsys):
    import argparse

    from edge_agent.quantize import cli as qcli

    ap = argparse.ArgumentParser(prog="edge-agent")
    qcli.register(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["quantize", str(tmp_path), "--mode", "dynamic", "--out", str(tmp_path / "o"), "--eval", str(tmp_path),
                          "--smooth-alpha", "0.7"])
    assert args.func(args) == qcli.EXIT_ERROR
    assert "--smooth-alpha needs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_weight_shared_by_two_inputs_is_copied_not_scaled_twice(tmp_path):
    """w feeds x@w and h@w: each input has its own scales, so each MatMul gets its own copy."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, D**-0.5, (D, D)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="first/MatMul"),
        helper.make_node("Relu", ["a"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="second/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src, out = tmp_path / "shared.onnx", tmp_path / "shared-smoothed.onnx"
    onnx.save(m, str(src))
    assert smooth(src, out, calibration(), alpha=0.5)["smoothed_tensors"] == 2
    g = onnx.load(str(out)).graph
    weights = {n.name: n.input[1] for n in g.node if n.op_type == "MatMul"}
    assert len(set(weights.values())) == 2  # no longer one initializer for both
    x = inputs(100, 5)
    ref = run(src, x)
    np.testing.assert_allclose(run(out, x), ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())
