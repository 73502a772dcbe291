"""OTA commands over MQTT are obeyed only from configured controllers, and the shipped broker ACL
is what makes a controller's name worth anything -- a real mosquitto, with and without that ACL."""

from __future__ import annotations

import asyncio
import logging
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import REGISTRY

from daemon_proc import REPO
from edge_agent.transports.mqtt.bridge import PublishProperties
from edge_agent.transports.mqtt.client import MqttInferClient
from brokers import Mosquitto
from mqtt_helpers import DEVICE, body, mqtt_cfg, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("edge_agent_mqtt_messages_total", {"outcome": outcome}) or 0


def recorder(t) -> list:
    got: list = []
    t.on_ota_command(lambda topic, cmd, source: got.append((topic, cmd, source)))
    return got


async def _in_thread(fn, *args):
    """asyncio.to_thread (3.9+) for the Python 3.8 stack."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_only_configured_controllers_are_obeyed_and_every_refusal_names_who_and_where(
        broker, prefix, make_transport, make_client, caplog):
    t = await make_transport(mqtt_cfg(broker, prefix, controllers=["ops", "fleet-admin"]))
    got = recorder(t)
    v5 = await make_client("5")
    v311 = await make_client("3.1.1")
    own, fleet = f"{prefix}/{DEVICE}/ota", "fleet/default/ota"
    downgrade = b'{"model": "tiny", "version": "1", "force": true}'
    before = count("ota_refused")

    def pub5(topic, payload, controller=None):
        user = [("controller", controller)] if controller is not None else None
        v5._bridge.publish(topic, payload, 1, False, PublishProperties(user=user))  # noqa: SLF001

    v311._bridge.publish(fleet, downgrade, 1)  # anonymous  # noqa: SLF001
    pub5(fleet, downgrade, "mallory")  # unknown identity, MQTT 5
    v311._bridge.publish(own, b'{"model": "tiny", "force": true, "controller": "mallory"}', 1)  # noqa: SLF001
    v311._bridge.publish(own, b'{"model": "tiny", "controller": 42}', 1)  # noqa: SLF001
    # (mosquitto refuses control characters in a user property; JSON carries them.)
    v311._bridge.publish(own, b'{"model": "tiny", "controller": "evil\\nERROR edge_agent.daemon: forged"}', 1)  # noqa: SLF001
    await wait_for(lambda: count("ota_refused") - before == 5, what="five refusals")
    assert got == []  # never reached the agent

    pub5(own, b'{"model": "tiny", "version": "2"}', "ops")
    v311._bridge.publish(fleet, b'{"model": "tiny", "channel": "beta", "controller": "fleet-admin"}', 1)  # noqa: SLF001
    await wait_for(lambda: len(got) == 2, what="the controllers' commands")
    by_topic = {topic: (cmd, source) for topic, cmd, source in got}
    assert by_topic[own] == ({"model": "tiny", "version": "2"}, f"mqtt:ops on {own}")
    # The 3.1.1 identity key is taken out before the agent's parser (which refuses unknown keys).
    assert by_topic[fleet] == ({"model": "tiny", "channel": "beta"}, f"mqtt:fleet-admin on {fleet}")
    assert count("ota_refused") - before == 5

    # (Two connections: their messages may arrive in either order.)
    refusals = sorted(r.getMessage() for r in caplog.records if "refused OTA command" in r.getMessage())
    assert len(refusals) == 5
    assert sum(f"on '{fleet}' from controller None" in r for r in refusals) == 1
    assert sum(f"on '{fleet}' from controller 'mallory'" in r for r in refusals) == 1
    assert sum(f"on '{own}' from controller 'mallory'" in r for r in refusals) == 1
    assert sum(f"on '{own}' from controller 42" in r for r in refusals) == 1
    # Client-chosen strings are escaped: no forged line.
    assert sum("from controller 'evil\\nERROR edge_agent.daemon: forged'" in r for r in refusals) == 1
    assert all("\n" not in r for r in refusals)


async def test_no_controllers_configured_refuses_every_mqtt_ota_command(broker, prefix, make_transport, make_client, caplog):
    t = await make_transport(mqtt_cfg(broker, prefix))
    got = recorder(t)
    c = await make_client("3.1.1")
    before = count("ota_refused")
    c._bridge.publish("fleet/default/ota", b'{"model": "tiny", "force": true, "controller": "ops"}', 1)  # noqa: SLF001
    await wait_for(lambda: count("ota_refused") - before == 1, what="the refusal")
    assert got == [] and "mqtt.controllers is empty" in caplog.text


# --- with the shipped ACL ---------------------------------------------------------------

PASSWORDS = {"unit1": "pw-unit1", "unit2": "pw-unit2", "ota-controller": "pw-ctl", "app": "pw-app"}


@pytest.fixture
def acl_broker(tmp_path):
    acl = REPO / "systemd" / "mosquitto-edge.acl"
    b = Mosquitto(tmp_path / "acl-broker", users=PASSWORDS, extra_conf=f"acl_file {acl}").start()
    yield b
    b.kill()


def paho_publish(broker, user: str, client_id: str, topic: str, payload: bytes, controller: str | None) -> str:
    """Publish QoS 1 as ``user`` (MQTT 5); returns the PUBACK's reason."""
    done = threading.Event()
    reason: list = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.username_pw_set(user, PASSWORDS[user])
    c.on_publish = lambda cl, ud, mid, rc, props: (reason.append(str(rc)), done.set())
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        if controller is not None:
            props.UserProperty = ("controller", controller)
        c.publish(topic, payload, 1, properties=props)
        assert done.wait(10), "no PUBACK"
    finally:
        c.loop_stop()
        c.disconnect()
    return reason[0]


