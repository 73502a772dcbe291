"""Publish -> pull -> verify -> validate -> canary -> promote, over real HTTP servers."""

import json
import subprocess
import sys
import time

import pytest
from prometheus_client import REGISTRY

from edge_agent.ota.publish import publish
from edge_agent.ota.statemachine import State
from edge_agent.ota.versions import read_pointers, Pointers
from updater_helpers import (FakeDaemonSide, agent_too_new, corrupt_signature, grow_artifact, install_v1, make_updater,
                             tamper_artifact, tamper_manifest, wrong_golden)


@pytest.fixture
def published(src_models, registry, keys, device):
    publish(src_models("1"), registry, keys[0], channel="stable")
    install_v1(registry, device)
    return registry


@pytest.mark.parametrize("server", ["devserver", "nginx"])
def test_publish_pull_validate_canary_promote(server, request, published, src_models, keys, device):
    url = request.getfixturevalue(server)
    url = url if isinstance(url, str) else (url.url if hasattr(url, "url") else url[0])
    publish(src_models("2", seed=1, pad_bytes=200_000), published, keys[0], channel="stable")
    daemon = FakeDaemonSide(verdicts=[None, None, "promote"])
    states = []
    upd = make_updater(url, device, keys[1], hooks=daemon, on_progress=lambda r: states.append(r.state))
    assert upd.check() == "2"
    assert upd.advance() is State.CANARY  # waits: no verdict yet
    assert upd.advance() is State.CANARY
    assert upd.advance() is State.ACTIVE
    assert [h.state.value for h in upd.record.history] == ["downloading", "verifying", "staged", "canary", "active"]
    assert read_pointers(device / "state", "linear") == Pointers(active="2", previous="1")
    assert daemon.calls[0] == ("start_canary", "2") and daemon.calls[-1] == ("promote", "2")
    assert sorted(p.name for p in (device / "models" / "linear").iterdir()) == ["1", "2"]
    persisted = json.loads((device / "state" / "ota" / "linear.json").read_text())
    assert persisted["state"] == "active" and persisted["target"] == "2" and persisted["fallback"] == "1"
    assert State.DOWNLOADING in states  # progress was published
    assert upd.check() is None  # nothing newer


@pytest.mark.parametrize("case,mutate,pin_other,code", [
    ("tampered artifact", tamper_artifact, False, "artifact_digest_mismatch"),
    ("grown artifact", grow_artifact, False, "artifact_size_mismatch"),
    ("tampered manifest", tamper_manifest, False, "signature_invalid"),
    ("bad signature", corrupt_signature, False, "signature_invalid"),
    ("unknown key", None, True, "signature_unknown_key"),
    ("golden mismatch", wrong_golden, False, "golden_mismatch"),
    ("agent too old", agent_too_new, False, "agent_too_old"),
])
def test_rejected_before_any_traffic(case, mutate, pin_other, code, published, src_models, keys, other_keys,
                                     device, devserver, caplog):
    publish(src_models("2", seed=1), published, keys[0], channel="stable")
    if mutate:
        mutate(published / "linear" / "2", keys)
    daemon = FakeDaemonSide()
    before = REGISTRY.get_sample_value("edge_agent_ota_rejections_total", {"model": "linear", "code": code}) or 0
    upd = make_updater(devserver.url, device, other_keys[1] if pin_other else keys[1], hooks=daemon)
    assert upd.check() == "2"
    assert upd.advance() is State.FAILED
    assert upd.record.code == code, upd.record.reason
    assert code in caplog.text or upd.record.reason in caplog.text
    assert daemon.calls == []  # never reached canary: no traffic
    assert read_pointers(device / "state", "linear").active == "1"
    assert sorted(p.name for p in (device / "models" / "linear").iterdir()) == ["1"]
    assert upd.record.rejected == ["2"] and upd.check() is None  # not retried by polling
    assert REGISTRY.get_sample_value("edge_agent_ota_rejections_total", {"model": "linear", "code": code}) == before + 1


def test_io_signature_change_rejected(published, src_models, keys, device, devserver):
    publish(src_models("2", in_dim=5), published, keys[0], channel="stable")
    upd = make_updater(devserver.url, device, keys[1], hooks=FakeDaemonSide())
    upd.check()
    assert upd.advance() is State.FAILED and upd.record.code == "signature_mismatch"
    assert "input 'x': FP32[4] -> FP32[5]" in upd.record.reason


