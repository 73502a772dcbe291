"""The offload circuit breaker, end to end: a real companion daemon that is killed and comes back.

Closed -> open after ``failures`` unanswered offloads -> requests run here at
once -> half-open: one probe (a concurrent request runs here meanwhile) ->
open again while the companion is still away -> closed once it is back.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from sklearn.datasets import load_digits

from daemon_proc import copy_digits, digits_body, wait_for
from offload_procs import make_companion, make_edge, metric, outputs, start_all, wait_online

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)
TIMEOUT_S = 2.0
OPEN_S = 3.0
BODY = {**digits_body(X[:2]), "parameters": {"cache": False}}


def _breaker(edge) -> dict:
    status, doc = edge.client().json("GET", "/edge/status")
    assert status == 200
    return doc["offload"]["breaker"]


def _sent(edge) -> float:
    """Offloads the edge sent, whatever came of them."""
    return metric(edge, "edge_agent_offload_total")


def _infer(edge) -> tuple[dict, float]:
    t0 = time.monotonic()
    status, doc = edge.infer_once("digits", BODY)
    assert status == 200, doc
    return doc, time.monotonic() - t0


def _offloaded(doc: dict) -> bool:
    return doc.get("parameters", {}).get("offloaded_to") == "companion"


def test_breaker_opens_runs_locally_at_once_probes_and_closes_when_the_companion_is_back(agent_factory, broker, prefix):
    comp = make_companion(agent_factory, broker, prefix, "comp-a")
    copy_digits(comp.models_dir)
    edge = make_edge(agent_factory, broker, prefix, queue_depth_over=-1, timeout_s=TIMEOUT_S,
                     breaker={"failures": 3, "window_s": 120, "open_s": OPEN_S})
    copy_digits(edge.models_dir)
    start_all(comp, edge)
    wait_online(broker, prefix, "comp-a", "edge-unit")

    doc, _ = _infer(edge)
    assert _offloaded(doc)
    want = outputs(doc)["label"]
    assert _breaker(edge)["state"] == "closed"
    assert metric(edge, "edge_agent_offload_breaker_state") == 0

    comp.kill()  # gone without a goodbye
    for i in range(3):  # closed: each waits out the timeout, then runs here
        doc, waited = _infer(edge)
        assert not _offloaded(doc) and outputs(doc)["label"] == want
        assert waited >= TIMEOUT_S * 0.9
        assert _breaker(edge)["state"] == ("open" if i == 2 else "closed")
    assert metric(edge, "edge_agent_offload_total", outcome="timeout_fallback") == 3
    assert metric(edge, "edge_agent_offload_breaker_state") == 2
    assert metric(edge, "edge_agent_offload_breaker_opened_total") == 1

    # Open: answered here at once, nothing sent to the companions.
    sent = _sent(edge)
    for _ in range(3):
        doc, waited = _infer(edge)
        assert not _offloaded(doc) and outputs(doc)["label"] == want
        assert waited < TIMEOUT_S  # did not wait for the offload timeout
    assert _sent(edge) == sent

    # Half-open while the companion is still away: one probe goes out; a request
    # meanwhile runs here at once; the probe times out and the breaker opens again.
    wait_for(lambda: _breaker(edge).get("probe_in_s", 1) == 0, timeout=OPEN_S + 5, every=0.1)
    probe: dict = {}
    t = threading.Thread(target=lambda: probe.update(doc=_infer(edge)))
    t.start()
    wait_for(lambda: _breaker(edge)["state"] == "half_open", timeout=5, every=0.02)
    doc, waited = _infer(edge)
    assert not _offloaded(doc) and waited < TIMEOUT_S
    t.join(30)
    assert not _offloaded(probe["doc"][0]) and probe["doc"][1] >= TIMEOUT_S * 0.9
    assert _sent(edge) == sent + 1  # the probe only
    b = _breaker(edge)
    assert b["state"] == "open" and b["opened"] == 2

    # The companion comes back: after open_s the probe is answered and the breaker closes.
    comp.start(wait=False)
    comp.wait_ready()
    wait_online(broker, prefix, "comp-a")
    wait_for(lambda: _breaker(edge).get("probe_in_s", 1) == 0, timeout=OPEN_S + 5, every=0.1)
    doc, _ = _infer(edge)
    assert _offloaded(doc) and outputs(doc)["label"] == want
    assert _breaker(edge)["state"] == "closed"
    assert metric(edge, "edge_agent_offload_breaker_state") == 0
    doc, _ = _infer(edge)
    assert _offloaded(doc)
    assert metric(edge, "edge_agent_offload_total", outcome="ok") == 3
