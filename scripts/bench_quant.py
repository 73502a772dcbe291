#!/usr/bin/env python3
"""Benchmark FP32 vs INT8 in one run: MiniLM (dynamic, QDQ) and the digits MLP.

    scripts/bench_quant.py [--minilm .cache/minilm] [--seconds 2] [--json] [--plot bench-results/quant.png]

MiniLM: batch 1/8/32 at sequence length 64 (every position a real token),
raw ONNX Runtime on the CPU provider: throughput (rows/s), latency per batch
(p50/p99 ms), and mean/min cosine of the pooled embedding vs FP32. Digits
(models/digits/1, skipped if absent): FP32 vs an INT8 QDQ copy made here
(calibrated on the training split), top-1 on the held-out split, latency.
Numbers on a shared machine are noisy: run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from tqdm import tqdm  # noqa: E402

SEQ = 64
BATCHES = (1, 8, 32)
VERSIONS = (("1", "fp32"), ("2", "int8-dynamic"), ("3", "int8-qdq"))


def session(path: Path) -> ort.InferenceSession:
    """A CPU session with the version's own model.yaml session settings, as the daemon opens it."""
    from edge_agent.runtime.model_spec import load_model_spec

    so = ort.SessionOptions()
    so.log_severity_level = 3
    yml = path.parent / "model.yaml"
    disabled = load_model_spec(yml).session.disabled_optimizers if yml.is_file() else []
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def timed(fn, seconds: float) -> list[float]:
    fn()  # warm-up: first runs allocate
    fn()
    lat, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(lat) < 5:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def summarise(lat: list[float], rows: int) -> dict:
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0]] * 99
    return {"runs": len(lat), "throughput_rows_s": round(rows * len(lat) / sum(lat), 1),
            "p50_ms": round(statistics.median(lat) * 1e3, 3), "p99_ms": round(q[98] * 1e3, 3)}


def minilm_feeds(pipe, n: int) -> dict:
    lines = [ln for ln in (REPO / "scripts/data/sentences.txt").read_text().splitlines() if ln.strip()]
    # Long rows: sentences joined so every row has >= SEQ tokens, then cut.
    texts = [" ".join(lines[(i * 7 + j) % len(lines)] for j in range(6)) for i in range(n)]
    feeds = pipe.prepare(np.array([[t.encode()] for t in texts], dtype=object))
    assert feeds["input_ids"].shape[1] >= SEQ
    out = {k: v[:, :SEQ].copy() for k, v in feeds.items()}
    out["input_ids"][:, -1] = 102  # keep a [SEP] at the cut, as truncation would
    return out