def test_canary_rollback_restores_previous(published, src_models, keys, device, devserver):
    publish(src_models("2", seed=1), published, keys[0], channel="stable")
    daemon = FakeDaemonSide(verdicts=["rollback"])
    upd = make_updater(devserver.url, device, keys[1], hooks=daemon)
    upd.check()
    assert upd.advance() is State.ROLLED_BACK
    assert daemon.calls[-1] == ("rollback", "2")
    assert read_pointers(device / "state", "linear") == Pointers(active="1", previous=None)
    assert upd.check() is None  # a rolled-back version is not retried by polling
    upd.begin("2", force=True)  # an explicit command can
    assert upd.state is State.DOWNLOADING


def test_operator_rollback_after_promotion_and_load_failure(published, src_models, keys, device, devserver):
    publish(src_models("2", seed=1), published, keys[0], channel="stable")
    upd = make_updater(devserver.url, device, keys[1])  # standalone: promotes after validation
    upd.check()
    assert upd.advance() is State.ACTIVE
    assert upd.abandon_active("model_load_failed at start") is State.ROLLED_BACK
    assert read_pointers(device / "state", "linear").active == "1"


def test_kill_9_during_download_then_resume_transfers_less(published, src_models, keys, device, devserver, tmp_path):
    publish(src_models("2", seed=1, pad_bytes=600_000), published, keys[0], channel="stable")
    size = (published / "linear" / "2" / "model.onnx").stat().st_size
    devserver.throttle_bps = 400_000
    script = f"""
import sys
from pathlib import Path
from edge_agent.ota.updater import Updater
u = Updater("linear", registry_url={devserver.url!r}, models_dir=Path({str(device / 'models')!r}),
            state_dir=Path({str(device / 'state')!r}), public_keys=[Path({str(keys[1])!r})])
u.check(); u.advance()
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    part = device / "models" / "linear" / "2.staging" / "model.onnx.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size > 100_000):
        assert proc.poll() is None and time.monotonic() < deadline, "child ended before the cut"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    devserver.throttle_bps = None
    sent_before = devserver.body_bytes_sent
    upd = make_updater(devserver.url, device, keys[1])
    assert upd.state is State.DOWNLOADING
    assert upd.resume() is State.DOWNLOADING
    assert upd.advance() is State.ACTIVE
    resumed_bytes = devserver.body_bytes_sent - sent_before
    assert resumed_bytes < size
    assert any(rng and rng.startswith("bytes=") for (_, p, rng, _) in devserver.requests if p.endswith("model.onnx"))
    assert read_pointers(device / "state", "linear") == Pointers(active="2", previous="1")


def test_the_daemon_side_is_asked_through_intents_never_called(published, src_models, keys, device, devserver):
    """How the daemon drives it (ota/agent.py): each call returns, then its intents are carried out."""
    from edge_agent.ota.intents import Promote, RollBack, StartCanary

    publish(src_models("2", seed=1), published, keys[0], channel="stable")
    upd = make_updater(devserver.url, device, keys[1], hooks=FakeDaemonSide(fail_start=True))
    assert upd.check() == "2" and upd.take_intents() == []
    assert upd.proceed() is State.CANARY
    assert upd.take_intents() == [StartCanary("2", device / "models" / "linear" / "2")]
    assert upd.hooks.calls == []  # the hooks are the standalone mode's; the daemon gets intents
    assert not upd.canary_routed and upd.decide("promote") is State.CANARY  # no verdict before it routes
    assert upd.canary_started(None) is State.CANARY and upd.canary_routed
    assert upd.proceed() is State.CANARY and upd.take_intents() == []  # waits for the verdict
    assert upd.decide(None) is State.CANARY
    assert upd.decide("promote", "fine") is State.ACTIVE
    assert upd.take_intents() == [Promote("2")] and "canary verdict: promote (fine)" in upd.record.reason
    assert read_pointers(device / "state", "linear") == Pointers(active="2", previous="1")

    publish(src_models("3", seed=2), published, keys[0], channel="stable")
    assert upd.check() == "3" and upd.proceed() is State.CANARY and len(upd.take_intents()) == 1
    assert upd.canary_started(RuntimeError("session failed to load")) is State.ROLLED_BACK
    assert upd.take_intents() == [RollBack("3")]
    assert "canary could not start: RuntimeError" in upd.record.reason and "3" in upd.record.rejected
    assert read_pointers(device / "state", "linear").active == "2"
    assert upd.canary_started(None) is State.ROLLED_BACK  # too late: nothing changes
