"""SIGHUP applies what a running daemon can change and names what needs a restart."""

from __future__ import annotations

import signal

import numpy as np
from sklearn.datasets import load_digits

from daemon_proc import copy_digits, digits_body, wait_for

X = load_digits(return_X_y=True)[0].astype(np.float32)


def _reload(a, config: dict) -> None:
    done = a.log().count("reload done")
    a.config = config
    a.write_config()
    a.signal(signal.SIGHUP)
    wait_for(lambda: a.log().count("reload done") > done)


def _status(a) -> dict:
    status, doc = a.client().json("GET", "/edge/status")
    assert status == 200
    return doc


def test_reload_applies_deadlines_and_log_level_and_keeps_restart_only_sections(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    body = digits_body(X[:1])
    assert a.client().infer("digits", body)[0] == 200 and _status(a)["restart_needed"] == []

    _reload(a, {"cache": {"memory_max_bytes": 1234567}, "batching": {"deadline_normal_s": 1e-6},
                "logging": {"level": "DEBUG"}})
    assert _status(a)["restart_needed"] == ["cache"]
    assert "reload: cache changed; kept as running until the next restart" in a.log()
    assert "reload: log level DEBUG" in a.log()
    # The new default deadline holds at once: nothing can run within a microsecond.
    body["parameters"] = {"cache": False}
    status, doc = a.client().infer("digits", body)
    assert (status, doc["code"]) == (504, "deadline_exceeded")

    _reload(a, {})  # back to what runs: nothing waits for a restart any more
    assert _status(a)["restart_needed"] == []
    assert a.client().infer("digits", body)[0] == 200


def test_an_invalid_config_on_reload_is_refused_and_the_running_one_kept(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    _reload(a, {"batching": {"deadline_normal_s": 1e-6}, "cache": {"no_such_key": 1}})
    assert "reload: keeping the running configuration" in a.log() and "cache.no_such_key" in a.log()
    # Nothing of the refused file applies: the old deadline holds, nothing waits for a restart.
    body = digits_body(X[:1])
    body["parameters"] = {"cache": False}
    assert a.client().infer("digits", body)[0] == 200
    assert _status(a)["restart_needed"] == []


def test_reload_keeps_restart_only_sections_together_whatever_rules_join_them(agent_factory):
    """The rules between sections (offload needs MQTT 5) judge the file; the running sections that
    replace its restart-only ones are valid together too, never judged half swapped."""
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    _reload(a, {"mqtt": {"enabled": True, "host": "127.0.0.1", "port": 1}, "offload": {"enabled": True}})
    assert "reload: keeping the running configuration" not in a.log()
    assert _status(a)["restart_needed"] == ["mqtt", "offload"]
    assert "mqtt" not in _status(a)  # still as running: no MQTT
    assert a.client().infer("digits", digits_body(X[:1]))[0] == 200


def test_sighup_adds_a_version_of_a_pipeline_while_it_serves(agent_factory, ocr_build):
    import shutil
    import threading

    import ocr_reference as ref
    from ocr_daemon import differences, infer_bytes, install_ocr, outputs_of, rendered_cases

    ref.require_rapidocr()
    (data, want), = rendered_cases(1, seed=5)
    a = agent_factory(config={"cache": {"enabled": False}, "runtime": {"intra_op_num_threads": 0}})
    install_ocr(ocr_build, a.models_dir)
    a.start(timeout=180)
    seen, stop = [], threading.Event()

    def steady():
        c = a.client(timeout=60)
        while not stop.is_set():
            status, doc = infer_bytes(c, data)
            seen.append((status, doc.get("model_version"), status == 200 and differences(outputs_of(doc)["text"], outputs_of(doc)["boxes"], want)))

    t = threading.Thread(target=steady)
    t.start()
    try:
        wait_for(lambda: len(seen) >= 2, timeout=60)
        shutil.copytree(a.models_dir / "ocr" / "1", a.models_dir / "ocr" / "2")
        a.signal(signal.SIGHUP)
        wait_for(lambda: [m["version"] for m in a.client().json("POST", "/v2/repository/index")[1]] == ["1", "2"], timeout=120)
        status, doc = infer_bytes(a.client(timeout=60), data, version="2")
        assert status == 200 and doc["model_version"] == "2" and differences(outputs_of(doc)["text"], outputs_of(doc)["boxes"], want) is None
        n = len(seen)
        wait_for(lambda: len(seen) > n + 1, timeout=60)
    finally:
        stop.set()
        t.join(60)
    assert [s for s in seen if s[0] != 200 or s[2]] == []
    assert seen[-1][1] == "2"  # the default moved to the new version
