#!/usr/bin/env python3
"""edge-agent benchmark: every figure measured side by side in one run.

Sections (all by default; pick with --only):
  raw     ONNX Runtime session.run on the digits model at batch 1/8/32
  socket  the daemon over its Unix socket, batch-1 requests at concurrency 1/16/64
  tcp     the daemon's loopback TCP listener vs Mosec (Rust front, Python
          workers, dynamic batching) serving the same model with the same
          answers (checked), same client, in alternating rounds; plus two
          daemons with 32 clients each, the ceiling of a two-process design;
          each server's CPU per request, by thread (daemon) or process (Mosec)
  mqtt    round trips through mosquitto at 64 in flight, QoS 0 and 1: the
          daemon vs a raw paho echo responder
  cache   hit latency of the memo of encoded answers, the memory and the disk
          tiers (one client), hits (memo, and through the full path) vs
          misses at 64 clients, miss overhead vs the cache turned off (as
          shipped, i.e. sampling on a unique stream, and with every request
          looked up), in alternating rounds
  minilm  all-MiniLM-L6-v2 INT8 through the daemon at concurrency 32 vs raw
          ORT's best batch (needs .cache/minilm from scripts/export_minilm.py)
  offload offload throughput through one mosquitto with 1 and with 2 companions
          (a pool, as edge-agent-companion@.service runs it), alternating
          rounds (scripts/bench_offload.py)
  ocr     the OCR pipeline: RapidOCR in-process vs the daemon over the socket
          and MQTT at concurrency 1/4/16, rec batch, CPU per image by step;
          det FP32 vs INT8 (scripts/bench_ocr.py; needs .cache/ocr)

Clients run in their own processes (scripts/loadgen.py, scripts/mqttload.py),
so the client's Python does not share the daemon's GIL; on a 2-core machine
they still share the CPU, as they would on a unit. INT8 vs FP32 for the model
pipeline: scripts/bench_quant.py.

    python scripts/bench.py                     # all, table + bench-results/bench.png
    python scripts/bench.py --only socket tcp --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = sys.executable
DIGITS = REPO / "models" / "digits" / "1"

from edge_agent.client import AgentClient  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))] if v else 0.0


def server_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the servers under test, summed over ``pids``
    and split by where they ran: each root process's main thread (the daemon's
    event loop), its other threads (batcher workers, ONNX Runtime's pool),
    and its child processes by name (Mosec: its Rust front, ``mosec``, and
    its Python workers)."""
    import psutil

    out: dict[str, float] = {}

    def add(key: str, seconds: float) -> None:
        out[key] = out.get(key, 0.0) + seconds

    for pid in pids:
        root = psutil.Process(pid)
        for t in root.threads():
            add("main thread" if t.id == pid else "other threads", t.user_time + t.system_time)
        for child in root.children(recursive=True):
            try:
                c = child.cpu_times()
                add(f"process {child.name()}", c.user + c.system)
            except psutil.NoSuchProcess:
                pass
    return out


def measured_cpu(pids: list[int], run) -> dict:
    """``run()`` (a loadgen result), with the servers' CPU per answered
    request (µs, warm-up included on both sides) added as ``cpu_us``."""
    before = server_cpu(pids)
    out = run()
    after = server_cpu(pids)
    n = max(1, out.get("requests_all_phases") or out["requests"])
    out["cpu_us"] = {k: round((v - before.get(k, 0.0)) / n * 1e6, 1) for k, v in after.items()
                     if (v - before.get(k, 0.0)) / n * 1e6 >= 0.5}
    return out


