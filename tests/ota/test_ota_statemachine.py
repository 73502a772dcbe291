"""Table-driven: (case, fail_in, kill_in, expected chain), crash = re-instantiate from the persisted file."""

import json

import pytest

from edge_agent.ota.errors import InvalidTransition
from edge_agent.ota.manifest import Manifest
from edge_agent.digests import sha256_file
from edge_agent.ota.publish import publish
from edge_agent.ota.statemachine import IN_FLIGHT, TRANSITIONS, Event, State, UpdateStateMachine
from edge_agent.ota.versions import Pointers, cleanup, read_pointers, write_pointers
from updater_helpers import FakeDaemonSide, install_v1, make_updater, tamper_artifact, wrong_golden


class Crash(BaseException):
    """kill -9: nothing after this point runs; only what is on disk survives."""


DL, VE, ST, CA, AC, RB, FA = "downloading", "verifying", "staged", "canary", "active", "rolled_back", "failed"

CASES = [
    # case,                     fail_in,        kill_in,   expected chain,                          active
    ("happy path",              None,           None,      [DL, VE, ST, CA, AC],                     "2"),
    ("kill while downloading",  None,           DL,        [DL, DL, VE, ST, CA, AC],                 "2"),
    ("kill while verifying",    None,           VE,        [DL, VE, VE, ST, CA, AC],                 "2"),
    ("kill while staged",       None,           ST,        [DL, VE, ST, ST, CA, AC],                 "2"),
    ("kill in canary",          None,           CA,        [DL, VE, ST, CA, CA, AC],                 "2"),
    ("kill after promotion",    None,           AC,        [DL, VE, ST, CA, AC],                     "2"),
    ("tampered download",       "artifact",     None,      [DL, FA],                                 "1"),
    ("golden mismatch",         "golden",       None,      [DL, VE, ST, FA],                         "1"),
    ("kill after failing",      "golden",       FA,        [DL, VE, ST, FA],                         "1"),
    ("canary says rollback",    "verdict",      None,      [DL, VE, ST, CA, RB],                     "1"),
    ("kill after rollback",     "verdict",      RB,        [DL, VE, ST, CA, RB],                     "1"),
    ("canary cannot start",     "canary_start", None,      [DL, VE, ST, CA, RB],                     "1"),
    ("crash loop in canary",    None,           CA + "*",  [DL, VE, ST, CA, CA, RB],                 "1"),
    ("crash loop in staged",    None,           ST + "*",  [DL, VE] + [ST] * 5 + [FA],               "1"),
]


@pytest.mark.parametrize("case,fail_in,kill_in,chain,active", CASES, ids=[c[0] for c in CASES])
def test_crash_and_failure_table(case, fail_in, kill_in, chain, active, src_models, registry, keys, device, devserver):
    publish(src_models("1"), registry, keys[0], channel="stable")
    install_v1(registry, device)
    publish(src_models("2", seed=1, pad_bytes=150_000), registry, keys[0], channel="stable")
    if fail_in == "artifact":
        tamper_artifact(registry / "linear" / "2", keys)
    if fail_in == "golden":
        wrong_golden(registry / "linear" / "2", keys)
    daemon = FakeDaemonSide(verdicts=[None, "rollback" if fail_in == "verdict" else "promote"] * 3,
                            fail_start=fail_in == "canary_start")
    kills = []

    def on_progress(rec):
        want = (kill_in or "").rstrip("*")
        if rec.state.value == want and (want != DL or rec.progress) and (kill_in.endswith("*") or not kills):
            kills.append(rec.state.value)
            raise Crash()

    def boot():
        return make_updater(devserver.url, device, keys[1], hooks=daemon, on_progress=on_progress)

    upd, started = boot(), False
    for _ in range(12):
        try:
            if not started:
                started = True
                upd.check()
            else:
                upd.resume()
            while upd.advance() in IN_FLIGHT:
                pass
            break
        except Crash:
            upd = boot()  # the process died; a new one reads the state file
    else:
        pytest.fail("never settled")

    assert [h.state.value for h in upd.record.history] == chain
    assert bool(kills) == bool(kill_in)
    on_disk = json.loads((device / "state" / "ota" / "linear.json").read_text())
    assert on_disk["state"] == chain[-1]
    # One consistent version is served: the pointer names a complete, verified directory.
    ptr = read_pointers(device / "state", "linear")
    assert ptr.active == active
    vdir = device / "models" / "linear" / active
    for a in Manifest.parse((vdir / "manifest.json").read_bytes()).artifacts:
        assert sha256_file(vdir / a.path) == a.sha256
    leftovers = [p.name for p in (device / "models" / "linear").iterdir() if p.name not in ("1", "2")]
    assert leftovers == []
    if chain[-1] in (FA, RB):
        assert "2" in upd.record.rejected
        assert ptr.previous is None
    if chain[-1] == FA:
        assert not (device / "models" / "linear" / "2").exists()
    if kill_in == CA:
        assert daemon.calls.count(("start_canary", "2")) == 1  # killed before it started, restarted once
    if kill_in == ST + "*":
        assert upd.record.code == "retries_exhausted"


