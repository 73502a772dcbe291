"""scripts/bench.py's ``--only ocr`` section (issue 18): the OCR pipeline (PP-OCRv4 det ->
cls -> rec) as the daemon serves it vs RapidOCR 1.4.4 in-process on the same rendered images.

For each concurrency (default 1, 4, 16), in alternating rounds (median reported, spread
kept): (a) RapidOCR in-process (scripts/ocr_bench_ref.py), (b) the daemon over its Unix
socket (image bodies, Content-Type image/png, as curl sends them), (c) the daemon over MQTT
5 (binary payloads with a content type, through mosquitto). Per point: images/s, p50/p99,
the daemon's average recogniser batch (crops per rec run) and its CPU per image, split into
decode/pre, each step's graph and post-processing (edge_agent_pipeline_step_seconds_total),
beside RapidOCR's own stage times. Then the det graph alone, FP32 vs INT8 (--ocr-det-int8,
the file `edge-agent quantize` wrote). The daemon's cache is off: every image is computed.

Targets (docs/BENCHMARKS.md): daemon >= 1.2x RapidOCR's throughput at concurrency 4 and 16;
p50 at concurrency 1 <= 1.1x RapidOCR's. Needs .cache/ocr (scripts/build_ocr.py) and
rapidocr-onnxruntime (extras dev). Writes bench-results/ocr.png.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OCR_BUILD = REPO / ".cache" / "ocr" / "1"
SIDES = ("rapidocr", "socket", "mqtt")


def _pct(values, p: float) -> float:
    return float(np.percentile(values, p)) * 1e3 if values else float("nan")


def _metrics(client) -> dict:
    """The pipeline's per-step counters: {(metric, step, phase): value} (phase '' if none)."""
    _, _, raw = client.request("GET", "/metrics")
    out: dict = {}
    for line in raw.decode().splitlines():
        if not line.startswith("edge_agent_pipeline_step_") or 'model="ocr"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        labels = dict(kv.split("=", 1) for kv in name.split("{", 1)[1].rstrip("}").split(","))
        key = (metric, labels.get("step", "").strip('"'), labels.get("phase", "").strip('"'))
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _pipeline_split(before: dict, after: dict, images: int) -> dict:
    """Average rec batch and ms per image by step and phase, from two metric snapshots."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = max(1, images)
    batches = d.get(("edge_agent_pipeline_step_batch_size_count", "rec", ""), 0.0)
    split = {f"{step}/{phase}": round(v / n * 1e3, 2) for (m, step, phase), v in d.items()
             if m == "edge_agent_pipeline_step_seconds_total" and v > 0}
    return {"avg_rec_batch": round(d.get(("edge_agent_pipeline_step_batch_size_sum", "rec", ""), 0.0) / batches, 2) if batches else None,
            "ms_per_image": split}


def _proc_cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _done(i: int, images: list, stop: float) -> bool:
    """A run ends once every image was sent at least once and its time is up."""
    return i >= len(images) and time.perf_counter() > stop


def _socket_run(daemon, images: list, concurrency: int, seconds: float) -> dict:
    from edge_agent.client import AgentClient

    lat, lock, stop = [], threading.Lock(), time.perf_counter() + seconds
    errors, take = [0], itertools.count().__next__  # one image index per request, across threads

    def worker():
        c = AgentClient(str(daemon.socket), timeout=120)
        i = take()
        while not _done(i, images, stop):
            t0 = time.perf_counter()
            status, _, _ = c.request("POST", "/v2/models/ocr/infer", images[i % len(images)], {"Content-Type": "image/png"})
            with lock:
                lat.append(time.perf_counter() - t0)
                errors[0] += status != 200
            i = take()
        c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"images": len(lat), "images_per_s": len(lat) / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "errors": errors[0]}


def _mqtt_run(port: int, images: list, concurrency: int, seconds: float) -> dict:
    from edge_agent.transports.mqtt.client import MqttInferClient

    async def go():
        c = MqttInferClient("127.0.0.1", port, device="bench-unit", prefix="edge", protocol="5")
        await c.connect()
        lat, errors, take = [], [0], itertools.count().__next__
        stop = time.perf_counter() + seconds

        async def worker():
            i = take()
            while not _done(i, images, stop):
                t0 = time.perf_counter()
                ans = await c.infer("ocr", images[i % len(images)], content_type="image/png", timeout=120)
                i = take()
                lat.append(time.perf_counter() - t0)
                errors[0] += "outputs" not in ans.doc

        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await c.close()
        wall = time.perf_counter() - t0
        return {"images": len(lat), "images_per_s": len(lat) / wall, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "errors": errors[0]}

    return asyncio.run(go())


def _median(runs: list) -> dict:
    best = sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]
    return {**best, "all_images_per_s": [round(r["images_per_s"], 2) for r in runs]}


def bench_ocr(args, results: dict, kit) -> None:
    """``kit`` is scripts/bench.py (Daemon, start_broker, stop_broker, log)."""
    Daemon, log = kit.Daemon, kit.log
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from ocr_bench_ref import det_timing, rapidocr_run, rendered_images

    if not (OCR_BUILD / "model.yaml").is_file():
        log(f"{OCR_BUILD} missing: skipping OCR (python scripts/build_ocr.py --out .cache)")
        return
    from rapidocr_onnxruntime import RapidOCR

    imgs = rendered_images(args.ocr_images, seed=18)
    images = [b for b, _ in imgs]
    broker, port, tmp = kit.start_broker("ocr")
    if broker is None:
        return
    shutil.copytree(OCR_BUILD, tmp / "models" / "ocr" / "1")
    d = None
    out: dict = {"images": len(images), "points": []}
    try:
        d = Daemon(tmp / "models", {
            "cache": {"enabled": False}, "device_id": "bench-unit",
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "prefix": "edge",
                     "rate_limit": {"rate": 1e9, "burst": 1_000_000_000, "total_rate": 1e9, "total_burst": 1_000_000_000}},
        }, "ocr")
        engine = RapidOCR()
        time.sleep(1.0)
        for c in args.ocr_concurrency:
            runs: dict = {s: [] for s in SIDES}
            for rnd in range(args.rounds):
                for side in SIDES:
                    if side == "rapidocr":
                        r = rapidocr_run(images, concurrency=c, seconds=args.seconds, engine=engine)
                    else:
                        m0, cpu0 = _metrics(d.client()), _proc_cpu(d.proc.pid)
                        r = _socket_run(d, images, c, args.seconds) if side == "socket" else _mqtt_run(port, images, c, args.seconds)
                        r["cpu_ms_per_image"] = (_proc_cpu(d.proc.pid) - cpu0) / max(1, r["images"]) * 1e3
                        r.update(_pipeline_split(m0, _metrics(d.client()), r["images"]))
                    runs[side].append(r)
                    log(f"OCR c={c} round {rnd + 1} {side}: {r['images_per_s']:.2f} images/s, p50 {r['p50_ms']:.0f} ms")
            point = {"concurrency": c, **{s: _median(runs[s]) for s in SIDES}}
            base = point["rapidocr"]
            for s in ("socket", "mqtt"):
                point[f"{s}_vs_rapidocr_throughput"] = round(point[s]["images_per_s"] / base["images_per_s"], 3)
                point[f"{s}_vs_rapidocr_p50"] = round(point[s]["p50_ms"] / base["p50_ms"], 3)
            out["points"].append(point)
        det = {"fp32": OCR_BUILD / "det.onnx"}
        if args.ocr_det_int8:
            det["int8"] = args.ocr_det_int8
        out["det_graph"] = det_timing(det, [a for _, a in imgs], rounds=max(1, args.rounds))
    finally:
        if d is not None:
            d.stop()
        kit.stop_broker(broker, tmp)
    results["ocr"] = out


def print_ocr(results: dict) -> None:
    o = results.get("ocr")
    if not o:
        return
    print(f"\nOCR pipeline ({o['images']} rendered images)  images/s   p50 ms   p99 ms  rec batch  CPU ms/img  vs RapidOCR (tput, p50)")
    for pt in o["points"]:
        for s in SIDES:
            r = pt[s]
            vs = "%.2fx, %.2fx" % (pt[s + "_vs_rapidocr_throughput"], pt[s + "_vs_rapidocr_p50"]) if s != "rapidocr" else ""
            print(f"  c={pt['concurrency']:<3} {s:<10}          {r['images_per_s']:>8.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f}"
                  f"  {r.get('avg_rec_batch') or '':>9} {r['cpu_ms_per_image']:>10.0f}  {vs}   rounds {r['all_images_per_s']}")
        for s in ("socket", "mqtt"):
            print(f"      {s} ms per image by step/phase: {pt[s].get('ms_per_image')}")
        stages = ", ".join("%s: %.1f" % kv for kv in pt["rapidocr"]["stage_ms_per_image"].items())
        print(f"      RapidOCR ms per image by stage: {stages}")
    det = ", ".join("%s: %.1f [%.1f-%.1f]" % (k, v["ms_per_image"], v["min"], v["max"]) for k, v in o["det_graph"].items())
    print(f"  det graph alone, ms per image (median [min-max] of rounds): {det}")


def plot_ocr(results: dict, path: Path) -> None:
    o = results.get("ocr")
    if not o:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [pt["concurrency"] for pt in o["points"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    for s in SIDES:
        a1.plot(cs, [pt[s]["images_per_s"] for pt in o["points"]], marker="o", label=s)
        a2.plot(cs, [pt[s]["p50_ms"] for pt in o["points"]], marker="o", label=s)
    a1.set(title="OCR throughput", xlabel="concurrency", ylabel="images / s", xscale="log")
    a2.set(title="OCR p50 latency", xlabel="concurrency", ylabel="ms", xscale="log")
    a1.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


__all__ = ["bench_ocr", "print_ocr", "plot_ocr"]
