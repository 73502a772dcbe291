"""Operator load/unload (serving/model_control.py) on a real daemon, over the socket and the CLI.

Unload drains: requests in flight finish before the answer; afterwards the
model answers model_not_ready. The operator's choice is persisted: an unloaded
model or version stays unloaded across SIGHUP and a restart until loaded again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from daemon_proc import REPO, copy_digits, digits_body, make_slow_model, wait_for

BODY = digits_body(np.zeros((1, 64), np.float32))


def cli(a, *args) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "ctl", *args, "--socket", str(a.socket)],
                       capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ})
    return r.returncode, json.loads(r.stdout)


def index(a, **body) -> dict:
    status, rows = a.client().json("POST", "/v2/repository/index", body or None)
    assert status == 200
    return {(m["name"], m["version"]): m for m in rows}


def reload_by_sighup(a) -> None:
    done = a.log().count("reload done")
    a.signal(signal.SIGHUP)
    wait_for(lambda: a.log().count("reload done") > done, timeout=60)


def test_unload_drains_the_requests_in_flight_then_refuses(agent_factory):
    a = agent_factory(config={"batching": {"deadline_normal_s": 60}})
    make_slow_model(a.models_dir)  # 60 MatMuls 1024x1024: tens of ms a request
    copy_digits(a.models_dir)
    a.start()
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"cache": False}}
    n = 10
    done: list = []

    def ask() -> None:
        status, doc = a.infer_once("slow", body)
        done.append((status, doc))

    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: index(a)[("slow", "1")]["queue_depth"] >= 3, timeout=30, every=0.005)
    status, res = a.client().json("POST", "/v2/repository/models/slow/unload")
    for t in threads:
        t.join(60)
    assert status == 200, res
    assert res["unloaded"] == ["1"] and res["serving"] == []
    # At least 3 were queued when the unload came: all answered, none cut off. A request that
    # reached the daemon only after the unload began (a slow client thread on a busy machine)
    # is refused model_not_ready, never a 500 (it was: KeyError routing to no default version).
    assert len(done) == n and all(s == 200 or (s == 503 and d["code"] == "model_not_ready") for s, d in done), \
        [d for s, d in done if s != 200]
    assert sum(s == 200 for s, _ in done) >= 3
    status, err = a.infer_once("slow", body)
    assert status == 503 and err["code"] == "model_not_ready" and "unloaded by the operator" in err["error"]
    row = index(a)[("slow", "1")]
    assert row["state"] == "UNAVAILABLE" and row["reason"] == "unloaded by the operator"
    assert ("slow", "1") not in index(a, ready=True)  # Triton's {"ready": true}: only what serves
    assert a.infer_once("digits", BODY)[0] == 200  # the other model never noticed


def test_load_and_unload_by_cli_persist_across_sighup_and_restart(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    copy_digits(a.models_dir, "2")
    a.start()
    code, res = cli(a, "unload", "digits", "2")
    assert code == 0 and res["unloaded"] == ["2"] and res["serving"] == ["1"], res
    status, err = a.client().infer("digits", BODY, "2")
    assert status == 503 and err["code"] == "model_not_ready"
    assert a.client().infer("digits", BODY)[1]["model_version"] == "1"
    reload_by_sighup(a)
    assert index(a)[("digits", "2")]["state"] == "UNAVAILABLE"
    assert index(a)[("digits", "1")]["state"] == "READY"

    code, res = cli(a, "unload", "digits")
    assert code == 0 and res["unloaded"] == ["1"] and res["serving"] == []
    assert a.stop() == 0
    a.start()  # a restart keeps the operator's choice
    assert {k: m["state"] for k, m in index(a).items()} == {("digits", "1"): "UNAVAILABLE", ("digits", "2"): "UNAVAILABLE"}
    assert a.client().infer("digits", BODY)[0] == 503

    code, res = cli(a, "load", "digits", "1")
    assert code == 0 and res["loaded"] == ["digits/1"] and res["serving"] == ["1"], res
    reload_by_sighup(a)  # 2 is still unloaded: only 1 was loaded again
    assert index(a)[("digits", "2")]["state"] == "UNAVAILABLE"
    code, res = cli(a, "load", "digits")
    assert code == 0 and res["loaded"] == ["digits/2"] and res["serving"] == ["1", "2"], res
    assert not (a.state_dir / "model_control.json").read_text().count("digits")  # nothing held any more
    code, res = cli(a, "load", "digits")  # loading what is loaded changes nothing
    assert code == 0 and res["loaded"] == [] and res["serving"] == ["1", "2"]


@pytest.mark.parametrize("path, body, status, code", [
    ("/v2/repository/models/nosuch/load", None, 404, "unknown_model"),
    ("/v2/repository/models/../unload", None, 404, "unknown_model"),
    ("/v2/repository/models/.x/unload", None, 404, "unknown_model"),
    ("/v2/repository/models/digits/load", {"version": "9"}, 404, "unknown_version"),
    ("/v2/repository/models/digits/unload", {"parameters": {"version": ".."}}, 404, "unknown_version"),
    ("/v2/repository/models/digits/load", {"version": [1]}, 400, "malformed_request"),
    ("/v2/repository/models/digits/load", [1], 400, "malformed_request"),
    ("/v2/repository/models/digits/explode", None, 404, "not_found"),
    ("/v2/repository/models/digits/load/now", None, 404, "not_found"),
])
def test_hostile_requests_get_precise_codes(agent_factory, path, body, status, code):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    got, doc = a.client().json("POST", path, body)
    assert (got, doc["code"]) == (status, code), doc
    assert a.infer_once("digits", BODY)[0] == 200
    assert not (a.state_dir / "model_control.json").exists()  # nothing was held


def test_a_version_the_updater_made_active_after_an_unload_is_loaded_at_start(agent_factory):
    """The operator unloaded 2; later an update (OTA or a fleet rollout) made 2 active. After a
    restart the unit must serve 2, not quietly serve 1 while its OTA state says active on 2
    (hostile review: the old hold kept 2 out)."""
    from edge_agent.ota.versions import Pointers, write_pointers

    a = agent_factory()
    copy_digits(a.models_dir)
    copy_digits(a.models_dir, "2")
    a.start()
    code, res = cli(a, "unload", "digits", "2")
    assert code == 0 and res["unloaded"] == ["2"]
    assert a.stop() == 0
    write_pointers(a.state_dir, "digits", Pointers(active="2", previous="1"))  # what the updater writes on promote
    a.start()
    assert index(a)[("digits", "2")]["state"] == "READY"
    assert a.client().infer("digits", BODY, "2")[0] == 200
    assert "unloaded by the operator earlier, but the updater's active version; loaded" in a.log()
