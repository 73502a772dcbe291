"""A real daemon serving versions with several artifacts (model.yaml ``artifacts``).

The two files of a version compute different answers (other weights), so the
answer shows which one served, not only what the status claims. The CPU is
this machine's: the requirement is a flag it has (or lacks), read from its own
/proc/cpuinfo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from daemon_proc import REPO
from edge_agent.runtime.cpu import KNOWN_FEATURES, this_cpu


def linear(path, seed: int, in_dim: int = 4, out_dim: int = 3):
    """y = x @ W + b, dynamic batch; returns (W, b)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_dim, out_dim)).astype(np.float32)
    b = rng.standard_normal(out_dim).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_dim])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return w, b


def version(models, v: str, artifacts: list, files: dict) -> dict:
    """{models}/lin/{v} with model.yaml declaring ``artifacts``; ``files`` = {name: seed or (seed, in_dim)}."""
    d = models / "lin" / v
    d.mkdir(parents=True)
    weights = {}
    for name, seed in files.items():
        seed, in_dim = seed if isinstance(seed, tuple) else (seed, 4)
        weights[name] = linear(d / name, seed, in_dim)
    spec = {"name": "lin", "max_batch_size": 8, "inputs": [{"name": "x", "datatype": "FP32", "dims": [4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "dims": [3]}], "precision": "int8-dynamic", "artifacts": artifacts}
    (d / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return weights


def flag_here() -> str:
    have = sorted(KNOWN_FEATURES & this_cpu().flags)
    if not have:
        pytest.skip("this CPU reports none of the features model.yaml can require")
    return "avx2" if "avx2" in have else ("asimd" if "asimd" in have else have[0])


def flag_not_here() -> str:
    return sorted(KNOWN_FEATURES - this_cpu().flags)[0]


def infer(client, v: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    status, doc = client.infer("lin", body, version=v)
    assert status == 200, doc
    return np.array(doc["outputs"][0]["data"], np.float32).reshape(len(x), 3)


def test_daemon_serves_the_artifact_for_this_cpu_and_says_so(tmp_path, agent_factory):
    have, lack = flag_here(), flag_not_here()
    models = tmp_path / "models"
    w1 = version(models, "1", [{"file": "model.fast.onnx", "requires": [have], "target": "fast"}, {"file": "model.onnx"}],
                 {"model.onnx": 0, "model.fast.onnx": 1})
    w2 = version(models, "2", [{"file": "model.fast.onnx", "requires": [lack], "target": "fast"}, {"file": "model.onnx"}],
                 {"model.onnx": 2, "model.fast.onnx": 3})
    version(models, "3", [{"file": "model.gone.onnx", "requires": [lack]}, {"file": "model.onnx"}], {"model.onnx": 4})
    version(models, "4", [{"file": "model.wide.onnx", "requires": [lack]}, {"file": "model.onnx"}],
            {"model.onnx": 5, "model.wide.onnx": (6, 5)})
    a = agent_factory(models_dir=models).start()
    c = a.client()
    x = np.random.default_rng(9).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(infer(c, "1", x), x @ w1["model.fast.onnx"][0] + w1["model.fast.onnx"][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(infer(c, "2", x), x @ w2["model.onnx"][0] + w2["model.onnx"][1], rtol=1e-5, atol=1e-5)

    _, status = c.json("GET", "/edge/status")
    rows = {m["version"]: m for m in status["models"] if m["name"] == "lin"}
    assert (rows["1"]["artifact"], rows["1"]["artifact_target"], rows["1"]["artifact_reason"]) == ("model.fast.onnx", "fast", f"CPU has {have}")
    assert (rows["2"]["artifact"], rows["2"]["artifact_target"]) == ("model.onnx", "default")
    assert rows["2"]["artifact_reason"] == f"default (this CPU/provider does not fit: fast: no {lack})"
    # Every declared file is checked at load, also the ones this machine would not serve.
    assert rows["3"]["state"] == "UNAVAILABLE" and "model.gone.onnx: missing" in rows["3"]["reason"]
    assert rows["4"]["state"] == "UNAVAILABLE" and "artifact model.wide.onnx has other inputs/outputs than model.onnx" in rows["4"]["reason"]

    _, meta = c.json("GET", "/v2/models/lin/versions/1")
    assert meta["parameters"]["artifact"] == "model.fast.onnx" and meta["parameters"]["artifact_reason"] == f"CPU has {have}"
    _, _, metrics = c.request("GET", "/metrics")
    text = metrics.decode()
    assert re.search(r'edge_agent_model_artifact_info\{artifact="model.fast.onnx",model="lin",target="fast",version="1"\} 1\.0', text), text[:3000]
    assert re.search(r'edge_agent_model_artifact_info\{artifact="model.onnx",model="lin",target="default",version="2"\} 1\.0', text)
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "models", "--socket", str(a.socket)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and re.search(r"^lin\s+1\s+READY.*model\.fast\.onnx", r.stdout, re.M), r.stdout
    assert "serving artifact model.fast.onnx (CPU has" in a.log()


def test_tensorrt_artifact_that_does_not_bind_is_not_served_on_the_cpu(tmp_path, agent_factory):
    """A TensorRT file is chosen when ORT claims TensorRT (a sitecustomize on the daemon's PYTHONPATH, as
    in test_provider_options); TensorRT cannot bind here, so the daemon chooses again without it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import onnxruntime as _o\n"
        "_real = _o.get_available_providers\n"
        "_o.get_available_providers = lambda: ['TensorrtExecutionProvider', *_real()]\n")
    models = tmp_path / "models"
    w = version(models, "1", [{"file": "model.qdq.onnx", "provider": "tensorrt", "precision": "int8-qdq", "target": "tensorrt"},
                              {"file": "model.onnx"}], {"model.onnx": 0, "model.qdq.onnx": 1})
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", ""), str(REPO)])}
    a = agent_factory(models_dir=models, env=env, config={"runtime": {"providers": ["tensorrt", "cpu"]}}).start()
    c = a.client()
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(infer(c, "1", x), x @ w["model.onnx"][0] + w["model.onnx"][1], rtol=1e-5, atol=1e-5)
    _, status = c.json("GET", "/edge/status")
    row = next(m for m in status["models"] if m["name"] == "lin")
    assert row["artifact"] == "model.onnx" and row["precision"] == "int8-dynamic" and row["provider"] == "cpu"
    assert "artifact model.qdq.onnx is for tensorrt but the session bound cpu; choosing again without tensorrt" in a.log()
    shutil.rmtree(site)
