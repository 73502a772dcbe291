#!/usr/bin/env python3
"""What scripts/bench.py's `--only ocr` section needs from the OCR side (issue 18): RapidOCR
1.4.4 run in-process as a user runs it (the baseline the daemon is compared with), and the
det graph alone, FP32 vs INT8, on the same rendered images.

    scripts/ocr_bench_ref.py [--count 8] [--seed 18] [--concurrency 1 4 16] [--seconds 5]
                             [--det-int8 DIR/ocr/2/det.onnx]   # smoke run / standalone figures

From bench.py (REPO is on sys.path):
    from scripts.ocr_bench_ref import rendered_images, rapidocr_run, det_timing
    imgs = rendered_images(24, seed=18)            # [(encoded PNG bytes, BGR array)]
    r = rapidocr_run([b for b, _ in imgs], concurrency=4, seconds=10)
    # -> {"images_per_s", "p50_ms", "p99_ms", "images", "cpu_ms_per_image",
    #     "stage_ms_per_image": {"decode_pre", "det", "cls", "rec"}}
    d = det_timing({"fp32": fp32_path, "int8": int8_path}, [a for _, a in imgs], rounds=5)

Images are encoded bytes so RapidOCR decodes them itself, as the daemon does. The machine
figures belong in docs/BENCHMARKS.md only when measured on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def rendered_images(count: int, seed: int = 18) -> list:
    """``count`` rendered text images as (PNG bytes, BGR array) (scripts/render_ocr_samples.py)."""
    import runpy

    import cv2

    render_set = runpy.run_path(str(REPO / "scripts" / "render_ocr_samples.py"))["render_set"]
    return [(cv2.imencode(".png", img)[1].tobytes(), img) for img, _ in render_set(count, seed)]


def _pct(values, p: float) -> float:
    return float(np.percentile(values, p)) if values else float("nan")


def rapidocr_run(images: list, concurrency: int = 1, seconds: float = 5.0, engine=None) -> dict:
    """RapidOCR (one engine, default config) over ``images`` (bytes or paths) from
    ``concurrency`` threads for about ``seconds`` (at least one pass over the images).
    Per-image latency, throughput, process CPU per image and RapidOCR's own stage times
    (decode+pre-processing = total minus det, cls, rec)."""
    from rapidocr_onnxruntime import RapidOCR

    engine = engine or RapidOCR()
    lat, stages, lock = [], {"decode_pre": [], "det": [], "cls": [], "rec": []}, threading.Lock()
    deadline = [0.0]
    nxt = [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(images) and time.perf_counter() > deadline[0]:
                return
            t0 = time.perf_counter()
            _, el = engine(images[i % len(images)])
            dt = time.perf_counter() - t0
            el = list(el or []) + [0.0] * 3
            with lock:
                lat.append(dt)
                for k, v in zip(("det", "cls", "rec"), el[:3]):
                    stages[k].append(v)
                stages["decode_pre"].append(max(dt - sum(el[:3]), 0.0))

    engine(images[0])  # warm-up: first runs allocate
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline[0] = t0 + seconds
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = len(lat)
    return {"concurrency": concurrency, "images": n, "images_per_s": n / wall, "p50_ms": _pct(lat, 50) * 1e3,
            "p99_ms": _pct(lat, 99) * 1e3, "cpu_ms_per_image": cpu / n * 1e3,
            "stage_ms_per_image": {k: statistics.fmean(v) * 1e3 for k, v in stages.items()}}


def det_timing(models: dict, arrays: list, rounds: int = 3, threads: int = 0) -> dict:
    """The det graph alone per model file ({label: path}), RapidOCR's det input of each image,
    rounds alternating between the models; per model the median over rounds of ms per image
    and the spread."""
    import onnxruntime as ort

    from edge_agent.quantize.ocr_gate import det_input

    feeds = [det_input(a) for a in arrays]
    sessions = {}
    for label, path in models.items():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        sessions[label] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    per = {label: [] for label in models}
    for r in range(rounds + 1):                  # round 0 warms up
        for label, s in sessions.items():
            name = s.get_inputs()[0].name
            t0 = time.perf_counter()
            for x in feeds:
                s.run(None, {name: x})
            if r:
                per[label].append((time.perf_counter() - t0) / len(feeds) * 1e3)
    return {label: {"ms_per_image": statistics.median(v), "min": min(v), "max": max(v)} for label, v in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--det-int8", type=Path, help="an INT8 det.onnx (edge-agent quantize) to time against the wheel's FP32 det")
    args = ap.parse_args(argv)
    imgs = rendered_images(args.count, args.seed)
    for c in args.concurrency:
        r = rapidocr_run([b for b, _ in imgs], c, args.seconds)
        st = " ".join(f"{k}={v:.1f}" for k, v in r["stage_ms_per_image"].items())
        print(f"RapidOCR c={c:<3} {r['images_per_s']:.2f} img/s  p50 {r['p50_ms']:.0f} ms  p99 {r['p99_ms']:.0f} ms  "
              f"cpu {r['cpu_ms_per_image']:.0f} ms/img  stages ms/img: {st}  ({r['images']} images)")
    if args.det_int8:
        import rapidocr_onnxruntime

        fp32 = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
        for label, v in det_timing({"fp32": fp32, "int8": args.det_int8}, [a for _, a in imgs], args.rounds).items():
            print(f"det {label}: {v['ms_per_image']:.1f} ms/image (spread {v['min']:.1f}-{v['max']:.1f}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
