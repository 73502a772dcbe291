"""Provider options per ONNX Runtime version, and the loud check of what bound.

The option table decides which TensorRT keys each ORT minor version gets
(JetPack 5's NVIDIA wheels are 1.15-1.18; 1.16 must not get
trt_timing_cache_path, which it refuses). The binding check runs real ORT
sessions on this CPU-only machine: ``onnxruntime.get_available_providers`` is
made to claim TensorRT and CUDA, so the daemon asks for them and ORT, which has
neither, builds the session without them - the silent path a broken JetPack
GPU stack takes. The one thing that cannot happen here, ORT refusing a
TensorRT option (it needs a TensorRT build), is played by a session class that
raises ORT 1.16's own message; everything after it is real.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import REGISTRY

from edge_agent.config import RuntimeConfig
from edge_agent.runtime import providers as P

# Not daemon_proc.REPO: these tests (all but the last three) also run under Python 3.8 with ORT 1.16.3
# (`pytest --noconftest`), where the daemon's modules do not import yet.
REPO = Path(__file__).resolve().parents[2]
ALL = [P.TRT, P.CUDA, P.CPU]
DIGITS = REPO / "models" / "digits" / "1"
# Every TensorRT key tensorrt_options() can produce (all config switches on).
EVERY_TRT_KEY = {
    "device_id", "trt_fp16_enable", "trt_int8_enable", "trt_max_workspace_size", "trt_builder_optimization_level",
    "trt_min_subgraph_size", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable",
    "trt_timing_cache_path", "trt_dla_enable", "trt_dla_core",
}
FULL = RuntimeConfig.model_validate({"tensorrt": {"dla_core": 0}, "cuda": {"gpu_mem_limit_mb": 512}})


def _trt(tmp_path, ort_version: str, trt_version: str = "8.5.2.2") -> dict:
    provs = P.build_providers(FULL, ALL, tmp_path, "ab" * 32, "int8-qdq", gpu="Xavier", trt_version=trt_version,
                              ort_version_text=ort_version)
    assert [n for n, _ in provs] == ALL
    return provs[0][1]


def _fallbacks(model: str, wanted: str, bound: str, reason: str) -> float:
    return REGISTRY.get_sample_value("edge_agent_provider_fallbacks_total",
                                     {"model": model, "wanted": wanted, "bound": bound, "reason": reason}) or 0.0


# --- the option table -------------------------------------------------------------------


def test_ort_116_gets_no_timing_cache_path(tmp_path):
    opts = _trt(tmp_path, "1.16.0")
    assert "trt_timing_cache_path" not in opts
    assert set(opts) == EVERY_TRT_KEY - {"trt_timing_cache_path"}
    # No directory made for a path ORT is not told about; the engine cache still is.
    assert not any(p.name.startswith("timing-") for p in (tmp_path / "trt").iterdir())
    assert (tmp_path / "trt" / ("ab" * 8 + "-Xavier-8.5.2.2")).is_dir()


def test_current_ort_gets_every_option(tmp_path):
    opts = _trt(tmp_path, "1.32.0")
    assert set(opts) == EVERY_TRT_KEY
    assert opts["trt_timing_cache_path"] == str(tmp_path / "trt" / "timing-Xavier-8.5.2.2")
    assert (tmp_path / "trt" / "timing-Xavier-8.5.2.2").is_dir()


@pytest.mark.parametrize("version,timing_path,level_and_timing", [
    ("1.14.1", False, False),
    ("1.15.1", False, True),
    ("1.16.0", False, True),
    ("1.16.3", False, True),
    ("1.17.0", True, True),
    ("1.18.0", True, True),
    ("1.19.2", True, True),
    ("1.32.0", True, True),
])
def test_table_per_ort_version(tmp_path, version, timing_path, level_and_timing):
    opts = _trt(tmp_path, version)
    assert ("trt_timing_cache_path" in opts) is timing_path
    assert ("trt_builder_optimization_level" in opts) is level_and_timing
    assert ("trt_timing_cache_enable" in opts) is level_and_timing
    assert set(opts) <= P.option_keys(P.TRT_OPTION_KEYS, P.ort_version(version))
    cuda = P.build_providers(FULL, ALL, tmp_path, "ab" * 32, "fp32", gpu="g", trt_version="t", ort_version_text=version)[1][1]
    assert cuda == {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": 512 << 20}


def test_running_ort_version_is_the_default(tmp_path):
    running = _trt(tmp_path, ort.__version__)
    assert P.build_providers(FULL, ALL, tmp_path, "ab" * 32, "int8-qdq", gpu="Xavier", trt_version="8.5.2.2")[0][1] == running


def test_version_parsing():
    assert P.ort_version("1.16.0+cu114") == (1, 16)
    assert P.ort_version("1.18.0") == (1, 18)
    assert P.ort_version("garbage") == (0, 0)
    assert P.option_keys(P.TRT_OPTION_KEYS, (0, 0)) == P.TRT_OPTION_KEYS[(1, 14)]
    assert P.option_keys(P.TRT_OPTION_KEYS, (2, 0)) == P.TRT_OPTION_KEYS[(1, 18)]
    assert P.trt_major_minor("8.5.2.2") == (8, 5)
    assert P.trt_major_minor("lib8502") == (8, 5)  # getInferLibVersion() of TensorRT 8.5.2
    assert P.trt_major_minor("lib100300") == (10, 3)  # TensorRT 10 counts MAJOR*10000
    assert P.trt_major_minor("notrt") is None


def test_dropped_key_and_builder_level_noop_logged_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(P, "_logged_once", set())
    caplog.set_level(logging.INFO, logger="edge_agent.runtime.providers")
    for _ in range(3):
        _trt(tmp_path, "1.16.0", trt_version="8.5.2.2")
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("does not know TensorRT option trt_timing_cache_path" in m for m in msgs) == 1
    assert sum("trt_builder_optimization_level=3 has no effect" in m for m in msgs) == 1
    caplog.clear()
    _trt(tmp_path, "1.18.0", trt_version="10.3.0.26")
    assert not any("has no effect" in r.getMessage() or "does not know" in r.getMessage() for r in caplog.records)


# --- ORT's wrapper fallback, and the binding check -----------------------------------------


def test_ort_wrapper_fallback_is_switched_off():
    # A creation error (here: a malformed provider_options list, the one ORT raises on
    # this machine) makes ORT's wrapper rebuild the session on CPU and only print why.
    plain = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=[P.CPU], provider_options=[{}, {}])
    assert plain.get_providers() == [P.CPU]
    with pytest.raises(ValueError, match="same length"):
        P.NoFallbackSession(str(DIGITS / "model.onnx"), providers=[P.CPU], provider_options=[{}, {}])
    s = P.NoFallbackSession(str(DIGITS / "model.onnx"), providers=[P.CPU])
    s.enable_fallback()  # ORT's public switch cannot turn it back on: run() errors are raised too
    assert s._enable_fallback is False


@pytest.fixture
def gpu_claimed(monkeypatch):
    """ORT's module says TensorRT and CUDA are available; its C++ core, which builds the session, has neither."""
    real = ort.get_available_providers()
    assert P.TRT not in real and P.CUDA not in real  # this machine
    monkeypatch.setattr(ort, "get_available_providers", lambda: [P.TRT, P.CUDA, *real])


