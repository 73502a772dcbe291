"""The routing rule (ota/routing.py): one table, every row of which fails if its clause is broken."""

from __future__ import annotations

import pytest

from edge_agent.ota.routing import RoutingRule, routable
from edge_agent.ota.statemachine import State, UpdateRecord
from edge_agent.ota.versions import Pointers, write_pointers

P = Pointers(active="1", previous="2")
DL, VE, ST, CA, AC, RB, FA, ID = (State.DOWNLOADING, State.VERIFYING, State.STAGED, State.CANARY, State.ACTIVE,
                                  State.ROLLED_BACK, State.FAILED, State.IDLE)


def rec(state: State = ID, target: str | None = None, rejected: tuple = ()) -> UpdateRecord:
    return UpdateRecord(model="m", state=state, target=target, rejected=list(rejected))


ROWS = [
    # (case, record, version, on disk, routable)
    ("active, even refused and gone", rec(ID, rejected=("1",)), "1", False, True),
    ("previous, even refused", rec(RB, "5", rejected=("2", "5")), "2", True, True),
    ("canary target", rec(CA, "5"), "5", True, True),
    ("canary target, refused once then forced", rec(CA, "5", rejected=("5",)), "5", True, True),
    ("deleted by keep-K", rec(AC, "1"), "4", False, False),
    ("deleted, no record", None, "4", False, False),
    ("no record: on disk", None, "7", True, True),
    ("refused", rec(ID, rejected=("3",)), "3", True, False),
    ("rolled back", rec(RB, "5", rejected=("5",)), "5", True, False),
    ("failed validation", rec(FA, "5", rejected=("5",)), "5", True, False),
    ("downloads gave up (not refused)", rec(FA, "5"), "5", True, True),
    ("downloading target", rec(DL, "5"), "5", True, False),
    ("verifying target", rec(VE, "5"), "5", True, False),
    ("staged target", rec(ST, "5"), "5", True, False),
    ("other version during an update", rec(ST, "5"), "4", True, True),
    ("other version in canary", rec(CA, "5"), "4", True, True),
    ("an old version on disk", rec(AC, "1"), "0", True, True),
]


@pytest.mark.parametrize("case,record,version,on_disk,expected", ROWS, ids=[r[0] for r in ROWS])
def test_rule_table(case, record, version, on_disk, expected):
    assert routable(version, P, record, on_disk) is expected


def _version(models_dir, model: str, version: str) -> None:
    (models_dir / model / version).mkdir(parents=True, exist_ok=True)
    (models_dir / model / version / "model.onnx").write_bytes(b"x")


def _persist(state_dir, model: str, **fields) -> None:
    (state_dir / "ota").mkdir(parents=True, exist_ok=True)
    (state_dir / "ota" / f"{model}.json").write_text(UpdateRecord(model=model, **fields).model_dump_json())


def test_before_the_agent_the_persisted_record_then_the_agents_records_and_models(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    for v in ("1", "2", "3"):
        _version(models, "m", v)
        _version(models, "other", v)
    write_pointers(state, "m", Pointers(active="1"))
    _persist(state, "m", state=State.STAGED, target="3", rejected=["2"])
    _persist(state, "other", rejected=["2"])
    rule = RoutingRule(state, models, ["m"])
    assert rule("m", "1") and not rule("m", "2") and not rule("m", "3")
    assert rule("other", "2")  # not followed
    live = {"m": UpdateRecord(model="m", state=State.CANARY, target="3"), "other": UpdateRecord(model="other",
                                                                                               rejected=["2"])}
    rule.follow(["m", "other"], live.__getitem__)
    assert rule("m", "3")  # the agent's record says canary now
    assert not rule("other", "2")  # followed now
    (models / "m" / "2").rename(models / "m" / ".trash-2")
    live["m"] = UpdateRecord(model="m", state=State.ACTIVE, target="3")
    assert not rule("m", "2")  # gone from disk

