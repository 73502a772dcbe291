"""scripts/soak.py for seconds instead of minutes, so it cannot rot: against a
running daemon (found by its socket) with MQTT through a real mosquitto, and
with a bound that must fail, so its verdict is seen to work both ways.
The 10-minute run is by hand (docs/BENCHMARKS.md, "Soak")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from brokers import Mosquitto
from daemon_proc import REPO, copy_digits

pytestmark = pytest.mark.timeout(180)

SOAK = [sys.executable, str(REPO / "scripts" / "soak.py"), "--interval", "2", "--warmup", "2", "--rate", "100",
        "--slow-clients", "2"]


def test_soak_passes_on_a_running_daemon_with_mqtt(agent_factory, tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        agent = agent_factory(config={
            "device_id": "soak-unit",
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": "edge",
                     "rate_limit": {"rate": 1000, "burst": 1000, "total_rate": 1000, "total_burst": 1000}},
        })
        copy_digits(agent.models_dir)
        agent.start()
        r = subprocess.run(SOAK + ["--seconds", "8", "--socket", str(agent.socket), "--mqtt", f"127.0.0.1:{broker.port}",
                                   "--mqtt-rate", "20"], capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        broker.kill()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"daemon pid {agent.proc.pid}" in r.stderr  # found through SO_PEERCRED
    assert "| RSS MiB |" in r.stdout and "(load stopped)" in r.stdout
    for kind in ("infer ", "churn ", "hostile ", "slow ", "mqtt "):
        assert f"[soak] {kind}" in r.stderr, r.stderr
    assert "[soak] hostile  4xx" in r.stderr and "[soak] mqtt     4xx" in r.stderr, r.stderr
    assert "PASS" in r.stderr


def test_soak_starts_its_own_daemon_and_fails_on_growth_beyond_its_bound():
    # RSS "growth" above -10 GB is certain: the bound's verdict must say FAIL and exit 1.
    r = subprocess.run(SOAK + ["--seconds", "5", "--max-rss-mb", "-10000"], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL: RSS grew" in r.stderr and "[soak] infer    ok" in r.stderr, r.stderr
