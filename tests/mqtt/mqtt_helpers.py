"""What the MQTT transport tests share besides fixtures (those are conftest.py's): the
device name, a request body, an ``MqttConfig`` for a test broker, waiting on the loop,
cutting the connection, and the at-least-once check that nothing was left unacknowledged."""

from __future__ import annotations

import asyncio
import time

from brokers import Mosquitto
from edge_agent.config import MqttConfig

DEVICE = "unit1"


def body(rows) -> dict:
    rows = [list(map(float, r)) for r in rows]
    return {"inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]}


def mqtt_cfg(broker: Mosquitto, prefix: str, **kw) -> MqttConfig:
    base = dict(
        enabled=True, host="127.0.0.1", port=broker.port, prefix=prefix, reconnect_min_s=0.1,
        reconnect_max_s=0.5, keepalive_s=5, client_id=f"edge-agent-{prefix}",
    )
    base.update(kw)
    return MqttConfig(**base)


async def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def reconnect(t) -> None:
    """Cut the transport's connection: the broker redelivers what it did not acknowledge, flagged DUP."""
    gen = t._bridge.generation  # noqa: SLF001
    t._bridge._drop_connection()  # noqa: SLF001
    await wait_for(lambda: t._bridge.connected and t._bridge.generation > gen, what="reconnect")  # noqa: SLF001


async def assert_nothing_left_unacknowledged(t) -> None:
    """Drop the transport's connection: the broker redelivers whatever it did not acknowledge."""
    got: list = []
    inner = t._bridge._cb_message  # noqa: SLF001
    t._bridge._cb_message = lambda m: (got.append(m.topic), inner(m))  # noqa: SLF001
    await reconnect(t)
    await asyncio.sleep(0.5)
    t._bridge._cb_message = inner  # noqa: SLF001
    assert got == [], f"{len(got)} messages were never acknowledged"
