"""The inventory folds retained documents into units (fleet/inventory.py); the rollout record
persists atomically and its lease refuses a second controller (fleet/record.py)."""

from __future__ import annotations

import json

import pytest

from edge_agent.errors import RolloutLeaseHeld
from edge_agent.fleet.inventory import Inventory
from edge_agent.fleet.record import Lease, RolloutRecord, RolloutStore, UnitEntry, check_lease, parse_record

ONLINE = {"state": "online", "device": "u1", "version": "0.1.0", "group": "lab", "labels": {"ring": "a"},
          "models": [{"name": "digits", "version": "1", "default": True}, {"name": "digits", "version": "2"}]}


def test_units_from_status_and_ota_state():
    inv = Inventory()
    inv.on_status("u1", ONLINE)
    inv.on_ota_state("u2", {"models": {"digits": {"state": "active", "target": "3", "fallback": "2"}}})
    inv.on_status("u2", {"state": "offline", "reason": "lost", "group": "lab", "labels": {"ring": "b"}})
    inv.on_status("u3", {"state": "online", "group": "other", "models": [{"name": "digits", "version": "1", "default": True}]})
    inv.on_status("u4", b"")  # a cleared topic
    inv.on_ota_state("u4", ["not", "a", "document"])
    u1, u2 = inv.units["u1"], inv.units["u2"]
    assert (u1.online, u1.labels, u1.served("digits"), u1.previous("digits")) == (True, {"ring": "a"}, "1", None)
    assert (u2.online, u2.reason, u2.served("digits"), u2.previous("digits")) == (False, "lost", "3", "2")
    assert [u.device for u in inv.select("digits", "lab")] == ["u1", "u2"]
    assert [u.device for u in inv.select("digits", "lab", {"ring": "b"})] == ["u2"]
    assert inv.select("nope", "lab") == [] and "u4" not in inv.units


def test_served_version_while_an_update_is_in_flight_is_the_fallback():
    inv = Inventory()
    inv.on_status("u1", ONLINE)
    for state, served in (("downloading", "1"), ("canary", "1"), ("failed", "1"), ("rolled_back", "1"), ("active", "2")):
        inv.on_ota_state("u1", {"models": {"digits": {"state": state, "target": "2", "fallback": "1"}}})
        assert inv.units["u1"].served("digits") == served, state


def record(**kw) -> RolloutRecord:
    base = dict(id="r1", model="digits", version="2", group="lab", controller="fleet-controller", wave_spec="100%",
                waves=[["u1", "u2"]], wave_timeout_s=60, units={"u1": UnitEntry(wave=0), "u2": UnitEntry(wave=0)})
    base.update(kw)
    return RolloutRecord(**base)


def test_the_record_survives_a_round_trip_and_refuses_foreign_documents(tmp_path):
    store = RolloutStore(tmp_path / "fleet")
    rec = record()
    rec.units["u1"].commanded_at, rec.units["u1"].outcome = 1.0, "success"
    store.save(rec)
    assert store.load("r1") == rec and store.load("nope") is None
    assert [p.name for p in (tmp_path / "fleet").iterdir()] == ["r1.json"]  # no temp file left behind
    assert parse_record(json.dumps(rec.model_dump(mode="json")).encode()) == rec
    assert parse_record(b"") is None and parse_record(b"{\"id\": 1}") is None and parse_record(b"\xff") is None
    assert rec.counts() == {"success": 1, "error": 0, "offline": 0, "timeout": 0, "pending": 0, "untouched": 1}
    rec.wave = 0  # its wave started: the other unit is pending, no longer untouched
    assert rec.counts(0) == {"success": 1, "error": 0, "offline": 0, "timeout": 0, "pending": 1, "untouched": 0}


def test_a_live_lease_of_another_owner_refuses_and_an_expired_one_does_not():
    rec = record(lease=Lease(owner="host:1:aa", expires_at=1000.0))
    with pytest.raises(RolloutLeaseHeld) as e:
        check_lease(rec, "host:2:bb", now=990.0)
    assert e.value.code == "rollout_lease_held" and "host:1:aa" in e.value.message
    check_lease(rec, "host:1:aa", now=990.0)  # its own lease
    check_lease(rec, "host:2:bb", now=1000.5)  # expired: a resume takes over
    check_lease(record(), "host:2:bb", now=0.0)  # released