def test_available_but_not_bound_is_logged_counted_and_returned(tmp_path, caplog, gpu_claimed):
    caplog.set_level(logging.ERROR, logger="edge_agent.runtime.providers")
    provs = P.build_providers(RuntimeConfig(), ort.get_available_providers(), tmp_path, "e" * 64, "fp32")
    assert [n for n, _ in provs] == ALL
    before = _fallbacks("t1", "tensorrt", "cpu", "not_bound"), _fallbacks("t1", "cuda", "cpu", "not_bound")
    sess, fallbacks = P.create_session(DIGITS / "model.onnx", ort.SessionOptions(), provs, model="t1", version="1")
    assert sess.get_providers() == [P.CPU]
    assert [(f.wanted, f.bound, f.reason) for f in fallbacks] == [("tensorrt", "cpu", "not_bound"), ("cuda", "cpu", "not_bound")]
    assert _fallbacks("t1", "tensorrt", "cpu", "not_bound") == before[0] + 1
    assert _fallbacks("t1", "cuda", "cpu", "not_bound") == before[1] + 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("TensorrtExecutionProvider is available but did not bind" in m for m in errors), errors
    out = sess.run(None, {"input": np.load(DIGITS / "sample.npy").astype(np.float32).reshape(-1, 64)})
    assert out[0].tolist() == [2]