def median_run(runs: list[dict]) -> dict:
    """Of several loadgen results, the one with the median throughput."""
    return sorted(runs, key=lambda r: r["throughput"])[len(runs) // 2]


# --- processes under test ------------------------------------------------------------


class Daemon:
    def __init__(self, models: Path, config: dict, tag: str) -> None:
        import yaml

        self.root = Path(tempfile.mkdtemp(prefix=f"eab-{tag}-"))
        self.socket = self.root / "agent.sock"
        cfg = {
            "device_id": "bench-unit",
            "paths": {"models_dir": str(models), "state_dir": str(self.root / "state"),
                      "cache_dir": str(self.root / "cache"), "outbox_dir": str(self.root / "outbox")},
            "server": {"socket": str(self.socket)},
            "logging": {"level": "WARNING"},
        }
        for k, v in config.items():
            cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
        (self.root / "config.yaml").write_text(yaml.safe_dump(cfg))
        self.log = open(self.root / "daemon.log", "wb")
        self.proc = subprocess.Popen([PY, "-m", "edge_agent.cli", "run", "--config", str(self.root / "config.yaml")],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "daemon.log").read_text())
            try:
                if self.socket.exists() and self.client().json("GET", "/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("daemon did not become ready")

    def client(self) -> AgentClient:
        return AgentClient(str(self.socket))

    def batch_stats(self) -> tuple[float, float]:
        _, _, m = self.client().request("GET", "/metrics")
        count = total = 0.0
        for line in m.decode().splitlines():
            if line.startswith("edge_agent_batch_size_count"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("edge_agent_batch_size_sum"):
                total += float(line.rsplit(" ", 1)[1])
        return count, total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _loadgen_cmd(args, body: Path, concurrency: int, unix: Path | None, port: int | None, path: str) -> list[str]:
    cmd = [PY, str(REPO / "scripts" / "loadgen.py"), "--body", str(body), "--path", path,
           "--concurrency", str(concurrency), "--duration", str(args.seconds), "--warmup", str(args.warmup)]
    return cmd + (["--unix", str(unix)] if unix else ["--port", str(port)])


def loadgen(args, body: Path, concurrency: int, *, unix: Path | None = None, port: int | None = None,
            path: str = "/v2/models/digits/infer", extra: list[str] | None = None) -> dict:
    cmd = _loadgen_cmd(args, body, concurrency, unix, port, path)
    out = subprocess.run(cmd + (extra or []), capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def loadgen_split(args, body: Path, concurrency: int, ports: list[int], path: str = "/v2/models/digits/infer") -> dict:
    """``concurrency`` clients shared out over several servers at once, one
    loadgen process each: throughput summed, p50/p99 the worse server's."""
    procs = [subprocess.Popen(_loadgen_cmd(args, body, concurrency // len(ports), None, port, path),
                              stdout=subprocess.PIPE, text=True) for port in ports]
    outs = [json.loads(p.communicate()[0]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("loadgen failed")
    return {"concurrency": concurrency, "servers": len(ports),
            **{k: sum(o[k] for o in outs) for k in ("requests", "ok", "errors", "throughput", "requests_all_phases")},
            "p50_ms": max(o["p50_ms"] for o in outs), "p99_ms": max(o["p99_ms"] for o in outs)}


def digits_models_dir(root: Path, **yaml_changes) -> Path:
    import yaml

    models = root / "models"
    dest = models / "digits" / "1"
    shutil.copytree(DIGITS, dest)
    spec = yaml.safe_load((dest / "model.yaml").read_text())
    spec.update(yaml_changes)
    (dest / "model.yaml").write_text(yaml.safe_dump(spec))
    return models


# --- sections ------------------------------------------------------------------------------


def bench_raw(args, results: dict) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(DIGITS / "model.onnx"), so, providers=["CPUExecutionProvider"])
    x_all = np.load(DIGITS / "sample.npy")
    rows = []
    for b in (1, 8, 32):
        x = np.repeat(x_all, b, axis=0)
        for _ in range(200):
            sess.run(None, {"input": x})
        lat = []
        end = time.perf_counter() + args.seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            s = time.perf_counter_ns()
            sess.run(None, {"input": x})
            lat.append(time.perf_counter_ns() - s)
        secs = time.perf_counter() - t0
        row = {"batch": b, "rows_per_s": round(len(lat) * b / secs, 1), "p50_ms": round(pct(lat, 0.5) / 1e6, 4), "p99_ms": round(pct(lat, 0.99) / 1e6, 4)}
        rows.append(row)
        log(f"raw ORT batch {b}: {row['rows_per_s']:.0f} rows/s")
    results["raw"] = rows


def bench_socket(args, results: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="eab-"))
    d = Daemon(digits_models_dir(tmp), {"cache": {"enabled": False}}, "socket")
    rows = []
    try:
        for c in (1, 16, 64):
            before = d.batch_stats()
            r = loadgen(args, DIGITS / "sample.json", c, unix=d.socket)
            after = d.batch_stats()
            r["avg_batch"] = round((after[1] - before[1]) / max(1.0, after[0] - before[0]), 2)
            rows.append(r)
            log(f"socket c={c}: {r['throughput']:.0f} req/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms batch {r['avg_batch']}")
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    raw = {r["batch"]: r["rows_per_s"] for r in results.get("raw", [])}
    for r in rows:
        if raw:
            r["ratio_vs_raw_batch1"] = round(r["throughput"] / raw[1], 3)
            r["ratio_vs_raw_best"] = round(r["throughput"] / max(raw.values()), 3)
    results["socket"] = rows


def bench_tcp(args, results: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="eab-"))
    port = free_port()
    servers: dict[str, int] = {"edge_agent": port}
    pids: dict[str, list[int]] = {}
    procs = []
    d = Daemon(digits_models_dir(tmp), {"cache": {"enabled": False}, "server": {"tcp": {"enabled": True, "port": port}}}, "tcp")
    # Not a product setting: a second daemon beside the first, each with half
    # the clients, is the most any design that spreads the request path over
    # two processes could reach here (it pays no hand-off between them).
    port2 = free_port()
    d2 = None
    try:
        d2 = Daemon(digits_models_dir(Path(tempfile.mkdtemp(prefix="eab-", dir=tmp))),
                    {"cache": {"enabled": False}, "server": {"tcp": {"enabled": True, "port": port2}}}, "tcp2")
        servers["edge_agent_2_daemons"] = port2
        pids.update(edge_agent=[d.proc.pid], edge_agent_2_daemons=[d.proc.pid, d2.proc.pid])
        if shutil.which("mosec") is None and not _has_module("mosec"):
            log("mosec not installed: measuring edge-agent alone (pip install mosec)")
        else:
            # Two batch waits: 10 ms (Mosec's default) and 1 ms. With max_batch_size
            # 64 at 64 clients a batch fills before either runs out.
            for wait_ms in (10, 1):
                mport = free_port()
                procs.append(start_mosec(mport, wait_ms))
                servers[f"mosec_wait_{wait_ms}ms"] = mport
                pids[f"mosec_wait_{wait_ms}ms"] = [procs[-1].pid]
        # Same work: every server must give the sample byte for byte the same answer.
        answers = {k: _post(servers[k], "/inference" if k.startswith("mosec") else "/v2/models/digits/infer",
                            (DIGITS / "sample.json").read_bytes()) for k in servers}
        same = len(set(answers.values())) == 1
        if not same:
            log("WARNING: the servers' answers differ, so they do not do the same work: "
                + "; ".join(f"{k}: {len(v)} bytes" for k, v in answers.items()))
        # All servers stay up (idle while another is measured); the order turns
        # every round, so the VM's slow spells fall on each; medians reported.
        names = list(servers)
        runs: dict[str, list[dict]] = {k: [] for k in names}
        for rnd in range(args.rounds):
            for k in names[rnd % len(names):] + names[:rnd % len(names)]:
                if k == "edge_agent_2_daemons":
                    runs[k].append(measured_cpu(pids[k], lambda: loadgen_split(args, DIGITS / "sample.json", 64, [port, port2])))
                    continue
                path = "/inference" if k.startswith("mosec") else "/v2/models/digits/infer"
                runs[k].append(measured_cpu(pids[k], lambda: loadgen(args, DIGITS / "sample.json", 64, port=servers[k], path=path)))
            log(f"TCP round {rnd + 1}: " + ", ".join(f"{k} {runs[k][-1]['throughput']:.0f}" for k in names) + " req/s")
    finally:
        d.stop()
        if d2 is not None:
            d2.stop()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict = {k: median_run(v) for k, v in runs.items()}
    out["same_answer"] = same
    ea = out["edge_agent"]["throughput"]
    for k in names[1:]:
        if k == "edge_agent_2_daemons":
            continue
        out[f"ratio_vs_{k}"] = round(ea / out[k]["throughput"], 3)
        out[f"ratio_per_round_vs_{k}"] = [round(a["throughput"] / b["throughput"], 3) for a, b in zip(runs["edge_agent"], runs[k])]
    for k in names[1:]:
        if k.startswith("mosec"):
            out[f"ratio_2_daemons_vs_{k}"] = round(out["edge_agent_2_daemons"]["throughput"] / out[k]["throughput"], 3)
    for k in names:
        log(f"TCP CPU per request, {k} (its median round): "
            + ", ".join(f"{where} {us} µs" for where, us in out[k]["cpu_us"].items()))
    log("TCP medians: " + ", ".join(f"{k} {out[k]['throughput']:.0f}" for k in names) + " req/s; "
        + ", ".join(f"edge-agent/{k} {out['ratio_vs_' + k]:.2f}x" for k in names if k.startswith("mosec")))
    results["tcp"] = out


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _post(port: int, path: str, body: bytes) -> bytes:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", body), timeout=10) as r:
        return r.read()


def start_mosec(port: int, wait_ms: int) -> subprocess.Popen:
    """scripts/mosec_digits.py on 127.0.0.1:port (its own session, so a
    killpg stops its Rust front and Python worker too), once it listens."""
    proc = subprocess.Popen([PY, str(REPO / "scripts" / "mosec_digits.py"), "--port", str(port), "--address", "127.0.0.1",
                             "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MOSEC_WAIT_MS": str(wait_ms)}, start_new_session=True)
    _wait_http(port)
    return proc


def _wait_http(port: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(0.5)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port}")


def start_broker(tag: str):
    """A mosquitto for one section: (process, port, its temporary directory); (None, None, None) without one."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        log(f"mosquitto not installed: skipping {tag} (apt-get install mosquitto)")
        return None, None, None
    tmp = Path(tempfile.mkdtemp(prefix=f"eab-{tag}-"))
    port = free_port()
    conf = tmp / "mosquitto.conf"
    # As the shipped example broker config: Nagle off at the broker too.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_inflight_messages 0\nmax_queued_messages 100000\npersistence false\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_http(port)
    return broker, port, tmp


def stop_broker(broker, tmp: Path) -> None:
    """Undo start_broker: stop the mosquitto and remove its directory."""
    broker.terminate()
    broker.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def bench_mqtt(args, results: dict) -> None:
    broker, port, tmp = start_broker("mq")
    if broker is None:
        return
    load = [PY, str(REPO / "scripts" / "mqttload.py"), "load", "--port", str(port), "--body", str(DIGITS / "sample.json"),
            "--inflight", "64", "--duration", str(args.seconds), "--warmup", str(args.warmup)]
    out: dict = {}
    # Both servers stay up side by side (each idle while the other is measured)
    # and are measured in alternating rounds; the median of each is reported,
    # because single short runs on a shared 2-core VM swing by +-20 %.
    echos = [subprocess.Popen([PY, str(REPO / "scripts" / "mqttload.py"), "echo", "--port", str(port), "--prefix", f"raw{qos}",
                               "--qos", str(qos)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for qos in (0, 1)]
    d = None
    try:
        for e in echos:
            e.stdout.readline()
        d = Daemon(digits_models_dir(tmp), {
            "cache": {"enabled": False},
            "device_id": "unit1",
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port, "prefix": "edge",
                     "rate_limit": {"rate": 1e9, "burst": 1_000_000_000, "total_rate": 1e9, "total_burst": 1_000_000_000}},
        }, "mqtt")
        time.sleep(1.0)
        for qos in (0, 1):
            runs: dict[str, list] = {"raw": [], "edge": []}
            for rnd in range(args.rounds):
                for side in ("raw", "edge"):
                    prefix = f"raw{qos}" if side == "raw" else "edge"
                    r = json.loads(subprocess.run(load + ["--qos", str(qos), "--prefix", prefix], capture_output=True, text=True,
                                                  check=True).stdout)
                    runs[side].append(r)
                    log(f"QoS {qos} round {rnd + 1}: {'raw paho echo' if side == 'raw' else 'edge-agent'} "
                        f"{r['throughput']:.0f} round trips/s, errors {r['errors']}")
            for side, key in (("raw", f"raw_echo_qos{qos}"), ("edge", f"edge_agent_qos{qos}")):
                out[key] = {**median_run(runs[side]), "all_throughputs": [r["throughput"] for r in runs[side]]}
            out[f"ratio_qos{qos}"] = round(out[f"edge_agent_qos{qos}"]["throughput"] / out[f"raw_echo_qos{qos}"]["throughput"], 3)
            log(f"QoS {qos} medians: edge-agent {out[f'edge_agent_qos{qos}']['throughput']:.0f} vs raw echo "
                f"{out[f'raw_echo_qos{qos}']['throughput']:.0f} round trips/s = {out[f'ratio_qos{qos}']:.0%}")
    finally:
        if d is not None:
            d.stop()
        for e in echos:
            e.terminate()
            e.wait()
        stop_broker(broker, tmp)
    results["mqtt"] = out


def bench_cache(args, results: dict) -> None:
    out: dict = {}
    body = DIGITS / "sample.json"
    vary = ["--vary"]  # a unique input per request: every request misses
    # Misses are compared in alternating rounds between three daemons (the
    # machine's slow spells fall on all three; medians are reported):
    #   misses         the cache as shipped; on a stream of unique inputs it
    #                  soon looks up only a 1/64 sample (cache.sample_below_hit_ratio)
    #   misses_lookup  every request looked up and stored (sampling off): what a
    #                  miss costs while the cache is earning hits
    #   off            no cache
    configs = {"misses": {"enabled": True}, "misses_lookup": {"enabled": True, "sample_below_hit_ratio": 0},
               "off": {"enabled": False}}
    daemons: dict[str, Daemon] = {}
    tmps = []
    try:
        for label, cache_cfg in configs.items():
            tmps.append(Path(tempfile.mkdtemp(prefix="eab-c-")))
            daemons[label] = Daemon(digits_models_dir(tmps[-1]), {"cache": cache_cfg}, f"cache-{label}")
        rounds: dict[str, list] = {label: [] for label in configs}
        labels = list(daemons)
        for rnd in range(args.rounds):
            # The order turns every round: in a fixed order, the same two
            # daemons read 9 % apart one way round and 5 % the other.
            for label in labels[rnd % 3:] + labels[:rnd % 3]:
                rounds[label].append(loadgen(args, body, 64, unix=daemons[label].socket, extra=vary))
            log(f"cache round {rnd + 1}: misses/s " + ", ".join(f"{k} {v[-1]['throughput']:.0f}" for k, v in rounds.items()))
        for label, runs in rounds.items():
            out[f"{label}_c64" if label != "off" else "cache_off_c64"] = median_run(runs)
        # Each round's own overhead too: the ratio of the medians can hide
        # rounds that disagree.
        out["miss_overhead_per_round"] = [round(1 - m["throughput"] / o["throughput"], 4)
                                          for m, o in zip(rounds["misses"], rounds["off"])]
        out["miss_overhead_median_of_rounds"] = statistics.median(out["miss_overhead_per_round"])
        # Hits on the daemon that looks every request up: the other one may
        # still be sampling after the unique rounds, and a hit must be a hit.
        # The same request bytes again and again are answered by the memo of
        # encoded answers; a unique id per request (--vary-id) makes each
        # request new bytes, answered by the memory tier through the full path.
        on = daemons["misses_lookup"]
        out["memo_hit_c1"] = loadgen(args, body, 1, unix=on.socket)
        out["memory_hit_c1"] = loadgen(args, body, 1, unix=on.socket, extra=["--vary-id"])
        out["hits_c64"] = loadgen(args, body, 64, unix=on.socket)
        out["hits_full_path_c64"] = loadgen(args, body, 64, unix=on.socket, extra=["--vary-id"])
        for d in daemons.values():
            d.stop()
        daemons.clear()
        tmps.append(Path(tempfile.mkdtemp(prefix="eab-c-")))
        daemons["disk"] = d = Daemon(digits_models_dir(tmps[-1]), {"cache": {"enabled": True, "memory_max_bytes": 0}},
                                     "cache-disk")
        d.client().infer("digits", json.loads(body.read_text()))
        time.sleep(0.5)  # the disk write happens off the request path
        out["disk_hit_c1"] = loadgen(args, body, 1, unix=d.socket)
    finally:
        for d in daemons.values():
            d.stop()
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
    off = out["cache_off_c64"]["throughput"]
    out["hit_vs_miss_throughput"] = round(out["hits_c64"]["throughput"] / out["misses_c64"]["throughput"], 3)
    out["miss_overhead_vs_off"] = round(1 - out["misses_c64"]["throughput"] / off, 4)
    out["miss_overhead_every_lookup_vs_off"] = round(1 - out["misses_lookup_c64"]["throughput"] / off, 4)
    out["hit_full_path_vs_miss_throughput"] = round(out["hits_full_path_c64"]["throughput"] / out["misses_c64"]["throughput"], 3)
    log(f"cache: memo hit p99 {out['memo_hit_c1']['p99_ms']} ms, memory hit p99 {out['memory_hit_c1']['p99_ms']} ms, "
        f"disk hit p99 {out['disk_hit_c1']['p99_ms']} ms, hits through the full path x{out['hit_full_path_vs_miss_throughput']}, "
        f"hits/misses x{out['hit_vs_miss_throughput']}, miss overhead {out['miss_overhead_vs_off']:.1%} "
        f"(median of the rounds' own {out['miss_overhead_median_of_rounds']:.1%}) "
        f"(every request looked up: {out['miss_overhead_every_lookup_vs_off']:.1%})")
    results["cache"] = out


def bench_minilm(args, results: dict) -> None:
    root = REPO / ".cache" / "minilm"
    version = "2"  # INT8 dynamic: the CPU build
    if not (root / version / "model.onnx").exists():
        log("no .cache/minilm build: skipping (python scripts/export_minilm.py)")
        return
    import onnxruntime as ort

    from edge_agent.runtime.artifacts import choose_artifact
    from edge_agent.runtime.cpu import this_cpu
    from edge_agent.runtime.model_spec import load_model_spec
    from edge_agent.runtime.text import TextPipeline

    text = "Camera 2 reports a blocked conveyor belt near the packing station, and the night shift wants a report."
    vdir = root / version
    spec = load_model_spec(vdir / "model.yaml")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Raw ORT gets the version's own session settings and the file the daemon serves on this CPU (model.yaml artifacts).
    served = choose_artifact(spec, this_cpu(), ["cpu"])
    log(f"minilm v{version}: {served.file} ({served.reason})")
    sess = ort.InferenceSession(str(vdir / served.file), so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=spec.session.disabled_optimizers)
    pipe = TextPipeline(spec.text, vdir, [i.name for i in sess.get_inputs()])
    feeds = {b: pipe.graph_feeds(pipe.prepare(np.array([[text.encode()]] * b, dtype=object))) for b in (1, 8, 32)}

    def raw_round() -> dict[int, float]:
        got = {}
        for b, f in feeds.items():
            sess.run(None, f)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                sess.run(None, f)
                n += b
            got[b] = n / (time.perf_counter() - t0)
        return got

    tmp = Path(tempfile.mkdtemp(prefix="eab-m-"))
    shutil.copytree(vdir, tmp / "models" / "minilm" / version)
    bodyf = tmp / "body.json"
    bodyf.write_text(json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}))
    d = Daemon(tmp / "models", {"cache": {"enabled": False}}, "minilm")
    # Raw ORT and the daemon alternate (the daemon idles while raw ORT runs),
    # so the machine's slow spells fall on both; medians are reported.
    raws, daemons = [], []
    try:
        for rnd in range(args.rounds):
            raws.append(raw_round())
            daemons.append(loadgen(args, bodyf, 32, unix=d.socket, path="/v2/models/minilm/infer"))
            best = max(raws[-1].values())
            log(f"MiniLM round {rnd + 1}: raw ORT best batch {best:.0f} texts/s, daemon c=32 {daemons[-1]['throughput']:.0f} "
                f"({daemons[-1]['throughput'] / best:.0%})")
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    raw = {b: round(statistics.median(r[b] for r in raws), 1) for b in feeds}
    r = median_run(daemons)
    out = {"version": version, "rounds": args.rounds, "raw_texts_per_s": raw, "daemon_c32": r,
           "ratio_vs_raw_best": round(r["throughput"] / max(raw.values()), 3),
           "ratio_per_round": [round(x["throughput"] / max(y.values()), 3) for x, y in zip(daemons, raws)]}
    log(f"MiniLM daemon c=32: {r['throughput']:.0f} texts/s = {out['ratio_vs_raw_best']:.0%} of raw best batch (medians)")
    results["minilm"] = out


def bench_offload(args, results: dict) -> None:
    import bench_offload  # scripts/bench_offload.py, beside this file

    bench_offload.run(args, results, sys.modules[__name__])


def bench_ocr(args, results: dict) -> None:
    from bench_ocr import bench_ocr as run

    run(args, results, sys.modules[__name__])


SECTIONS = {"raw": bench_raw, "socket": bench_socket, "tcp": bench_tcp, "mqtt": bench_mqtt, "cache": bench_cache,
            "minilm": bench_minilm, "offload": bench_offload, "ocr": bench_ocr}


# --- output --------------------------------------------------------------------------------


def print_table(results: dict) -> None:
    p = print
    if "raw" in results:
        p("\nraw ONNX Runtime (digits)        rows/s      p50 ms    p99 ms")
        for r in results["raw"]:
            p(f"  batch {r['batch']:<3}                  {r['rows_per_s']:>10,.0f}  {r['p50_ms']:>9.4f} {r['p99_ms']:>9.4f}")
    if "socket" in results:
        p("\ndaemon over the Unix socket      req/s       p50 ms    p99 ms   avg batch  vs raw b1  vs raw best")
        for r in results["socket"]:
            p(f"  concurrency {r['concurrency']:<3}            {r['throughput']:>10,.0f}  {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f}"
              f"   {r['avg_batch']:>7.2f}  {r.get('ratio_vs_raw_batch1', float('nan')):>8.2f}  {r.get('ratio_vs_raw_best', float('nan')):>8.3f}")
    if "tcp" in results:
        p("\nloopback TCP, concurrency 64     req/s       p50 ms    p99 ms")
        for k, r in results["tcp"].items():
            if isinstance(r, dict):
                cpu = ", ".join(f"{where} {us}" for where, us in r.get("cpu_us", {}).items())
                p(f"  {k:<28}{r['throughput']:>10,.0f}  {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f}   CPU µs/request: {cpu}")
        for k, v in results["tcp"].items():
            if k.startswith("ratio_vs"):
                p(f"  edge-agent / {k[9:]}: {v:.2f}x (medians; per round {results['tcp'].get('ratio_per_round_vs_' + k[9:])})")
            elif k.startswith("ratio_2_daemons_vs"):
                p(f"  two daemons, 32 clients each / {k[19:]}: {v:.2f}x (the ceiling of a two-process request path)")
        if "same_answer" in results["tcp"]:
            p(f"  every server gave the sample the same answer: {results['tcp']['same_answer']}")
    if "mqtt" in results:
        p("\nMQTT round trips, 64 in flight   per s       p50 ms    p99 ms   (median of alternating rounds)")
        for k, r in results["mqtt"].items():
            if isinstance(r, dict):
                p(f"  {k:<28}{r['throughput']:>10,.0f}  {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f}")
        for q in (0, 1):
            if f"ratio_qos{q}" in results["mqtt"]:
                p(f"  edge-agent / raw echo, QoS {q}: {results['mqtt'][f'ratio_qos{q}']:.0%}")
    if "cache" in results:
        c = results["cache"]
        p("\nresponse cache (socket)          req/s       p50 ms    p99 ms")
        for k in ("memo_hit_c1", "memory_hit_c1", "disk_hit_c1", "hits_c64", "hits_full_path_c64", "misses_c64",
                  "misses_lookup_c64", "cache_off_c64"):
            r = c[k]
            p(f"  {k:<28}{r['throughput']:>10,.0f}  {r['p50_ms']:>9.3f} {r['p99_ms']:>9.3f}")
        p(f"  hits / misses throughput at 64: {c['hit_vs_miss_throughput']:.2f}x (through the full path:"
          f" {c['hit_full_path_vs_miss_throughput']:.2f}x); miss overhead vs cache off: {c['miss_overhead_vs_off']:.1%}"
          f" (per round {c['miss_overhead_per_round']})"
          f" (unique stream, sampling); {c['miss_overhead_every_lookup_vs_off']:.1%} with every request looked up")
        p("  misses: medians of alternating rounds")
    if "offload" in results:
        import bench_offload

        bench_offload.table(results)
    if "minilm" in results:
        m = results["minilm"]
        p(f"\nMiniLM v{m['version']} (INT8 dynamic)  raw ORT texts/s by batch: {m['raw_texts_per_s']}")
        p(f"  daemon at concurrency 32: {m['daemon_c32']['throughput']:,.0f} texts/s = {m['ratio_vs_raw_best']:.0%} of raw best batch"
          f" (medians of {m['rounds']} alternating rounds; per round {m['ratio_per_round']})")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("socket", "tcp", "mqtt", "cache", "offload") if k in results]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, panels):
        if key == "socket":
            labels = [f"c={r['concurrency']}" for r in results["socket"]]
            vals = [r["throughput"] for r in results["socket"]]
            if "raw" in results:
                labels += [f"raw b{r['batch']}" for r in results["raw"]]
                vals += [r["rows_per_s"] for r in results["raw"]]
            ax.set_title("Unix socket vs raw ORT (digits)")
            ax.set_ylabel("requests or rows / s")
        elif key == "tcp":
            items = [(k, r["throughput"]) for k, r in results["tcp"].items() if isinstance(r, dict)]
            names = {"edge_agent_2_daemons": "2 daemons\n(ceiling of\n2 processes)"}
            labels, vals = [names.get(k, k.replace("_", "\n")) for k, _ in items], [v for _, v in items]
            ax.set_title("loopback TCP, 64 concurrent")
        elif key == "mqtt":
            items = [(k, r["throughput"]) for k, r in results["mqtt"].items() if isinstance(r, dict)]
            labels, vals = [k.replace("_", "\n") for k, _ in items], [v for _, v in items]
            ax.set_title("MQTT round trips, 64 in flight")
        elif key == "offload":
            import bench_offload

            labels, vals, title = bench_offload.bars(results)
            ax.set_title(title)
        else:
            c = results["cache"]
            items = [(k, c[k]["throughput"]) for k in ("hits_c64", "hits_full_path_c64", "misses_c64", "cache_off_c64")]
            labels, vals = [k.replace("_", "\n") for k, _ in items], [v for _, v in items]
            ax.set_title("response cache, 64 concurrent")
        ax.bar(range(len(vals)), vals, color="#4C72B0")
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    log(f"plot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(SECTIONS), help="sections to run (default: all)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per point")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up time per point")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds for the TCP-vs-Mosec, MQTT, cache-miss, MiniLM and offload comparisons (median reported)")
    ap.add_argument("--ocr-images", type=int, default=24, help="ocr: rendered images cycled through")
    ap.add_argument("--ocr-concurrency", type=int, nargs="+", default=[1, 4, 16], help="ocr: concurrencies")
    ap.add_argument("--ocr-det-int8", type=Path, help="ocr: an INT8 det.onnx (edge-agent quantize) to time against FP32")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--plot", type=Path, default=REPO / "bench-results" / "bench.png")
    args = ap.parse_args()
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}}
    chosen = args.only or list(SECTIONS)
    if "socket" in chosen and "raw" not in chosen:
        chosen = ["raw"] + chosen  # the socket ratios need the raw figures
    for i, name in enumerate(chosen, 1):
        log(f"({i}/{len(chosen)}) {name}")
        SECTIONS[name](args, results)
    results["machine"]["load_avg_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    plot(results, args.plot)
    if "ocr" in results:
        from bench_ocr import plot_ocr, print_ocr

        if not args.json:
            print_ocr(results)
        plot_ocr(results, args.plot.with_name("ocr.png"))


if __name__ == "__main__":
    main()
