"""The shipped fleet ACL (systemd/mosquitto-fleet.acl) on a real mosquitto: a unit's
credentials cannot command another unit, itself or the fleet, nor forge another unit's
outcome or a rollout record; the controller account can; a real daemon serves under it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest

from brokers import MOSQUITTO_PASSWD, Mosquitto
from daemon_proc import REPO, copy_digits

pytestmark = pytest.mark.timeout(120)

ACL = REPO / "systemd" / "mosquitto-fleet.acl"
EXAMPLE = REPO / "systemd" / "mosquitto-fleet.passwd.example"


def example_passwords() -> dict:
    return dict(line.split(":", 1) for line in EXAMPLE.read_text().split())


class Account:
    """One MQTT 5 connection under a username; publishes report the broker's PUBACK reason."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.got: list = []
        self._acks: dict = {}
        self._cv = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}",
                             protocol=paho.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda cl, ud, msg: self.got.append((msg.topic, bytes(msg.payload)))
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        with self._cv:
            self._acks[mid] = str(reason)
            self._cv.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> str:
        mid = self.c.publish(topic, payload, 1, retain).mid
        with self._cv:
            assert self._cv.wait_for(lambda: mid in self._acks, 10), "no PUBACK"
            return self._acks.pop(mid)

    def subscribe(self, *topics: str) -> None:
        for t in topics:
            self.c.subscribe(t, qos=1)
        time.sleep(0.3)  # SUBACKs

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def acl_broker(tmp_path):
    """mosquitto with the shipped ACL and the shipped example password file, hashed as documented."""
    pw = tmp_path / "fleet.passwd"
    shutil.copy(EXAMPLE, pw)
    subprocess.run([MOSQUITTO_PASSWD, "-U", str(pw)], check=True, capture_output=True)
    b = Mosquitto(tmp_path / "broker", extra_conf=f"allow_anonymous false\npassword_file {pw}\nacl_file {ACL}")
    b.conf_path.write_text(b.conf_path.read_text().replace("allow_anonymous true\n", ""))
    b.start()
    yield b
    b.kill()


def test_a_units_credentials_cannot_command_or_impersonate_and_the_controller_can(acl_broker):
    pw = example_passwords()
    ctl = Account(acl_broker.port, "fleet-controller", pw["fleet-controller"])
    u1 = Account(acl_broker.port, "unit-0001", pw["unit-0001"])
    u2 = Account(acl_broker.port, "unit-0002", pw["unit-0002"])
    try:
        u2.subscribe("edge/unit-0002/ota", "fleet/+/ota")
        ctl.subscribe("edge/+/status", "edge/+/ota/state", "fleet/+/rollouts/#")
        cmd = json.dumps({"model": "digits", "version": "9", "force": True, "controller": "fleet-controller"}).encode()
        # A unit's credentials, even claiming the controller's identity: refused at the broker.
        for topic in ("edge/unit-0002/ota", "edge/unit-0001/ota", "fleet/lab/ota", "fleet/default/ota",
                      "edge/unit-0002/ota/state", "edge/unit-0002/status", "fleet/lab/rollouts/r1",
                      "fleet/lab/rollouts/r1/control"):
            assert u1.publish(topic, cmd) == "Not authorized", topic
        # Nor can it read another unit's commands.
        u1.subscribe("edge/unit-0002/ota", "edge/unit-0002/infer/#")
        # The controller account commands one unit; only that unit hears it.
        assert ctl.publish("edge/unit-0002/ota", cmd) == "Success"
        assert ctl.publish("fleet/lab/rollouts/r1", b'{"id": "r1"}', retain=True) == "Success"
        # A unit writes its own status and OTA state, which the controller reads.
        assert u1.publish("edge/unit-0001/status", b'{"state": "online"}') == "Success"
        assert u1.publish("edge/unit-0001/ota/state", b'{"models": {}}') == "Success"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (len(u2.got) < 1 or len(ctl.got) < 3):
            time.sleep(0.05)
        time.sleep(0.3)
        assert u2.got == [("edge/unit-0002/ota", cmd)]  # exactly the controller's command
        assert sorted(t for t, _ in ctl.got) == ["edge/unit-0001/ota/state", "edge/unit-0001/status",
                                                 "fleet/lab/rollouts/r1"]
        assert u1.got == []
    finally:
        for a in (ctl, u1, u2):
            a.close()


def test_a_daemon_serves_under_the_acl_and_the_fleet_cli_sees_it(acl_broker, agent_factory, tmp_path):
    pw = example_passwords()
    (tmp_path / "unit.pw").write_text(pw["unit-0001"])
    (tmp_path / "ctl.pw").write_text(pw["fleet-controller"])
    a = agent_factory(config={"device_id": "unit-0001", "mqtt": {
        "enabled": True, "host": "127.0.0.1", "port": acl_broker.port, "username": "unit-0001",
        "password_file": str(tmp_path / "unit.pw"), "controllers": ["fleet-controller"],
        "labels": {"site": "lab"}}})
    copy_digits(a.models_dir)
    a.start()
    p = subprocess.run([sys.executable, "-m", "edge_agent.cli", "fleet", "units", "--json", "--mqtt",
                        f"127.0.0.1:{acl_broker.port}", "--username", "fleet-controller", "--password-file",
                        str(tmp_path / "ctl.pw"), "--settle", "0.5"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    units = json.loads(p.stdout)["units"]
    assert [(u["device"], u["online"], u["labels"]) for u in units] == [("unit-0001", True, {"site": "lab"})]
    assert "Not authorized" not in a.log() and "refused" not in a.log()
