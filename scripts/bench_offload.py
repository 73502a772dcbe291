"""bench.py's ``offload`` section: offload throughput with 1 and with 2 companions, in one run.

Two edge daemons with no model of their own offload every request
(``offload.also_when_unavailable``) over one mosquitto: edge "one" to a single
companion, edge "two" to a pool of two companions sharing the subscription
(``$share/companion/two/offload/digits``, as systemd/edge-agent-companion@.service
runs them). Every process stays up the whole run; the two set-ups are measured
in alternating rounds (the idle one costs next to nothing), median and spread
reported. The companions' cache is off, so every request runs a model.

What it shows: how far a second companion process lifts the offload ceiling
on this host. On a 2-core machine the edge daemon, the broker, the load
generator and the companions share the cores, so the gain is bounded by them.

Run by bench.py (``--only offload``); ``kit`` is the bench module (Daemon,
loadgen, start_broker, ...).
"""

from __future__ import annotations

import json
import statistics
import time

CONCURRENCY = 64
SIDES = (("one", 1), ("two", 2))


def _mqtt(port: int, prefix: str = "edge") -> dict:
    big = 1_000_000_000
    return {"enabled": True, "host": "127.0.0.1", "port": port, "prefix": prefix,
            "rate_limit": {"rate": 1e9, "burst": big, "total_rate": 1e9, "total_burst": big}}


def run(args, results: dict, kit) -> None:
    broker, port, tmp = kit.start_broker("offload")
    if broker is None:
        return
    models = kit.digits_models_dir(tmp)
    empty = tmp / "no-models"
    empty.mkdir()
    procs = []
    out: dict = {}
    try:
        for topic_prefix, n in SIDES:
            for i in range(n):
                procs.append(kit.Daemon(models, {"mode": "companion", "device_id": f"comp-{topic_prefix}-{i}",
                                                 "mqtt": _mqtt(port), "offload": {"prefix": topic_prefix},
                                                 "cache": {"enabled": False}}, f"comp{i}"))
        edges = {}
        for topic_prefix, n in SIDES:
            edges[n] = kit.Daemon(empty, {"device_id": f"edge-{topic_prefix}", "mqtt": _mqtt(port),
                                          "offload": {"enabled": True, "prefix": topic_prefix, "timeout_s": 10.0},
                                          "cache": {"enabled": False}}, f"edge{n}")
            procs.append(edges[n])
        time.sleep(1.0)  # subscriptions settle
        sample = json.loads((kit.DIGITS / "sample.json").read_text())
        for n, e in edges.items():  # what is measured is offloaded work, answered by a companion
            status, doc = e.client().json("POST", "/v2/models/digits/infer", sample)
            if status != 200 or doc.get("parameters", {}).get("offloaded_to") != "companion":
                raise RuntimeError(f"edge with {n} companion(s) did not offload: {status} {doc}")
        runs: dict = {n: [] for _, n in SIDES}
        for rnd in range(args.rounds):
            for _, n in SIDES:
                r = kit.loadgen(args, kit.DIGITS / "sample.json", CONCURRENCY, unix=edges[n].socket)
                if r["errors"]:
                    raise RuntimeError(f"offload with {n} companion(s): {r['errors']} errors")
                runs[n].append(r)
                kit.log(f"round {rnd + 1}: {n} companion(s) {r['throughput']:.0f} req/s, p99 {r['p99_ms']:.1f} ms")
        for _, n in SIDES:
            tps = [r["throughput"] for r in runs[n]]
            out[f"companions_{n}"] = {**kit.median_run(runs[n]), "all_throughputs": tps,
                                      "spread": round((max(tps) - min(tps)) / statistics.median(tps), 3)}
        out["ratio_2_vs_1"] = round(out["companions_2"]["throughput"] / out["companions_1"]["throughput"], 3)
        out["ratio_per_round"] = [round(b["throughput"] / a["throughput"], 3) for a, b in zip(runs[1], runs[2])]
        kit.log(f"medians: 1 companion {out['companions_1']['throughput']:.0f}, 2 companions "
                f"{out['companions_2']['throughput']:.0f} req/s = {out['ratio_2_vs_1']:.2f}x")
    finally:
        for p in reversed(procs):
            p.stop()
        kit.stop_broker(broker, tmp)
    results["offload"] = out


def table(results: dict) -> None:
    o = results["offload"]
    print(f"\noffload, {CONCURRENCY} clients on the edge   req/s       p50 ms    p99 ms   spread  (median of alternating rounds)")
    for n in (1, 2):
        r = o[f"companions_{n}"]
        print(f"  {n} companion{'s' if n > 1 else ' '}                 {r['throughput']:>10,.0f}  {r['p50_ms']:>9.3f} "
              f"{r['p99_ms']:>9.3f}   {r['spread']:.0%}")
    print(f"  2 / 1 companions: {o['ratio_2_vs_1']:.2f}x (per round {o['ratio_per_round']})")


def bars(results: dict) -> tuple[list[str], list[float], str]:
    o = results["offload"]
    return ["1 companion", "2 companions"], [o["companions_1"]["throughput"], o["companions_2"]["throughput"]], \
        f"offload, {CONCURRENCY} clients"

