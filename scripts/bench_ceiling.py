#!/usr/bin/env python3
"""The ceiling of the request path's designs on this machine, measured beside
Mosec and the daemon in the same rounds.

Issue 2 asks the TCP listener for 1.5x Mosec. This script measures how far
each design the daemon could take goes here, so the target can be judged
against what the machine allows rather than against a guess. The prototypes
are built from the daemon's own parts: its HTTP server (httptools),
``decode_request``, ``LoadedModel.prepare`` and ``run_batch`` (the digits
model with its top-3 post-processing) and ``encode_response``, so they give
the daemon's answer byte for byte (checked). They have nothing else: no
deadlines, priorities, queue bound, cache, routing, canary, metrics or OTA.
Requests parsed in one event-loop turn form one batch.

  loop    the batch runs on the event loop, at the end of the turn
  thread  the batch goes to a worker thread once per turn (as the daemon's
          batcher hands over) and the answers come back in one
          call_soon_threadsafe
  x1, x2  one process, or two sharing the port (SO_REUSEPORT), each with its
          own session

Same client (scripts/loadgen.py, 64 keep-alive connections) for every server,
rounds whose order turns, medians reported, CPU per request by thread or
process as in bench.py.

    python scripts/bench_ceiling.py --seconds 3 --rounds 5          # ~4 min; table + bench-results/ceiling.png
    python scripts/bench_ceiling.py serve --port 8100 --where loop  # one prototype process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


# --- one prototype server process ------------------------------------------------------


def serve(port: int, where: str) -> None:
    import uvloop

    from edge_agent.config import RuntimeConfig
    from edge_agent.errors import EdgeError
    from edge_agent.runtime.session import LoadedModel
    from edge_agent.serving.codec import decode_request, encode_error, encode_response
    from edge_agent.transports.httpserver import CT_JSON, HttpServer, Later
    from edge_agent.types import InferResponse

    model_dir = REPO / "models" / "digits" / "1"
    state = Path(tempfile.mkdtemp(prefix="ceiling-"))
    model = LoadedModel("digits", "1", model_dir, RuntimeConfig(providers=["cpu"]), state)
    model.warmup()

    class Answer(Later):
        __slots__ = ("ireq",)

        def __init__(self, future, req, ireq) -> None:
            self.future = future
            self.req = req
            self.ireq = ireq

        def answer(self):
            resp = InferResponse(model="digits", version="1", outputs=self.future.result(), id=self.ireq.id)
            return 200, CT_JSON, encode_response(resp, self.ireq.binary_outputs)[0]

    def resolve(batch, results) -> None:
        for (_, fut), r in zip(batch, results):
            fut.set_result(r)

    turn: list = []
    handed: list = []
    cond = threading.Condition()

    def flush() -> None:
        nonlocal turn
        batch, turn = turn, []
        if where == "loop":
            resolve(batch, model.run_batch([p for p, _ in batch]))
            return
        with cond:
            handed.append(batch)
            cond.notify()

    def worker() -> None:
        while True:
            with cond:
                while not handed:
                    cond.wait()
                batch = [item for b in handed for item in b]
                handed.clear()
            loop.call_soon_threadsafe(resolve, batch, model.run_batch([p for p, _ in batch]))

    def respond(req):  # every request is an inference of digits
        try:
            ireq = decode_request(req.body, "digits", None, None)
            prepared = model.prepare(ireq)
        except EdgeError as e:
            return e.http_status, CT_JSON, encode_error(e)
        fut = loop.create_future()
        turn.append((prepared, fut))
        if len(turn) == 1:
            loop.call_soon(flush)
        return Answer(fut, req, ireq)

    async def main() -> None:
        server = HttpServer(respond, 8 * 1024 * 1024)
        await server.listen_tcp("127.0.0.1", port, reuse_port=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    if where == "thread":
        threading.Thread(target=worker, daemon=True).start()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


# --- the comparison ----------------------------------------------------------------------------


def compare(args) -> dict:
    import bench

    digits = bench.DIGITS
    body = digits / "sample.json"
    tmp = Path(tempfile.mkdtemp(prefix="ceiling-"))
    servers: dict[str, int] = {}
    pids: dict[str, list[int]] = {}
    procs: list[subprocess.Popen] = []
    daemon = None
    if shutil.which("mosec") is None and not bench._has_module("mosec"):
        sys.exit("mosec is not installed (pip install -e '.[bench]'): nothing to compare against")
    try:
        port = bench.free_port()
        daemon = bench.Daemon(bench.digits_models_dir(tmp), {"cache": {"enabled": False},
                                                             "server": {"tcp": {"enabled": True, "port": port}}}, "ceiling")
        servers["edge_agent"], pids["edge_agent"] = port, [daemon.proc.pid]
        port = bench.free_port()
        procs.append(bench.start_mosec(port, 10))
        servers["mosec"], pids["mosec"] = port, [procs[-1].pid]
        for where in ("loop", "thread"):
            for n in (1, 2):
                name, port = f"{where}_x{n}", bench.free_port()
                for _ in range(n):
                    procs.append(subprocess.Popen([bench.PY, __file__, "serve", "--port", str(port), "--where", where],
                                                  stdout=subprocess.DEVNULL, start_new_session=True))
                bench._wait_http(port)
                servers[name], pids[name] = port, [p.pid for p in procs[-n:]]
        answers = {k: bench._post(p, "/inference" if k == "mosec" else "/v2/models/digits/infer", body.read_bytes())
                   for k, p in servers.items()}
        same = len(set(answers.values())) == 1
        if not same:
            bench.log("WARNING: the servers' answers differ: " + "; ".join(f"{k}: {len(v)} bytes" for k, v in answers.items()))
        names = list(servers)
        runs: dict[str, list[dict]] = {k: [] for k in names}
        for rnd in range(args.rounds):
            for k in names[rnd % len(names):] + names[:rnd % len(names)]:
                path = "/inference" if k == "mosec" else "/v2/models/digits/infer"
                runs[k].append(bench.measured_cpu(pids[k], lambda: bench.loadgen(args, body, 64, port=servers[k], path=path)))
            bench.log(f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{k} {runs[k][-1]['throughput']:.0f}" for k in names) + " req/s")
    finally:
        if daemon is not None:
            daemon.stop()
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM if p.args[1] == __file__ else signal.SIGINT)
                p.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict = {"same_answer": same, "servers": {k: bench.median_run(v) for k, v in runs.items()}}
    m = out["servers"]["mosec"]["throughput"]
    for k in names:
        if k != "mosec":
            out["servers"][k]["ratio_vs_mosec"] = round(out["servers"][k]["throughput"] / m, 3)
            out["servers"][k]["ratio_per_round_vs_mosec"] = [round(a["throughput"] / b["throughput"], 3)
                                                            for a, b in zip(runs[k], runs["mosec"])]
    return out


LABELS = {
    "edge_agent": "edge-agent (the daemon, TCP listener)",
    "mosec": "Mosec, max batch 64, 10 ms wait",
    "loop_x1": "prototype: inference on the loop, 1 process",
    "loop_x2": "prototype: inference on the loop, 2 processes",
    "thread_x1": "prototype: worker thread, 1 process",
    "thread_x2": "prototype: worker thread, 2 processes",
}


def print_table(out: dict) -> None:
    print("| server | req/s | p50 ms | p99 ms | / Mosec | per round | CPU µs per request |\n|---|---|---|---|---|---|---|")
    for k, r in out["servers"].items():
        cpu = ", ".join(f"{w} {us}" for w, us in r["cpu_us"].items())
        rounds = ", ".join(f"{x:.2f}" for x in r.get("ratio_per_round_vs_mosec", []))
        ratio = f"{r['ratio_vs_mosec']:.2f}x" if "ratio_vs_mosec" in r else ""
        print(f"| {LABELS[k]} | {r['throughput']:,.0f} | {r['p50_ms']} | {r['p99_ms']} | {ratio} | {rounds} | {cpu} |")
    print(f"\nsame answer from every server: {out['same_answer']}")


def plot(out: dict, path: Path) -> None:
    import bench

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        bench.log("matplotlib not installed: no plot")
        return
    names = list(out["servers"])
    vals = [out["servers"][k]["throughput"] for k in names]
    mosec = out["servers"]["mosec"]["throughput"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.barh([LABELS[k] for k in names], vals, color=["tab:blue" if k == "edge_agent" else "tab:gray" if k == "mosec" else "tab:olive"
                                                              for k in names])
    ax.axvline(1.5 * mosec, color="tab:red", linestyle="--", label="1.5x Mosec (issue 2's target)")
    for b, v in zip(bars, vals):
        ax.text(v, b.get_y() + b.get_height() / 2, f" {v:,.0f} ({v / mosec:.2f}x)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("req/s, 64 clients, digits, loopback TCP (median of rounds)")
    ax.set_title("Request-path designs on this machine, same client, same rounds")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    bench.log(f"plot: {path}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        ap = argparse.ArgumentParser(prog="bench_ceiling.py serve")
        ap.add_argument("serve")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--where", choices=("loop", "thread"), required=True)
        a = ap.parse_args()
        serve(a.port, a.where)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement time per server per round")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up time per server per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds whose order turns (median reported)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--plot", type=Path, default=REPO / "bench-results" / "ceiling.png")
    args = ap.parse_args()
    out = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}, **compare(args)}
    out["machine"]["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2)) if args.json else print_table(out)
    plot(out, args.plot)


if __name__ == "__main__":
    main()
