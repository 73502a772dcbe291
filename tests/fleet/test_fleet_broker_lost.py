"""A controller that loses its broker mid-rollout stops (fail-stop) with the record saved, rather
than going on deciding timeouts, halts and rollbacks on what it no longer hears and having paho
replay its queued commands over a record another controller may have taken meanwhile (hostile
review). `fleet resume` continues from the saved record."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import paho.mqtt.client as mqtt

from brokers import Mosquitto
from daemon_proc import REPO

UNITS = {f"u{i}": {"state": "online", "device": f"u{i}", "group": "lab", "labels": {},
                   "models": [{"name": "digits", "version": "1", "default": True}]} for i in range(3)}


def test_a_lost_broker_stops_the_controller_with_the_record_saved(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for dev, doc in UNITS.items():  # the units' retained status, as daemons publish it
            pub.publish(f"edge/{dev}/status", json.dumps(doc), qos=1, retain=True).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        state = tmp_path / "fleet"
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "fleet", "rollout", "digits", "2", "--mqtt", f"127.0.0.1:{broker.port}",
             "--group", "lab", "--state-dir", str(state), "--settle", "0.5", "--waves", "1,100%", "--wave-timeout", "10m",
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, text=True)
        try:
            deadline = time.monotonic() + 60
            while not list(state.glob("*.json")) and time.monotonic() < deadline:  # wave 1 commanded, record saved
                time.sleep(0.1)
            assert list(state.glob("*.json")), proc.stderr.read() if proc.poll() is not None else "no record"
            time.sleep(1.0)
            broker.kill()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "broker_lost" in err and "fleet resume" in err
    rec = json.loads(next(state.glob("*.json")).read_text())
    assert rec["state"] == "running" and rec["lease"] is not None  # kept: a second controller waits for it
    assert sum(1 for u in rec["units"].values() if u.get("commanded_at")) == 1  # wave 1 only, nothing after
