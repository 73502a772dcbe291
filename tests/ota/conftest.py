"""Fixtures of the OTA tests: tiny real ONNX models, keys, a registry, HTTP servers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge_agent.ota.devserver import RegistryServer
from nginx_server import NginxServer, nginx_binary
from edge_agent.ota.signing import keygen


def write_linear_model(version_dir: Path, seed: int = 0, in_dim: int = 4, out_dim: int = 3, name: str = "linear",
                       pad_bytes: int = 0) -> Path:
    """y = x @ W + b with a dynamic batch axis; ``pad_bytes`` adds an unused initializer to grow the file."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_dim, out_dim)).astype(np.float32)
    b = rng.standard_normal(out_dim).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if pad_bytes:
        inits.append(numpy_helper.from_array(rng.standard_normal(pad_bytes // 4).astype(np.float32), "pad"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, version_dir / "model.onnx")
    spec = {
        "name": name,
        "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [in_dim]}],
        "outputs": [{"name": "y", "datatype": "FP32", "dims": [out_dim]}],
        "lineage": {"source_model_sha256": "0" * 64, "quantization": {"method": "none"}, "trained_on": "synthetic"},
    }
    (version_dir / "model.yaml").write_text(yaml.safe_dump(spec))
    return version_dir


@pytest.fixture
def keys(tmp_path):
    priv, pub = keygen(tmp_path / "keys")
    return priv, pub


@pytest.fixture
def other_keys(tmp_path):
    return keygen(tmp_path / "other-keys")


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    return root


@pytest.fixture
def src_models(tmp_path):
    """Builder of source version dirs: src_models("2", seed=.., kind="linear"|"slow"|"flaky") -> Path."""
    def make(version: str, kind: str = "linear", **kw) -> Path:
        writer = {"linear": write_linear_model, "slow": write_slow_linear_model, "flaky": write_flaky_linear_model}[kind]
        return writer(tmp_path / "src" / "linear" / version, **kw)
    return make


@pytest.fixture
def devserver(registry):
    with RegistryServer(registry) as srv:
        yield srv


@pytest.fixture
def device(tmp_path):
    d = tmp_path / "device"
    (d / "models").mkdir(parents=True)
    (d / "state").mkdir()
    return d


@pytest.fixture
def nginx(registry, tmp_path):
    """Debian's nginx serving the registry dir on a free loopback port (Range support built in)."""
    if nginx_binary() is None:
        pytest.skip("nginx binary not installed")
    try:
        server = NginxServer(registry, tmp_path / "nginx").start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server.url, server.prefix
    server.stop()


def _linear_spec(version_dir: Path, in_dim: int = 4, out_dim: int = 3) -> None:
    spec = {
        "name": "linear",
        "max_batch_size": 8,
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [in_dim]}],
        "outputs": [{"name": "y", "datatype": "FP32", "dims": [out_dim]}],
    }
    (version_dir / "model.yaml").write_text(yaml.safe_dump(spec))


def _save(graph, version_dir: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, version_dir / "model.onnx")
    _linear_spec(version_dir)
    return version_dir


def write_slow_linear_model(version_dir: Path, seed: int = 0, layers: int = 400, width: int = 1024) -> Path:
    """Same answers and IO as ``write_linear_model(seed)``, but each row also runs a chain of
    width x width MatMuls whose result is multiplied by zero: correct and much slower."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    big = (np.random.default_rng(99).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["lin"]),
             helper.make_node("MatMul", ["x", "P"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "BIG"], [f"h{i + 1}"]))
    nodes += [helper.make_node("MatMul", [f"h{layers}", "Z"], ["zero"]), helper.make_node("Add", ["lin", "zero"], ["y"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.full((4, width), 0.1, np.float32), "P"),
             numpy_helper.from_array(big, "BIG"), numpy_helper.from_array(np.zeros((width, 3), np.float32), "Z")]
    graph = helper.make_graph(nodes, "slow_linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    return _save(graph, version_dir)


def write_flaky_linear_model(version_dir: Path, seed: int = 0, limit: float = 100.0) -> Path:
    """Same answers and IO as ``write_linear_model(seed)`` for inputs below ``limit`` (the golden
    cases are standard normal); a batch holding any value above it fails in ONNX Runtime
    (a Gather index out of bounds), like a model broken on part of the live data."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["lin"]),
             helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
             helper.make_node("Greater", ["m", "LIMIT"], ["over"]),
             helper.make_node("Cast", ["over"], ["idx"], to=TensorProto.INT64),
             helper.make_node("Gather", ["ONE", "idx"], ["g"], axis=0),
             helper.make_node("Add", ["lin", "g"], ["y"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
             numpy_helper.from_array(np.array(limit, np.float32), "LIMIT"),
             numpy_helper.from_array(np.zeros(1, np.float32), "ONE")]
    graph = helper.make_graph(nodes, "flaky_linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    return _save(graph, version_dir)
