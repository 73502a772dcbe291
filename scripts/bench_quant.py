#!/usr/bin/env python3
"""Benchmark FP32 vs INT8 per artifact on this machine's CPU: MiniLM and the digits MLP.

    scripts/bench_quant.py [--minilm .cache/minilm] [--seconds 2] [--rounds 5] [--threads 1] [--json]
                           [--plot bench-results/quant.png]

MiniLM: FP32 (v1), every ONNX file of the INT8 dynamic version v2 (model.yaml
artifacts: int8 weights for VNNI CPUs, uint8 weights for the rest) and the
QDQ version v3, at batch 1/8/32 and sequence length 64 (every position a real
token), raw ONNX Runtime on the CPU provider, each file opened with its
version's model.yaml session settings. The configurations alternate in
rounds, so a slow spell of a shared machine is spread over all of them; per
configuration the median rows/s over the rounds and its spread (min-max), and
the speed-up as the median of each round's ratio to FP32 in that round. Mean /
min cosine of the pooled embedding vs FP32 on the benchmark rows.

Digits (models/digits/1, skipped if absent): FP32 vs INT8 copies made here
(dynamic with uint8 / int8 weights, static QDQ), top-1 on the held-out split,
rows/s at batch 1 and 64, rounds alternated the same way.

The CPU (model, INT8 features, all flags), the artifact the daemon would serve
here and the load average before and after are printed: the figures belong to
that CPU. An int8-weight file run on a CPU without VNNI is timed as it runs
there, but its cosine is not what its target CPUs compute (the kernels
saturate); the output says so.
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
DIGITS_BATCHES = (1, 64)


def session(path: Path, threads: int, disabled=()) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the daemon runs (runtime.allow_spinning)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


def timed(fn, seconds: float) -> list[float]:
    fn()  # warm-up: first runs allocate
    fn()
    lat, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(lat) < 5:
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def minilm_configs(root: Path, threads: int):
    """(key, label, session, version, file) for FP32, each file of v2 (by model.yaml artifacts) and v3."""
    from edge_agent.runtime.model_spec import load_model_spec

    out = []
    for v in ("1", "2", "3"):
        spec = load_model_spec(root / v / "model.yaml")
        for f in spec.artifact_files():
            targets = [a.target or "default" for a in spec.artifacts or () if a.file == f]
            if spec.precision == "fp32":
                key = "fp32"
            elif spec.precision == "int8-qdq":
                key = "int8-qdq"
            else:
                key = "int8-u8s8" if f == "model.u8s8.onnx" else "int8-u8u8"
            label = f"{key} (v{v} {f}" + (f": {', '.join(targets)})" if targets else ")")
            out.append((key, label, session(root / v / f, threads, spec.session.disabled_optimizers), v, f))
    return out


def minilm_feeds(pipe, n: int) -> dict:
    lines = [ln for ln in (REPO / "scripts/data/sentences.txt").read_text().splitlines() if ln.strip()]
    # Long rows: sentences joined so every row has >= SEQ tokens, then cut.
    texts = [" ".join(lines[(i * 7 + j) % len(lines)] for j in range(6)) for i in range(n)]
    feeds = pipe.prepare(np.array([[t.encode()] for t in texts], dtype=object))
    assert feeds["input_ids"].shape[1] >= SEQ
    out = {k: v[:, :SEQ].copy() for k, v in feeds.items()}
    out["input_ids"][:, -1] = 102  # keep a [SEP] at the cut, as truncation would
    return out


def alternate(jobs: dict, rounds: int, seconds: float, progress: bool, desc: str) -> dict:
    """jobs: name -> (fn, rows). Returns name -> {"rows_s": [per round], "lat": [every run]}."""
    out = {k: {"rows_s": [], "lat": []} for k in jobs}
    for _ in tqdm(range(rounds), desc=f"{desc} rounds", disable=not progress):
        for k, (fn, rows) in jobs.items():
            lat = timed(fn, seconds)
            out[k]["rows_s"].append(rows * len(lat) / sum(lat))
            out[k]["lat"] += lat
    return out


def summarise(m: dict, base: dict | None) -> dict:
    q = statistics.quantiles(m["lat"], n=100) if len(m["lat"]) >= 2 else [m["lat"][0]] * 99
    r = {"rounds": len(m["rows_s"]), "runs": len(m["lat"]), "rows_s_median": round(statistics.median(m["rows_s"]), 1),
         "rows_s_min": round(min(m["rows_s"]), 1), "rows_s_max": round(max(m["rows_s"]), 1),
         "p50_ms": round(statistics.median(m["lat"]) * 1e3, 3), "p99_ms": round(q[98] * 1e3, 3)}
    if base is not None:
        ratios = [a / b for a, b in zip(m["rows_s"], base["rows_s"])]
        r.update(speedup_vs_fp32=round(statistics.median(ratios), 2), speedup_min=round(min(ratios), 2), speedup_max=round(max(ratios), 2))
    return r


def bench_minilm(root: Path, seconds: float, progress: bool, rounds: int, threads: int, cpu) -> tuple[list[dict], dict]:
    from edge_agent.runtime.artifacts import choose_artifact
    from edge_agent.runtime.model_spec import load_model_spec
    from edge_agent.runtime.text import TextPipeline

    configs = minilm_configs(root, threads)
    spec1 = load_model_spec(root / "1" / "model.yaml")
    fp32 = next(c for c in configs if c[0] == "fp32")[2]
    pipe = TextPipeline(spec1.text, root / "1", [i.name for i in fp32.get_inputs()])
    feeds_all = minilm_feeds(pipe, max(BATCHES))
    jobs = {}
    for b in BATCHES:
        graph = pipe.graph_feeds({k: v[:b] for k, v in feeds_all.items()})
        for key, label, sess, _, _ in configs:
            jobs[(b, label)] = ((lambda s=sess, g=graph: s.run(None, g)), b)
    measured = alternate(jobs, rounds, seconds, progress, "minilm")
    served = choose_artifact(load_model_spec(root / "2" / "model.yaml"), cpu, ["cpu"])
    results = []
    for b in BATCHES:
        feeds = {k: v[:b] for k, v in feeds_all.items()}
        ref = None
        for key, label, sess, v, f in configs:
            emb = pipe.pool({"last_hidden_state": sess.run(None, pipe.graph_feeds(feeds))[0]}, feeds)
            ref = emb if key == "fp32" else ref
            cos = (emb * ref).sum(1)
            r = {"model": "minilm", "config": key, "label": label, "version": v, "file": f, "batch": b, "seq": SEQ,
                 **summarise(measured[(b, label)], None if key == "fp32" else measured[(b, configs[0][1])]),
                 "mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5),
                 "served_here": v == "2" and f == served.file}
            if key == "int8-u8s8" and not cpu.exact_u8s8:
                r["note"] = "this CPU has no VNNI: U8S8 kernels saturate here, cosine is not what VNNI CPUs get"
            results.append(r)
    return results, {"file": served.file, "target": served.target, "reason": served.reason}


def bench_digits(model_dir: Path, seconds: float, progress: bool, rounds: int, threads: int) -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edge_agent.quantize.convert import quantize

    sys.path.insert(0, str(REPO / "scripts"))
    seed = getattr(__import__("train_digits"), "SEED", 0)
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, _, y_te = train_test_split(x.astype(np.float32), y, test_size=0.25, random_state=seed, stratify=y)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-digits-") as tmp:
        calib = [{"input": x_tr[i : i + 64]} for i in range(0, len(x_tr), 64)]
        paths = {"fp32": model_dir / "model.onnx"}
        for key, mode, kw in (("int8-u8u8", "dynamic", {"dynamic_weights": "uint8"}), ("int8-u8s8", "dynamic", {"dynamic_weights": "int8"}),
                              ("int8-qdq", "qdq", {})):
            paths[key] = Path(tmp) / f"{key}.onnx"
            quantize(model_dir / "model.onnx", paths[key], mode, calib if mode == "qdq" else None, progress=False, **kw)
        sessions = {k: session(p, threads) for k, p in paths.items()}
        jobs = {(b, k): ((lambda s=s, f={"input": x_te[:b]}: s.run(None, f)), b) for b in DIGITS_BATCHES for k, s in sessions.items()}
        measured = alternate(jobs, rounds, seconds / 2, progress, "digits")
        for k, s in sessions.items():
            names = [o.name for o in s.get_outputs()]
            acc = float((dict(zip(names, s.run(None, {"input": x_te})))["probabilities"].argmax(1) == y_te).mean())
            for b in DIGITS_BATCHES:
                results.append({"model": "digits", "config": k, "label": k, "batch": b,
                                **summarise(measured[(b, k)], None if k == "fp32" else measured[(b, "fp32")]),
                                "top1": round(acc, 4), "test_samples": len(y_te)})
    return results


def plot(results: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mini = [r for r in results if r["model"] == "minilm"]
    labels = list(dict.fromkeys(r["label"] for r in mini))
    fig, ax = plt.subplots(figsize=(9, 5.4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        rs = [next(r for r in mini if r["batch"] == b and r["label"] == label) for b in BATCHES]
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(BATCHES))]
        med = [r["rows_s_median"] for r in rs]
        err = [[m - r["rows_s_min"] for m, r in zip(med, rs)], [r["rows_s_max"] - m for m, r in zip(med, rs)]]
        name = label + ("  [served here]" if rs[0].get("served_here") else "")
        bars = ax.bar(xs, med, width, yerr=err, capsize=2, label=name)
        for bar, r in zip(bars, rs):
            text = f"x{r['speedup_vs_fp32']:.2f}\ncos {r['mean_cosine']:.3f}" if "speedup_vs_fp32" in r else "FP32"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, r["rows_s_max"]), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(BATCHES)), [f"batch {b}" for b in BATCHES])
    ax.set_ylabel(f"rows / s (CPU, seq {SEQ}, {meta['threads']} thread(s); bars: median, whiskers: min-max of {meta['rounds']} rounds)", fontsize=7)
    cpu = meta["cpu"]
    ax.set_title(f"all-MiniLM-L6-v2 FP32 vs INT8 per artifact, ONNX Runtime {meta['onnxruntime']} CPU\n"
                 f"{cpu['model']} ({', '.join(cpu['int8_features']) or 'no INT8 features'}); "
                 f"load avg {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}", fontsize=8)
    ax.set_ylim(0, max(r["rows_s_max"] for r in mini) * 1.18)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    from edge_agent.runtime.cpu import this_cpu

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", type=Path, default=REPO / ".cache" / "minilm")
    ap.add_argument("--digits", type=Path, default=REPO / "models" / "digits" / "1")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing window per configuration and round")
    ap.add_argument("--rounds", type=int, default=5, help="alternate the configurations this many times")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads per session (default 1: what each of MiniLM's two batcher instances gets on 2 cores; 0: ORT's choice)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--plot", type=Path, default=REPO / "bench-results" / "quant.png")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if not (args.minilm / "1" / "model.onnx").is_file():
        print(f"bench_quant: {args.minilm} not built: run scripts/export_minilm.py", file=sys.stderr)
        return 2
    cpu = this_cpu()
    meta = {"cpu": {"model": cpu.model, "arch": cpu.arch, "int8_features": cpu.int8_features, "exact_u8s8": cpu.exact_u8s8,
                    "flags": sorted(cpu.flags)},
            "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__, "threads": args.threads, "rounds": args.rounds,
            "seconds": args.seconds, "loadavg_start": os.getloadavg()}
    results, served = bench_minilm(args.minilm, args.seconds, args.progress, args.rounds, args.threads, cpu)
    meta["minilm_v2_served_here"] = served
    if (args.digits / "model.onnx").is_file():
        results += bench_digits(args.digits, args.seconds, args.progress, args.rounds, args.threads)
    else:
        print(f"bench_quant: {args.digits}/model.onnx absent; digits skipped", file=sys.stderr)
    meta["loadavg_end"] = os.getloadavg()
    plot(results, meta, args.plot)
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=1))
        return 0
    print(f"CPU: {cpu.model} ({cpu.arch}), INT8 features: {', '.join(cpu.int8_features) or 'none'}; "
          f"exact U8S8 kernels: {'yes' if cpu.exact_u8s8 else 'no (no VNNI)'}")
    print(f"flags: {' '.join(sorted(cpu.flags))}")
    print(f"ONNX Runtime {ort.__version__}, {args.threads} intra-op thread(s), {args.rounds} rounds x {args.seconds} s; "
          f"MiniLM v2 serves {served['file']} here ({served['reason']})")
    for r in results:
        sp = f" x{r['speedup_vs_fp32']} [{r['speedup_min']}-{r['speedup_max']}]" if "speedup_vs_fp32" in r else " (base)"
        extra = f"cos mean {r['mean_cosine']} min {r['min_cosine']}" if r["model"] == "minilm" else f"top1 {r['top1']}"
        print(f"{r['model']:7} b={r['batch']:<3} {r['label']:<58} {r['rows_s_median']:>11} rows/s [{r['rows_s_min']}-{r['rows_s_max']}]{sp:<20} "
              f"p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms  {extra}{'  <- served here' if r.get('served_here') else ''}"
              + (f"  ({r['note']})" if r.get("note") else ""))
    print(f"plot: {args.plot}; load average {meta['loadavg_start']} -> {meta['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
