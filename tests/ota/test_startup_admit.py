"""startup_admit: the start-up scan applies the OTA agent's hold-back rule from persisted state."""

from __future__ import annotations

import json
import logging

from edge_agent.ota.agent import startup_admit
from edge_agent.ota.statemachine import State, UpdateRecord
from edge_agent.ota.versions import Pointers, write_pointers


def persist(state_dir, model: str, **fields) -> None:
    (state_dir / "ota").mkdir(parents=True, exist_ok=True)
    (state_dir / "ota" / f"{model}.json").write_text(UpdateRecord(model=model, **fields).model_dump_json())


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
