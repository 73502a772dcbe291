"""Rules between config fields (edge_agent/config/), caught before start: by `edge-agent check-config`
(exit 2, file and line) and by `edge-agent run` (exit 3, before anything starts), with command-line
overrides merged into the file and held to the same rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_proc import REPO
from edge_agent.cli import build_parser, run_overrides
from edge_agent.config import load_config
from edge_agent.errors import ConfigError

CERT = "/etc/edge-agent/unit.pem"  # not read by the rules: check-config may run on another machine
KEY = "/etc/edge-agent/unit.key"

RULES = [
    # (rule, file, line and key path check-config names (a section: its first line), what it says)
    ("mqtt tls cert without key",
     f"mqtt:\n  enabled: true\n  tls:\n    cert_file: {CERT}\n",
     "4: mqtt.tls", "cert_file and key_file must be given together"),
    ("mqtt tls key without cert",
     f"mqtt:\n  tls:\n    ca_file: {CERT}\n    key_file: {KEY}\n",
     "3: mqtt.tls", "cert_file and key_file must be given together"),
    ("tcp tls key without cert",
     f"server:\n  tcp:\n    tls:\n      key_file: {KEY}\n",
     "4: server.tcp.tls.cert_file", "Field required"),
    ("ota without registry",
     "ota:\n  enabled: true\n  public_keys: [/etc/edge-agent/ota.pub.pem]\n",
     "2: ota", "ota.enabled needs ota.registry_url"),
    ("ota without keys",
     "ota:\n  enabled: true\n  registry_url: http://registry.lan/models\n",
     "2: ota", "ota.enabled needs at least one pinned key in ota.public_keys"),
    ("offload without mqtt",
     "mqtt:\n  enabled: false\noffload:\n  enabled: true\n",
     "4: (top level)", "offload.enabled needs mqtt.enabled"),
    ("offload over mqtt 3.1.1",
     "mqtt:\n  enabled: true\n  protocol: '3.1.1'\noffload:\n  enabled: true\n",
     "5: (top level)", 'offload.enabled needs mqtt.protocol "5"'),
    ("companion over mqtt 3.1.1",
     "mode: companion\nmqtt:\n  enabled: true\n  protocol: '3.1.1'\n",
     "1: (top level)", 'mode companion with mqtt.enabled needs mqtt.protocol "5"'),
    ("metrics port is the tcp port",
     "server:\n  tcp:\n    enabled: true\n    port: 9000\n  metrics:\n    enabled: true\n    port: 9000\n",
     "2: server", "server.metrics.port and server.tcp.port are both 9000"),
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ), timeout=60)


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    """`edge-agent run` that would serve from tmp_path (it must not get that far)."""
    return ["run", "--socket", str(tmp_path / "agent.sock"), "--state-dir", str(tmp_path / "state"),
            "--models-dir", str(tmp_path / "models"), *extra]


def overrides(tmp_path: Path, *extra: str) -> dict:
    return run_overrides(build_parser().parse_args(run_args(tmp_path, *extra)))


@pytest.mark.parametrize("rule,text,where,says", RULES, ids=[r[0] for r in RULES])
def test_check_config_and_run_refuse_each_rule_before_start(rule, text, where, says, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = cli("check-config", str(f))
    assert r.returncode == 2, r.stdout
    assert f"{f}:{where}:" in r.stderr and says in r.stderr, r.stderr
    r = cli(*run_args(tmp_path, "--config", str(f)))
    assert r.returncode == 3 and says in r.stderr, r.stderr
    assert not (tmp_path / "agent.sock").exists() and not (tmp_path / "state").exists()


def test_a_file_may_rely_on_an_override_and_is_held_to_the_rules_with_it(tmp_path):
    f = tmp_path / "offload.yaml"
    f.write_text("offload:\n  enabled: true\n")  # MQTT comes from the command line
    with pytest.raises(ConfigError, match="offload.enabled needs mqtt.enabled"):
        load_config(f)
    cfg = load_config(f, overrides(tmp_path, "--mqtt", "broker.lan:1883"))
    assert cfg.offload.enabled and cfg.mqtt.enabled and (cfg.mqtt.host, cfg.mqtt.port) == ("broker.lan", 1883)
    assert cfg.server.socket == tmp_path / "agent.sock" and cfg.paths.outbox_dir == tmp_path / "state" / "outbox"
    # --no-mqtt turns offloading off with it: what used to run with a warning still runs.
    f.write_text("mqtt:\n  enabled: true\noffload:\n  enabled: true\n")
    cfg = load_config(f, overrides(tmp_path, "--no-mqtt"))
    assert not cfg.mqtt.enabled and not cfg.offload.enabled


@pytest.mark.parametrize("text,extra,named,says", [
    ("mode: companion\nmqtt:\n  protocol: '3.1.1'\n", ("--mqtt", "127.0.0.1:1883"),
     "mqtt.enabled=True", 'mode companion with mqtt.enabled needs mqtt.protocol "5"'),
    ("", ("--tcp", "0.0.0.0:8123"),
     "server.tcp.host=0.0.0.0, server.tcp.port=8123, server.tcp.enabled=True", "'0.0.0.0' is not loopback"),
    ("", ("--device-id", "unit/7"), "device_id=unit/7", "must be non-empty and contain none of / + #"),
], ids=["companion-3.1.1+--mqtt", "--tcp-beyond-loopback", "--device-id"])
def test_run_names_the_override_that_breaks_a_rule(text, extra, named, says, tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text(text)
    assert load_config(f).mode in ("edge", "companion")  # the file alone is fine
    r = cli(*run_args(tmp_path, "--config", str(f), *extra))
    assert r.returncode == 3, r.stderr
    assert f"command-line override {named}: " in r.stderr and says in r.stderr, r.stderr
    assert "Value error" not in r.stderr
    assert not (tmp_path / "agent.sock").exists()


def test_the_shipped_configs_meet_every_rule():
    for f in (REPO / "config.yaml", REPO / "systemd" / "companion.yaml"):
        r = cli("check-config", str(f))
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("prefix", ["edge/#", "edge/+", "$share/g/edge", "a//b", "", "x\x00y"])
def test_an_mqtt_prefix_that_is_no_topic_is_refused(prefix):
    """A wildcard in mqtt.prefix passed before and put one into the default
    response topic (every answer to it failed to publish)."""
    from pydantic import ValidationError

    from edge_agent.config import MqttConfig

    with pytest.raises(ValidationError, match="prefix"):
        MqttConfig(prefix=prefix)


def test_an_mqtt_prefix_of_several_levels_and_a_group_of_one_are_taken():
    from pydantic import ValidationError

    from edge_agent.config import MqttConfig

    assert MqttConfig(prefix="/site/a/", group="lab").prefix == "site/a"
    with pytest.raises(ValidationError, match="group"):
        MqttConfig(group="a/b")


def test_deprecated_pause_after_timeout_maps_to_a_one_failure_breaker():
    from edge_agent.config import OffloadConfig

    assert OffloadConfig().breaker.model_dump() == {"failures": 5, "window_s": 60.0, "open_s": 30.0}
    old = OffloadConfig(pause_after_timeout_s=12)
    assert (old.breaker.failures, old.breaker.open_s) == (1, 12)
    assert OffloadConfig(pause_after_timeout_s=0).breaker.failures == 0  # never paused: never opens
    both = OffloadConfig(pause_after_timeout_s=12, breaker={"failures": 4})
    assert (both.breaker.failures, both.breaker.open_s) == (4, 30.0)  # the new section wins
