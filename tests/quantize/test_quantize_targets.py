"""`edge-agent quantize --targets`: one gated file per CPU kind, declared in model.yaml artifacts.

Uses the small classifier of tiny_classifier.py (the ``workdir`` fixture of conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from cpuinfo_samples import EPYC_7551_VM, XEON_AMX
from daemon_proc import REPO
from edge_agent.config import RuntimeConfig
from edge_agent.digests import sha256_file
from edge_agent.quantize import cli as qcli
from edge_agent.quantize import targets as T
from edge_agent.quantize.convert import QuantizationError, quantize
from edge_agent.quantize.gate import AccuracyGateFailed, GateThresholds
from edge_agent.quantize.version import quantize_version
from edge_agent.runtime.artifacts import choose_artifact
from edge_agent.runtime.cpu import parse_cpuinfo, this_cpu
from edge_agent.runtime.model_spec import load_model_spec
from edge_agent.runtime.session import LoadedModel
from tiny_classifier import D_IN, run_cli

HERE = this_cpu()


def weight_types(path) -> set:
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    return {inits[n.input[1]].data_type for n in m.graph.node if n.op_type == "MatMulInteger"}


def test_cli_builds_a_gated_artifact_set(workdir):  # noqa: F811
    out = workdir["root"] / "models" / "tiny" / "2"
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "quantize", str(workdir["src"]), "--mode", "dynamic",
                        "--targets", "avx2,avx512vnni,avxvnni", "--eval", str(workdir["eval"]), "--out", str(out),
                        "--no-progress", "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == qcli.EXIT_OK, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["passed"] is True and set(report["artifacts"]) == {"model.onnx", "model.u8s8.onnx"}
    assert report["artifacts"]["model.u8s8.onnx"]["targets"] == ["avx512vnni", "avxvnni"]
    assert report["artifacts"]["model.onnx"]["targets"] == ["avx2", "default"]

    spec = load_model_spec(out / "model.yaml")
    # Listed in order of preference whatever order --targets gave; VNNI targets share the int8-weight file.
    assert [(a.file, a.requires, a.target) for a in spec.artifacts] == [
        ("model.u8s8.onnx", ["avx512_vnni"], "avx512vnni"), ("model.u8s8.onnx", ["avx_vnni"], "avxvnni"),
        ("model.onnx", ["avx2"], "avx2"), ("model.onnx", [], None)]
    assert weight_types(out / "model.u8s8.onnx") == {TensorProto.INT8}
    assert weight_types(out / "model.onnx") == {TensorProto.UINT8}
    twin_expected = "direct" if HERE.exact_u8s8 else "exact-u8u8-twin"
    for a in spec.artifacts:
        # Each file has its own gate and recipe.
        assert a.accuracy["passed"] is True and a.accuracy["figures"]["top1_drop_pp"] <= 3.0
        assert a.recipe["weight_type"] == ("int8" if a.file == "model.u8s8.onnx" else "uint8")
        assert a.recipe["sha256"] == sha256_file(out / a.file)
        assert a.accuracy["gated_on"]["method"] == (twin_expected if a.file == "model.u8s8.onnx" else "direct")
        assert a.accuracy["gated_on"]["cpu"] == HERE.describe()
    # The version-level figures and lineage are the default file's, as before.
    assert spec.accuracy == {k: v for k, v in spec.artifacts[-1].accuracy.items() if k != "gated_on"}
    assert spec.lineage["recipe"]["weight_type"] == "uint8" and spec.lineage["targets"] == ["avx512vnni", "avxvnni", "avx2"]
    # It loads and serves the file this CPU gets.
    m = LoadedModel("tiny", "2", out, RuntimeConfig(), workdir["root"] / "state")
    assert m.artifact.file == choose_artifact(spec, HERE, ["cpu"]).file
    assert sorted(p.name for p in out.parent.iterdir()) == ["1", "2"]
    assert [p for p in workdir["scratch"].iterdir() if p.is_dir()] == []  # scratch temp dirs removed


def test_gate_on_a_cpu_without_vnni_runs_the_exact_twin(workdir):  # noqa: F811
    """On an AVX2-only EPYC the int8-weight file is judged as its twin; on the VNNI Xeon directly.
    Both must give the figures a VNNI CPU gets: where this machine runs exact U8S8 kernels, the same numbers."""
    reports = {}
    for name, cpuinfo in (("epyc", EPYC_7551_VM), ("xeon", XEON_AMX)):
        out = workdir["root"] / "models" / "tiny" / name
        rep = quantize_version(workdir["src"], out, "dynamic", eval_source=workdir["eval"], targets=["avx512vnni"],
                               cpu=parse_cpuinfo(cpuinfo), progress=False)
        reports[name] = rep.to_dict()["artifacts"]["model.u8s8.onnx"]
        gated = load_model_spec(out / "model.yaml").artifacts[0].accuracy["gated_on"]
        assert gated == reports[name]["gated_on"]
    assert reports["epyc"]["gated_on"]["method"] == "exact-u8u8-twin"
    assert reports["epyc"]["gated_on"]["cpu"] == "AMD EPYC 7551 32-Core Processor (x86_64; avx2)"
    assert "saturate" in reports["epyc"]["gated_on"]["note"]
    assert reports["xeon"]["gated_on"]["method"] == "direct"
    if HERE.exact_u8s8:
        assert reports["epyc"]["figures"] == reports["xeon"]["figures"]


def test_exact_twin_computes_what_vnni_computes(workdir, tmp_path):  # noqa: F811
    src = workdir["src"] / "model.onnx"
    s8 = tmp_path / "s8.onnx"
    quantize(src, s8, "dynamic", dynamic_weights="int8", progress=False)
    twin = T.exact_u8u8_twin(s8)
    m = onnx.load_from_string(twin)
    inits = {i.name: i for i in m.graph.initializer}
    mmi = [n for n in m.graph.node if n.op_type == "MatMulInteger"]
    assert mmi and all(inits[n.input[1]].data_type == TensorProto.UINT8 for n in mmi)
    assert all(inits[n.input[3]].data_type == TensorProto.UINT8 for n in mmi)
    if not HERE.exact_u8s8:
        pytest.skip(f"{HERE.describe()}: no exact U8S8 kernels to compare the twin with")
    x = np.random.default_rng(3).normal(size=(64, D_IN)).astype(np.float32) * 3
    a = ort.InferenceSession(str(s8), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    b = ort.InferenceSession(twin, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)


def test_one_failing_file_refuses_the_whole_set(workdir, capsys):  # noqa: F811
    out = workdir["root"] / "models" / "tiny" / "9"
    with pytest.raises(AccuracyGateFailed) as e:
        quantize_version(workdir["src"], out, "dynamic", eval_source=workdir["eval"], targets=["avx512vnni", "avx2"],
                         thresholds=GateThresholds(max_top1_drop_pp=-1.0), progress=False)
    assert set(e.value.report.reports) == {"model.onnx", "model.u8s8.onnx"} and not e.value.report.passed
    assert "model.u8s8.onnx [avx512vnni] gated" in e.value.report.summary()
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["1"]


@pytest.mark.parametrize("argv,words", [
    (["--mode", "qdq", "--calibration", "CALIB", "--targets", "avx2"], "--targets needs --mode dynamic"),
    (["--mode", "dynamic", "--dynamic-weights", "int8", "--targets", "avx2"], "no --dynamic-weights"),
    (["--mode", "dynamic", "--targets", "avx2,neon"], "unknown targets ['neon']"),
])
def test_cli_refuses_bad_target_use(workdir, capsys, argv, words):  # noqa: F811
    out = workdir["root"] / "models" / "tiny" / "7"
    argv = [a.replace("CALIB", str(workdir["calib"])) for a in argv]
    rc = run_cli(["quantize", str(workdir["src"]), *argv, "--eval", str(workdir["eval"]), "--out", str(out), "--no-progress"])
    assert rc == qcli.EXIT_ERROR and words in capsys.readouterr().err
    assert not out.exists()


def test_cli_target_names_match_implementation():
    assert qcli.TARGETS == tuple(T.TARGETS)
    with pytest.raises(QuantizationError):
        T.parse_targets([])
