"""Rollouts over a simulated fleet: >= 50 real daemons on one mosquitto, the registry behind nginx.

One module-scoped fleet serves every scenario; each scenario rolls a new version, so
they run in file order (v2 good, v3 bad, v4 approved then aborted, v5 unit killed, v6 controller
killed). Commands are counted at the broker by an audit subscriber, outcomes are read
from each unit's own persisted state. FLEET_UNITS overrides the size (default 50).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from fleet_rig import GROUP, MODEL, Fleet, wait_for

UNITS = int(os.environ.get("FLEET_UNITS", "50"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"), UNITS)
    t0 = time.monotonic()
    try:
        f.start()
        print(f"\n{UNITS} daemons ready in {time.monotonic() - t0:.1f} s")
        yield f
    finally:
        f.stop()


def summary_of(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(fleet, version: str, run) -> tuple:
    """Run a rollout and report what it cost: messages by kind, registry requests and bytes."""
    before_msgs, before_reg = fleet.audit.snapshot(), fleet.registry_bytes()
    out = run()
    time.sleep(0.5)
    after_msgs, after_reg = fleet.audit.snapshot(), fleet.registry_bytes()
    kinds = {k: v - before_msgs["by_kind"].get(k, 0) for k, v in after_msgs["by_kind"].items()
             if v - before_msgs["by_kind"].get(k, 0)}
    cost = {"messages_by_kind": kinds, "message_bytes": after_msgs["bytes"] - before_msgs["bytes"],
            "registry_requests": after_reg[0] - before_reg[0], "registry_bytes": after_reg[1] - before_reg[1]}
    return out, cost


def test_inventory_lists_every_unit_with_labels_and_versions(fleet):
    p = fleet.run("units", "--json")
    assert p.returncode == 0, p.stderr
    units = {u["device"]: u for u in json.loads(p.stdout)["units"]}
    assert set(units) == set(fleet.agents)
    u = units["u001"]
    assert u["online"] is True and u["group"] == GROUP and u["labels"] == {"site": "lab", "ring": "b"}
    assert u["models"][MODEL]["served"] == "1"


def test_good_version_in_three_waves_reaches_every_unit_once(fleet):
    fleet.publish("2")
    p, cost = measure(fleet, "2", lambda: fleet.run("rollout", MODEL, "2", "--waves", "10%,50%,100%", "--json",
                                                      "--wave-timeout", "240s", "--id", "digits-2"))
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary_of(p)
    assert s["state"] == "done" and s["totals"]["success"] == UNITS and s["totals"]["error"] == 0
    assert [w["units"] for w in s["waves"]] == [-(-UNITS // 10), -(-UNITS // 2) - -(-UNITS // 10), UNITS - -(-UNITS // 2)]
    assert all(fleet.active(d) == "2" and fleet.ota_record(d)["state"] == "active" for d in fleet.agents)
    per_unit = fleet.audit.commands_for("2")
    assert set(per_unit) == set(fleet.agents) and set(per_unit.values()) == {1}
    cost["record_bytes"] = len((fleet.state_dir / "digits-2.json").read_bytes())
    print("\nFLEET-MEASURE good", json.dumps({"summary": s, "cost": cost}))


def test_bad_version_halts_in_wave_one_and_leaves_the_rest_untouched(fleet):
    fleet.publish("3", bad_golden=True)
    p = fleet.run("rollout", MODEL, "3", "--waves", "10%,100%", "--rollback-on-halt", "--json",
                  "--wave-timeout", "240s", "--id", "digits-3")
    assert p.returncode == 1, p.stderr[-3000:]
    s = summary_of(p)
    print("\nFLEET-MEASURE bad", json.dumps(s))
    assert s["state"] == "halted" and "error threshold" in s["halt_reason"]
    wave1 = set(json.loads((fleet.state_dir / "digits-3.json").read_text())["waves"][0])
    assert s["errors"] and all(e["code"] == "golden_mismatch" and e["device"] in wave1 for e in s["errors"])
    assert set(fleet.audit.commands_for("3")) <= wave1  # nobody outside wave 1 was commanded
    for d in fleet.agents:
        rec = fleet.ota_record(d)
        if d in wave1:
            assert fleet.active(d) == "2"  # restored: serving the previous version
        else:
            assert rec["target"] == "2" and rec["state"] == "active" and fleet.active(d) == "2"  # untouched


def test_approve_each_wave_then_abort_rolls_the_updated_units_back(fleet):
    fleet.publish("4")
    path = fleet.state_dir / "digits-4.json"

    def awaiting(wave: int) -> bool:
        rec = json.loads(path.read_text()) if path.exists() else {}
        return rec.get("state") == "awaiting_approval" and rec.get("wave") == wave

    with fleet.controller("rollout", MODEL, "4", "--waves", "10%,50%,100%", "--approve-each-wave",
                          "--rollback-on-halt", "--json", "--wave-timeout", "240s", "--id", "digits-4") as ctl:
        wait_for(lambda: awaiting(0), 240, "wave 1 done, waiting for approval")
        waves = json.loads(path.read_text())["waves"]
        assert all(fleet.active(d) == "4" for d in waves[0]) and not fleet.audit.commands_for("4").keys() - set(waves[0])
        approve = fleet.run("resume", "digits-4")  # approves wave 2
        assert approve.returncode == 0, approve.stderr
        wait_for(lambda: awaiting(1), 240, "wave 2 done, waiting for approval")
        a = fleet.run("abort", "digits-4")
        assert a.returncode == 0, a.stderr
        rc, s = fleet.outcome(ctl)
    assert rc == 1
    updated = set(waves[0]) | set(waves[1])
    assert s["state"] == "aborted" and set(s["rollback"]["restored"]) == updated
    assert set(fleet.audit.commands_for("4")) == updated  # wave 3 never commanded
    assert all(fleet.active(d) == "2" for d in fleet.agents)  # the updated ones restored, the rest untouched


def test_unit_killed_mid_wave_is_reported_offline_and_does_not_block(fleet):
    fleet.publish("5")
    with fleet.controller("rollout", MODEL, "5", "--waves", "20%,100%", "--json", "--wave-timeout", "240s",
                          "--success-threshold", "100%", "--id", "digits-5") as ctl:
        victim = wait_for(lambda: next(iter(fleet.audit.commands_for("5")), None), 120, "the first command")
        fleet.agents[victim].kill()
        rc, s = fleet.outcome(ctl)
    assert rc == 0
    assert s["state"] == "done" and s["offline"] == [victim] and s["totals"]["success"] == UNITS - 1
    assert all(fleet.active(d) == "5" for d in fleet.agents if d != victim)
    fleet.agents[victim].start(timeout=240)  # back for the next scenario


def test_controller_killed_with_kill_9_mid_wave_resumes_commanding_each_unit_once(fleet):
    fleet.publish("6")
    with fleet.controller("rollout", MODEL, "6", "--waves", "10%,50%,100%", "--json", "--wave-timeout", "240s",
                          "--lease", "15s", "--id", "digits-6") as ctl:
        first = -(-UNITS // 10)
        wait_for(lambda: sum(fleet.audit.commands_for("6").values()) > first, 240, "wave 2 commanded")
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(10)
    # A second controller while the dead one's lease is still valid refuses to drive it.
    refused = fleet.run("resume", "digits-6", "--lease", "6s")
    assert refused.returncode == 1 and "rollout_lease_held" in refused.stderr, refused.stderr
    lease = json.loads((fleet.state_dir / "digits-6.json").read_text())["lease"]
    time.sleep(max(0.0, lease["expires_at"] - time.time()) + 0.5)  # the dead controller's lease runs out
    p = fleet.run("resume", "digits-6", "--json", "--lease", "6s")
    assert p.returncode == 0, p.stderr[-3000:]
    s = summary_of(p)
    assert s["state"] == "done" and s["totals"]["success"] == UNITS
    per_unit = fleet.audit.commands_for("6")
    assert set(per_unit) == set(fleet.agents) and set(per_unit.values()) == {1}, per_unit
    assert all(fleet.active(d) == "6" for d in fleet.agents)