def bench_minilm(root: Path, seconds: float, progress: bool, rounds: int = 1) -> list[dict]:
    from edge_agent.runtime.model_spec import load_model_spec
    from edge_agent.runtime.text import TextPipeline

    sessions = {prec: session(root / v / "model.onnx") for v, prec in VERSIONS}
    spec = load_model_spec(root / "1" / "model.yaml")
    pipe = TextPipeline(spec.text, root / "1", [i.name for i in sessions["fp32"].get_inputs()])
    feeds_all = minilm_feeds(pipe, max(BATCHES))
    jobs = [(b, p) for b in BATCHES for p in sessions]
    # Rounds alternate the configurations, so a slow spell of this shared
    # machine is spread over all of them instead of landing on one.
    lats: dict[tuple[int, str], list[float]] = {j: [] for j in jobs}
    for _ in tqdm(range(rounds), desc="rounds", disable=not progress or rounds == 1):
        for b, prec in tqdm(jobs, desc="minilm", disable=not progress, leave=rounds == 1):
            graph = pipe.graph_feeds({k: v[:b] for k, v in feeds_all.items()})
            lats[(b, prec)] += timed(lambda: sessions[prec].run(None, graph), seconds)
    results = []
    ref: dict[int, np.ndarray] = {}
    for b, prec in jobs:
        feeds = {k: v[:b] for k, v in feeds_all.items()}
        emb = pipe.pool({"last_hidden_state": sessions[prec].run(None, pipe.graph_feeds(feeds))[0]}, feeds)
        if prec == "fp32":
            ref[b] = emb
        cos = (emb * ref[b]).sum(1)
        results.append({"model": "minilm", "precision": prec, "batch": b, "seq": SEQ, **summarise(lats[(b, prec)], b),
                        "mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5)})
    for r in results:
        base = next(x for x in results if x["batch"] == r["batch"] and x["precision"] == "fp32")
        r["speedup_vs_fp32"] = round(r["throughput_rows_s"] / base["throughput_rows_s"], 2)
    return results


def bench_digits(model_dir: Path, seconds: float, progress: bool) -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edge_agent.quantize.convert import quantize

    sys.path.insert(0, str(REPO / "scripts"))
    seed = getattr(__import__("train_digits"), "SEED", 0)
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, _, y_te = train_test_split(x.astype(np.float32), y, test_size=0.25, random_state=seed, stratify=y)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-digits-") as tmp:
        int8 = Path(tmp) / "model.onnx"
        quantize(model_dir / "model.onnx", int8, "qdq", [{"input": x_tr[i : i + 64]} for i in range(0, len(x_tr), 64)], progress=False)
        for prec, path in tqdm((("fp32", model_dir / "model.onnx"), ("int8-qdq", int8)), desc="digits", disable=not progress):
            sess = session(path)
            names = [o.name for o in sess.get_outputs()]
            proba = dict(zip(names, sess.run(None, {"input": x_te})))["probabilities"]
            acc = float((proba.argmax(1) == y_te).mean())
            for b in (1, 64):
                lat = timed(lambda: sess.run(None, {"input": x_te[:b]}), seconds / 2)
                results.append({"model": "digits", "precision": prec, "batch": b, **summarise(lat, b),
                                "top1": round(acc, 4), "test_samples": len(y_te)})
    return results


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mini = [r for r in results if r["model"] == "minilm"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    for i, (_, prec) in enumerate(VERSIONS):
        rs = [next(r for r in mini if r["batch"] == b and r["precision"] == prec) for b in BATCHES]
        xs = [j + (i - 1) * width for j in range(len(BATCHES))]
        bars = ax.bar(xs, [r["throughput_rows_s"] for r in rs], width, label=f"{prec}")
        for bar, r in zip(bars, rs):
            ax.annotate(f"cos {r['mean_cosine']:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(BATCHES)), [f"batch {b}" for b in BATCHES])
    ax.set_ylabel("rows / s (CPU, seq 64)")
    ax.set_title("all-MiniLM-L6-v2: FP32 vs INT8 on ONNX Runtime CPU")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", type=Path, default=REPO / ".cache" / "minilm")
    ap.add_argument("--digits", type=Path, default=REPO / "models" / "digits" / "1")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per configuration and round")
    ap.add_argument("--rounds", type=int, default=1, help="MiniLM: alternate the configurations this many times")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--plot", type=Path, default=REPO / "bench-results" / "quant.png")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if not (args.minilm / "1" / "model.onnx").is_file():
        print(f"bench_quant: {args.minilm} not built: run scripts/export_minilm.py", file=sys.stderr)
        return 2
    results = bench_minilm(args.minilm, args.seconds, args.progress, args.rounds)
    if (args.digits / "model.onnx").is_file():
        results += bench_digits(args.digits, args.seconds, args.progress)
    else:
        print(f"bench_quant: {args.digits}/model.onnx absent; digits skipped", file=sys.stderr)
    plot(results, args.plot)
    meta = {"cpu_count": os.cpu_count(), "onnxruntime": ort.__version__, "loadavg": os.getloadavg()}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
    else:
        for r in results:
            extra = f"cos mean {r['mean_cosine']} min {r['min_cosine']} x{r['speedup_vs_fp32']}" if r["model"] == "minilm" else f"top1 {r['top1']}"
            print(f"{r['model']:7} {r['precision']:13} b={r['batch']:<3} {r['throughput_rows_s']:>9} rows/s "
                  f"p50 {r['p50_ms']:>8} ms p99 {r['p99_ms']:>8} ms  {extra}")
        print(f"plot: {args.plot}; load average {meta['loadavg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
