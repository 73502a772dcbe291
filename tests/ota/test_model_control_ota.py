"""Operator load/unload of a model the OTA updater follows (serving/model_control.py), on a real daemon.

The updater owns the active and previous versions and an update's target:
unloading one of them, or loading a version it refuses, is invalid_transition;
other versions the operator may load and unload.
"""

from __future__ import annotations

import numpy as np

from daemon_proc import copy_digits, digits_body
from edge_agent.ota.statemachine import State, UpdateRecord
from edge_agent.ota.versions import Pointers, write_pointers

BODY = digits_body(np.zeros((1, 64), np.float32))


def test_conflicting_manual_actions_on_an_ota_model_are_refused(agent_factory, keys):
    _, pub = keys
    a = agent_factory(config={"ota": {"enabled": True, "registry_url": "http://127.0.0.1:9/registry",
                                      "public_keys": [str(pub)], "poll_interval_s": 3600}})
    for v in "1234":
        copy_digits(a.models_dir, v)
    write_pointers(a.state_dir, "digits", Pointers(active="2", previous="1"))
    rec = UpdateRecord(model="digits", state=State.ACTIVE, target="2", fallback="1", rejected=["4"])
    (a.state_dir / "ota").mkdir(parents=True)
    (a.state_dir / "ota" / "digits.json").write_text(rec.model_dump_json())
    a.start()
    c = a.client()
    for path, body, why in [("unload", None, "2 is active"), ("unload", {"version": "2"}, "2 is active"),
                            ("unload", {"version": "1"}, "1 is the fallback (previous)"),
                            ("load", {"version": "4"}, "does not admit version 4")]:
        status, doc = c.json("POST", f"/v2/repository/models/digits/{path}", body)
        assert status == 409 and doc["code"] == "invalid_transition" and why in doc["error"], doc
    _, index = c.json("POST", "/v2/repository/index")
    assert sorted(m["version"] for m in index if m["state"] == "READY") == ["1", "2", "3"]  # nothing changed

    # A version the updater does not need: the operator's.
    status, doc = c.json("POST", "/v2/repository/models/digits/unload", {"version": "3"})
    assert status == 200 and doc["unloaded"] == ["3"] and doc["serving"] == ["1", "2"], doc
    assert c.infer("digits", BODY, "3")[0] == 503
    assert c.infer("digits", BODY)[1]["model_version"] == "2"
    status, doc = c.json("POST", "/v2/repository/models/digits/load", {"version": "3"})
    assert status == 200 and doc["serving"] == ["1", "2", "3"], doc