def test_refused_tensorrt_option_is_reported_and_cuda_tried_next(tmp_path, caplog, gpu_claimed, monkeypatch):
    """ORT <= 1.16 refuses trt_timing_cache_path. Played here (no TensorRT build of ORT exists on this machine)
    by a session class raising 1.16's message; create_session must report it and go on with CUDA, then CPU."""
    seen = []

    class TrtBuild(P.NoFallbackSession):
        def __init__(self, path, so, providers, provider_options, **kw):
            seen.append(list(providers))
            opts = dict(zip(providers, provider_options)).get(P.TRT, {})
            for key in opts:
                if key not in P.TRT_OPTION_KEYS[(1, 16)]:
                    raise RuntimeError("/onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:562 "
                                       f"onnxruntime::python::CreateExecutionProviderInstance Invalid TensorRT EP option: {key}")
            super().__init__(path, so, providers=providers, provider_options=provider_options, **kw)

    monkeypatch.setattr(P, "NoFallbackSession", TrtBuild)
    caplog.set_level(logging.ERROR, logger="edge_agent.runtime.providers")
    before = _fallbacks("t2", "tensorrt", "cpu", "invalid_option")
    # The options a 1.17 table would pass, given to a 1.16 build:
    provs = P.build_providers(RuntimeConfig(), ort.get_available_providers(), tmp_path, "e" * 64, "fp32", ort_version_text="1.17.0")
    sess, fallbacks = P.create_session(DIGITS / "model.onnx", ort.SessionOptions(), provs, model="t2", version="1")
    assert seen == [ALL, [P.CUDA, P.CPU]]
    assert sess.get_providers() == [P.CPU]
    trt = fallbacks[0]
    assert (trt.wanted, trt.bound, trt.reason) == ("tensorrt", "cpu", "invalid_option")
    assert "Invalid TensorRT EP option: trt_timing_cache_path" in trt.detail
    assert [(f.wanted, f.reason) for f in fallbacks[1:]] == [("cuda", "not_bound")]
    assert _fallbacks("t2", "tensorrt", "cpu", "invalid_option") == before + 1
    assert any("could not create the session with TensorrtExecutionProvider" in r.getMessage() and "trt_timing_cache_path" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    # The provider ORT's message names is the one dropped, whatever the configured order.
    seen.clear()
    cfg = RuntimeConfig(providers=["cuda", "tensorrt", "cpu"])
    provs = P.build_providers(cfg, ort.get_available_providers(), tmp_path, "e" * 64, "fp32", ort_version_text="1.17.0")
    sess, fallbacks = P.create_session(DIGITS / "model.onnx", ort.SessionOptions(), provs, model="t2", version="2")
    assert seen == [[P.CUDA, P.TRT, P.CPU], [P.CUDA, P.CPU]]
    assert sorted((f.wanted, f.reason) for f in fallbacks) == [("cuda", "not_bound"), ("tensorrt", "invalid_option")]
    # The table keeps a 1.16 build from refusing in the first place.
    seen.clear()
    provs = P.build_providers(RuntimeConfig(), ort.get_available_providers(), tmp_path, "e" * 64, "fp32", ort_version_text="1.16.0")
    sess, fallbacks = P.create_session(DIGITS / "model.onnx", ort.SessionOptions(), provs, model="t3", version="1")
    assert seen == [ALL] and [f.reason for f in fallbacks] == ["not_bound", "not_bound"]


def test_cpu_failure_is_the_models_error_not_a_fallback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        P.create_session(bad, ort.SessionOptions(), [(P.CPU, {})], model="bad", version="1")


def test_loaded_model_shows_the_fallback(tmp_path, gpu_claimed):
    from edge_agent.runtime.session import LoadedModel

    m = LoadedModel("digits", "1", DIGITS, RuntimeConfig(), tmp_path / "state")
    assert m.provider == "cpu"
    params = m.metadata()["parameters"]
    assert params["providers"] == [P.CPU]
    assert [(f["wanted"], f["bound"], f["reason"]) for f in params["provider_fallback"]] == [
        ("tensorrt", "cpu", "not_bound"), ("cuda", "cpu", "not_bound")]


def test_loaded_model_without_gpu_offered_has_no_fallback(tmp_path):
    from edge_agent.runtime.session import LoadedModel

    m = LoadedModel("digits", "1", DIGITS, RuntimeConfig(), tmp_path / "state")
    assert m.provider == "cpu" and m.metadata()["parameters"]["provider_fallback"] == []


def test_daemon_models_and_metrics_show_the_fallback(tmp_path, agent_factory):
    """End to end: a daemon whose ORT module claims TensorRT + CUDA (a sitecustomize on its PYTHONPATH)
    serves on CPU, and `edge-agent models`, /edge/status and /metrics say so."""
    from daemon_proc import copy_digits

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import onnxruntime as _o\n"
        "_real = _o.get_available_providers\n"
        "_o.get_available_providers = lambda: ['TensorrtExecutionProvider', 'CUDAExecutionProvider', *_real()]\n")
    models = tmp_path / "models"
    copy_digits(models)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", ""), str(REPO)])}
    a = agent_factory(models_dir=models, env=env).start()
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "models", "--socket", str(a.socket)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("digits"))
    assert "FALLBACK tensorrt->cpu (not_bound)" in row and "FALLBACK cuda->cpu (not_bound)" in row, r.stdout
    c = a.client()
    _, status = c.json("GET", "/edge/status")
    fb = next(m for m in status["models"] if m["name"] == "digits")["provider_fallback"]
    assert [f["wanted"] for f in fb] == ["tensorrt", "cuda"]
    _, _, metrics = c.request("GET", "/metrics")
    assert re.search(r'edge_agent_provider_fallbacks_total\{bound="cpu",model="digits",reason="not_bound",wanted="tensorrt"\} 1\.0',
                     metrics.decode()), metrics.decode()[:2000]
    # The gauge the alert rules read: 1 while this version runs below the provider it wanted.
    assert re.search(r'edge_agent_provider_fallback\{bound="cpu",model="digits",version="1",wanted="tensorrt"\} 1\.0',
                     metrics.decode()), metrics.decode()[:2000]
    assert "TensorrtExecutionProvider is available but did not bind" in a.log()
    shutil.rmtree(site)
