"""kill -9 of a process serving MQTT: the Last Will marks it offline; on return it is online."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import orjson
import pytest

import tiny_service
from daemon_proc import REPO
from edge_agent.transports.mqtt.bridge import BrokerSettings, PahoBridge
from mqtt_helpers import DEVICE

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def spawn(tiny_model, broker, prefix, outbox) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, tiny_service.__file__, str(tiny_model), "127.0.0.1", str(broker.port), prefix, DEVICE, str(outbox)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    # Lines before "serving" are the service's start-up warnings (on the Python 3.8
    # stack: paho-mqtt 2.1.0 without the fast decoder, cryptography's 3.8 notice).
    before = []
    for _ in range(50):
        line = p.stdout.readline().strip()
        if line == b"serving" or not line:
            break
        before.append(line)
    assert line == b"serving", before
    return p


async def test_kill9_last_will_then_online(broker, prefix, tiny_model, tmp_path):
    states: asyncio.Queue = asyncio.Queue()
    status_topic = f"{prefix}/{DEVICE}/status"

    def on_message(msg):
        if msg.topic == status_topic:
            states.put_nowait(orjson.loads(msg.payload)["state"])

    watcher = PahoBridge(
        BrokerSettings("127.0.0.1", broker.port, f"{prefix}-watch", persistent=False),
        on_connect=lambda sp: watcher.subscribe([(status_topic, 1)]), on_disconnect=lambda: None, on_message=on_message,
    )
    watcher.start()
    await watcher.wait_connected(10)

    async def next_state() -> str:
        return await asyncio.wait_for(states.get(), 20)

    proc = spawn(tiny_model, broker, prefix, tmp_path / "outbox")
    try:
        assert await next_state() == "online"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # keepalive is 5 s: the broker notices within 1.5x that and publishes the will.
        assert await next_state() == "offline"
        proc = spawn(tiny_model, broker, prefix, tmp_path / "outbox")
        assert await next_state() == "online"
        proc.send_signal(signal.SIGTERM)  # a clean stop says offline too, without the will
        assert proc.wait(10) == 0
        assert await next_state() == "offline"
    finally:
        if proc.poll() is None:
            proc.kill()
        await watcher.stop(1)