async def test_shipped_acl_lets_only_controller_accounts_command_ota(acl_broker, tmp_path, make_transport, caplog):
    (tmp_path / "pw").write_text(PASSWORDS["unit1"])
    cfg = mqtt_cfg(acl_broker, "edge", username="unit1", password_file=tmp_path / "pw", client_id="edge-agent-unit1",
                   controllers=["ota-controller"])
    t = await make_transport(cfg)
    got = recorder(t)
    await asyncio.sleep(0.3)  # SUBACKs
    cmd = b'{"model": "tiny", "version": "1", "force": true}'
    # Another unit's credentials, even claiming the controller's name, cannot reach the OTA topics.
    for topic in ("edge/unit1/ota", "fleet/default/ota"):
        why = await _in_thread(paho_publish, acl_broker, "unit2", "edge-agent-unit2", topic, cmd, "ota-controller")
        assert why == "Not authorized", (topic, why)
    # Nor can the unit command itself, nor an application.
    assert await _in_thread(paho_publish, acl_broker, "unit1", "u1-other", "edge/unit1/ota", cmd, "ota-controller") == "Not authorized"
    assert await _in_thread(paho_publish, acl_broker, "app", "app-1", "fleet/default/ota", cmd, "ota-controller") == "Not authorized"
    await asyncio.sleep(0.3)
    assert got == []

    # The controller account can, and the unit logs it by name.
    why = await _in_thread(paho_publish, acl_broker, "ota-controller", "ctl-1", "edge/unit1/ota",
                                  b'{"model": "tiny", "version": "2"}', "ota-controller")
    assert why == "Success"
    await wait_for(lambda: len(got) == 1, what="the controller's command")
    assert got[0][2] == "mqtt:ota-controller on edge/unit1/ota"

    # The unit still serves an application under the ACL, whose client may read only its own
    # reply namespace: the rate limit's key (docs/MQTT.md).
    sniffed: list = []
    sniffer = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="app-2", protocol=paho.MQTTv5)
    sniffer.username_pw_set("app", PASSWORDS["app"])
    sniffer.on_message = lambda cl, ud, msg: sniffed.append(msg.topic)
    sniffer.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe([("edge/clients/app-1/replies/#", 1), ("replies/#", 1)])
    sniffer.connect("127.0.0.1", acl_broker.port)
    sniffer.loop_start()
    await asyncio.sleep(0.3)
    app = MqttInferClient("127.0.0.1", acl_broker.port, device=DEVICE, prefix="edge", client_id="app-1",
                          username="app", password=PASSWORDS["app"])
    await app.connect()
    try:
        assert (await app.infer("tiny", body([[1, 2, 3, 4]]), timeout=10)).error_code is None
        await asyncio.sleep(0.3)
    finally:
        await app.close()
        sniffer.loop_stop()
        sniffer.disconnect()
    # mosquitto 2.0 grants the subscription but delivers only what the ACL lets the client read.
    assert sniffed == []


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent")
