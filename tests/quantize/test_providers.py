"""Provider choice and TensorRT/CUDA option mapping, on a machine with neither."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edge_agent.config import RuntimeConfig
from edge_agent.runtime import providers as P

ALL = [P.TRT, P.CUDA, P.CPU]


def test_tensorrt_options_follow_config(tmp_path):
    cfg = RuntimeConfig.model_validate({
        "tensorrt": {"fp16": True, "int8": True, "workspace_mb": 512, "dla_core": 1, "builder_optimization_level": 5, "min_subgraph_size": 3},
        "cuda": {"device_id": 0, "gpu_mem_limit_mb": 2048, "cudnn_conv_algo_search": "EXHAUSTIVE"},
    })
    provs = P.build_providers(cfg, ALL, tmp_path, "ab" * 32, "int8-qdq", gpu="Xavier", trt_version="8.5.2", ort_version_text="1.18.0")
    assert [n for n, _ in provs] == ALL
    trt, cuda = provs[0][1], provs[1][1]
    engine = tmp_path / "trt" / ("ab" * 8 + "-Xavier-8.5.2")
    assert trt == {
        "device_id": 0, "trt_fp16_enable": True, "trt_int8_enable": True, "trt_max_workspace_size": 512 << 20,
        "trt_builder_optimization_level": 5, "trt_min_subgraph_size": 3,
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engine),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path / "trt" / "timing-Xavier-8.5.2"),
        "trt_dla_enable": True, "trt_dla_core": 1,
    }
    assert engine.is_dir()
    assert cuda == {"device_id": 0, "gpu_mem_limit": 2048 << 20, "cudnn_conv_algo_search": "EXHAUSTIVE"}


def test_int8_only_for_qdq_and_caches_optional(tmp_path):
    cfg = RuntimeConfig.model_validate({"tensorrt": {"engine_cache": False, "timing_cache": False, "fp16": False}})
    for precision, want in (("fp32", False), ("fp16", False), ("int8-dynamic", False), ("int8-qdq", True)):
        opts = P.build_providers(cfg, ALL, tmp_path, "d" * 64, precision, gpu="g", trt_version="t")[0][1]
        assert opts["trt_int8_enable"] is want, precision
        assert opts["trt_fp16_enable"] is False
        assert not any(k.startswith(("trt_engine_cache", "trt_timing_cache", "trt_dla")) for k in opts)
    assert P.cuda_options(RuntimeConfig()) == {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}


def test_engine_cache_keyed_by_model_gpu_and_trt(tmp_path):
    def path(digest, gpu, trt):
        opts = P.build_providers(RuntimeConfig(), ALL, tmp_path, digest, "fp32", gpu=gpu, trt_version=trt)[0][1]
        return opts["trt_engine_cache_path"]
    base = path("a" * 64, "Xavier", "8.5")
    assert len({base, path("b" * 64, "Xavier", "8.5"), path("a" * 64, "Orin", "8.5"), path("a" * 64, "Xavier", "10.3")}) == 4


def test_unavailable_providers_skipped_cpu_last(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.runtime.providers")
    provs = P.build_providers(RuntimeConfig(), [P.CUDA, P.CPU], tmp_path, "c" * 64, "fp32")
    assert provs == [(P.CUDA, {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}), (P.CPU, {})]
    assert "TensorrtExecutionProvider not available" in caplog.text
    assert not (tmp_path / "trt").exists()
    # "cpu" left out of the config still ends on CPU; order follows the config.
    cfg = RuntimeConfig(providers=["cuda", "tensorrt"])
    assert [n for n, _ in P.build_providers(cfg, ALL, tmp_path, "c" * 64, "fp32", gpu="g", trt_version="t")] == [P.CUDA, P.TRT, P.CPU]


def test_machine_identity_without_gpu():
    assert P.gpu_name() == "nogpu"
    assert P.tensorrt_version() == "notrt"


def test_session_requested_with_trt_and_cuda_comes_up_on_cpu(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    available = ort.get_available_providers()
    assert P.TRT not in available and P.CUDA not in available  # this machine
    provs = P.build_providers(RuntimeConfig(), available, tmp_path / "state", "e" * 64, "int8-qdq")
    assert provs == [(P.CPU, {})]
    sess = ort.InferenceSession(str(path), providers=provs)
    assert sess.get_providers() == [P.CPU]
    # Even asking ORT directly for all three (unfiltered) falls back to CPU.
    unfiltered = P.build_providers(RuntimeConfig(), ALL, tmp_path / "state", "e" * 64, "int8-qdq")
    sess = ort.InferenceSession(str(path), providers=unfiltered)
    assert sess.get_providers() == [P.CPU]
    np.testing.assert_array_equal(sess.run(None, {"x": np.array([-1, 2], np.float32)})[0], [0, 2])
