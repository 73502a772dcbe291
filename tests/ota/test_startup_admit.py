"""The start-up scan applies the routing rule from persisted state, before the OTA agent runs."""

from __future__ import annotations

import json
import logging

from edge_agent.ota.routing import RoutingRule
from edge_agent.ota.statemachine import State, UpdateRecord
from edge_agent.ota.versions import Pointers, write_pointers


def persist(state_dir, model: str, **fields) -> None:
    (state_dir / "ota").mkdir(parents=True, exist_ok=True)
    (state_dir / "ota" / f"{model}.json").write_text(UpdateRecord(model=model, **fields).model_dump_json())


def startup_admit(state_dir, followed):
    """The rule as the daemon installs it before its first scan; the scan asks only about
    version directories it found, so every version asked about is on disk here."""
    models = state_dir / "models-dir"
    for model in ("m", "other"):
        for v in "12345":
            (models / model / v).mkdir(parents=True, exist_ok=True)
            (models / model / v / "model.onnx").write_bytes(b"x")
    return RoutingRule(state_dir, models, followed)


def test_refused_and_unvalidated_versions_are_held_back_kept_ones_never(tmp_path):
    write_pointers(tmp_path, "m", Pointers(active="1", previous="3"))
    persist(tmp_path, "m", state=State.STAGED, target="4", rejected=["2", "3"])
    admit = startup_admit(tmp_path, [])
    assert admit("m", "1") and admit("m", "5")
    assert not admit("m", "2")  # refused
    assert not admit("m", "4")  # the update not yet validated
    assert admit("m", "3")  # refused once, but the pointers keep it (previous)


def test_a_canary_target_is_admitted(tmp_path):
    write_pointers(tmp_path, "m", Pointers(active="1", previous=None))
    persist(tmp_path, "m", state=State.CANARY, target="2")
    assert startup_admit(tmp_path, [])("m", "2")


def test_no_record_an_unfollowed_model_or_an_unreadable_record_admit_everything(tmp_path, caplog):
    persist(tmp_path, "other", rejected=["2"])
    assert startup_admit(tmp_path, [])("m", "2")  # no record for m
    assert startup_admit(tmp_path, ["m"])("other", "2")  # other is not followed
    (tmp_path / "ota" / "m.json").write_text(json.dumps({"state": "no such state"}))
    with caplog.at_level(logging.WARNING):
        assert startup_admit(tmp_path, [])("m", "2")
    assert "unreadable at start-up" in caplog.text