def test_table_rejects_unknown_events(tmp_path):
    sm = UpdateStateMachine(tmp_path, "m")
    with pytest.raises(InvalidTransition) as e:
        sm.fire(Event.PROMOTE)
    assert e.value.code == "invalid_transition"
    assert sm.state is State.IDLE and not (tmp_path / "ota" / "m.json").exists()
    # Every event into a resting state is reachable from some in-flight state, and nothing leaves FAILED but START.
    assert {e for (s, e) in TRANSITIONS if s is State.FAILED} == {Event.START}


def test_state_is_persisted_before_the_work(tmp_path):
    seen = []
    sm = UpdateStateMachine(tmp_path, "m", on_change=lambda r: seen.append(
        json.loads((tmp_path / "ota" / "m.json").read_text())["state"]))
    sm.fire(Event.START, target="2", fallback="1")
    sm.fire(Event.DOWNLOADED)
    assert seen == ["downloading", "verifying"]
    again = UpdateStateMachine(tmp_path, "m")
    assert again.state is State.VERIFYING and again.record.target == "2" and again.record.fallback == "1"


def test_loop_counter_turns_retries_into_failure(tmp_path):
    sm = UpdateStateMachine(tmp_path, "m", max_attempts=3)
    sm.fire(Event.START, target="2")
    assert sm.fire(Event.RETRY) is State.DOWNLOADING
    assert sm.fire(Event.RETRY) is State.DOWNLOADING
    assert sm.fire(Event.RETRY, reason="connection refused") is State.FAILED
    assert sm.record.code == "retries_exhausted" and "connection refused" in sm.record.reason


def test_step_counter_catches_ping_pong(tmp_path):
    sm = UpdateStateMachine(tmp_path, "m", max_attempts=100, max_steps=6)
    sm.fire(Event.START, target="2")
    states = []
    for _ in range(5):
        states.append(sm.fire(Event.DOWNLOADED))
        if sm.state is State.FAILED:
            break
        states.append(sm.fire(Event.RETRY))  # verifying -> downloading: attempts reset, steps do not
        if sm.state is State.FAILED:
            break
    assert sm.state is State.FAILED and sm.record.code == "retries_exhausted"


def test_corrupt_state_file_starts_idle(tmp_path):
    (tmp_path / "ota").mkdir()
    (tmp_path / "ota" / "m.json").write_text("{garbage")
    assert UpdateStateMachine(tmp_path, "m").state is State.IDLE


def test_keep_k_never_deletes_active_or_previous(tmp_path):
    models, state = tmp_path / "models", tmp_path / "state"
    for v in ["1", "2", "3", "4", "5", "10"]:
        (models / "m" / v).mkdir(parents=True)
        (models / "m" / v / "model.onnx").write_bytes(b"x")
    (models / "m" / "11.staging").mkdir()
    write_pointers(state, "m", Pointers(active="1", previous="2"))
    removed = cleanup(models, state, "m", keep=3)
    assert removed == ["3", "4", "5"]  # natural order: 10 is the newest
    assert sorted(p.name for p in (models / "m").iterdir()) == ["1", "10", "11.staging", "2"]
    write_pointers(state, "m", Pointers(active="10", previous="1"))
    assert cleanup(models, state, "m", keep=2) == ["2"]
