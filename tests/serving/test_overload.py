"""Overload: the real daemon offered five times what it can answer.

Issue 15 measured the daemon at 512-2,000 connections: answers to requests
with ``timeout_ms=20`` arrived late (196 of 218), ``deadline_exceeded`` came
up to 44 ms late, and not one request of ~490,000 was refused with
``overloaded``: the event loop, not the model queue, was the bottleneck, so
latency just grew. Here the daemon is first measured (closed loop, 1 s),
then offered 5x that rate, open loop, for 3 s over 512 connections, with two
kinds of request in turn: ones that cannot wait (``timeout_ms=20``, as in the
issue) and ones that can (1 s). The promise under test:

- no successful answer reaches the client after its deadline (plus the
  tolerance below);
- the daemon refuses work with ``overloaded`` instead of letting latency grow;
- every request gets an answer, and the daemon still answers the requests
  that can wait;
- after the load it answers normally.

The load generator (scripts/openloop.py) runs in its own process, on the other
core from the daemon when the machine has two: at 5x the daemon's rate it must
not take the daemon's CPU. Each connection has at most two requests
outstanding, and requests falling due while every connection is full wait in
the generator: bytes the daemon has not read are invisible to it (no server
can count a deadline from bytes it cannot see), so a client pouring an
unbounded backlog into its sockets would measure its own buffers. The daemon
is still offered more than it can take: every answer, refusals included,
brings the next request at once.

Tolerance: the generator notes how late its own loop ran (it reads an
answer up to that late), and the daemon's bound on how long bytes waited for
its loop is exact only from the second busy turn on (the first is bounded by
its lag timer, 25 ms): 25 ms + the generator's own lag + 10 ms of scheduling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from daemon_proc import REPO, copy_digits, digits_body

pytestmark = pytest.mark.timeout(240)

TIGHT_MS = 20
LOOSE_MS = 1000
SAMPLE = np.load(REPO / "models" / "digits" / "1" / "sample.npy").astype(np.float32).reshape(1, 64)


def _cpus() -> tuple[set[int] | None, set[int] | None]:
    """(daemon's CPU, generator's CPUs), or (None, None) on a single core."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (ORT and batcher threads were started already)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # a thread that just ended


def _generate(a, bodies: list, gen_cpus: set[int] | None, *args: str) -> dict:
    files = []
    for i, body in enumerate(bodies):
        f = a.root / f"body{i}.json"
        f.write_text(json.dumps(body))
        files += ["--body", str(f)]
    pre = (lambda: os.sched_setaffinity(0, gen_cpus)) if gen_cpus else None
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "openloop.py"), "--unix", str(a.socket), *files, *args],
        capture_output=True, text=True, timeout=150, preexec_fn=pre,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _body(timeout_ms: float) -> dict:
    body = digits_body(SAMPLE)
    body["parameters"] = {"timeout_ms": timeout_ms}
    return body


def test_five_times_capacity_sheds_with_overloaded_and_never_answers_after_the_deadline(agent_factory, reference_label):
    # Identical requests would share one inference through the cache: no cache.
    a = agent_factory(config={"cache": {"enabled": False}})
    copy_digits(a.models_dir)
    a.start()
    daemon_cpus, gen_cpus = _cpus()
    if daemon_cpus:
        _pin(a.proc.pid, daemon_cpus)

    cap = _generate(a, [_body(LOOSE_MS)], gen_cpus, "--mode", "closed", "--duration", "1", "--connections", "32")
    assert cap["unanswered"] == 0 and {s for _, s, *_ in cap["answers"]} == {200}, Counter(s for _, s, *_ in cap["answers"])
    capacity = cap["answered"] / cap["seconds"]

    r = _generate(a, [_body(TIGHT_MS), _body(LOOSE_MS)], gen_cpus, "--mode", "open", "--rate", str(5 * capacity),
                  "--duration", "3", "--connections", "512", "--window", "2")
    answers = r["answers"]
    summary = {k: v for k, v in r.items() if k != "answers"}
    outcomes = Counter((kind, code or "ok") for _, _, code, kind, _ in answers)
    info = f"capacity {capacity:.0f}/s, {summary}, outcomes (0: {TIGHT_MS} ms, 1: {LOOSE_MS} ms) {dict(outcomes)}"

    # Every request sent got an answer, and only these.
    assert r["unanswered"] == 0 and r["lost"] == 0 and r["answered"] == r["sent"], info
    assert {(s, code) for _, s, code, _, _ in answers} <= {(200, ""), (503, "overloaded"), (504, "deadline_exceeded")}, info
    # The daemon was offered five times what it answered when measured.
    assert r["due"] >= 4.5 * capacity * 3, info

    tolerance_ms = 25 + r["own_lag_ms_max"] + 10
    worst = {kind: max((lat for lat, st, _, k, _ in answers if st == 200 and k == kind), default=None) for kind in (0, 1)}
    print(info, f"tolerance {tolerance_ms:.0f} ms, slowest 200 per kind {worst}")
    late = sorted(
        (round(lat - (TIGHT_MS, LOOSE_MS)[kind], 1), kind) for lat, s, _, kind, _ in answers
        if s == 200 and lat > (TIGHT_MS, LOOSE_MS)[kind] + tolerance_ms
    )
    assert not late, f"{len(late)} answers after their deadline + {tolerance_ms:.0f} ms (ms late, kind): {late[-10:]}; {info}"
    # It refused work up front rather than letting every answer be late ...
    assert outcomes[(0, "overloaded")] + outcomes[(1, "overloaded")] > 0, info
    # ... and still answered requests that can wait.
    assert outcomes[(1, "ok")] > 0, info

    # Counted by reason; the loop's lag is exported.
    _, _, m = a.client().request("GET", "/metrics")
    text = m.decode()
    shed = sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("edge_agent_request_errors_total{") and 'code="overloaded"' in ln and 'reason=""' not in ln)
    assert shed >= outcomes[(0, "overloaded")] + outcomes[(1, "overloaded")], text
    assert "\nedge_agent_event_loop_lag_seconds " in text

    # After the load: nothing but normal answers.
    after = _generate(a, [_body(LOOSE_MS)], gen_cpus, "--mode", "closed", "--duration", "0.5", "--connections", "8")
    assert after["answered"] > 0 and {s for _, s, *_ in after["answers"]} == {200}, Counter(c for _, _, c, *_ in after["answers"])
    status, doc = a.client().infer("digits", _body(LOOSE_MS))
    assert status == 200 and doc["outputs"][0]["data"] == [reference_label], doc


@pytest.fixture(scope="module")
def reference_label() -> int:
    import onnxruntime as ort

    from daemon_proc import DIGITS

    sess = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])
    return int(sess.run(None, {"input": SAMPLE})[0][0])
