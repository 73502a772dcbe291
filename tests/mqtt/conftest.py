"""Fixtures for the MQTT transport tests: a real mosquitto, a real ORT model, the transport."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge_agent.config import MqttConfig  # noqa: E402
from edge_agent.transports.mqtt import MqttTransport  # noqa: E402
from edge_agent.transports.mqtt.client import MqttInferClient  # noqa: E402
from brokers import Mosquitto  # noqa: E402
from tests.mqtt.tiny_service import TinyService, build_model  # noqa: E402

DEVICE = "unit1"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture
def service(tiny_model) -> TinyService:
    return TinyService(tiny_model)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker", persistence=True).start()
    yield b
    b.kill()


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


@pytest_asyncio.fixture
async def make_transport(tmp_path, service):
    """make_transport(cfg, service=None, outbox_dir=None) -> started MqttTransport (stopped at teardown)."""
    made = []

    async def make(cfg: MqttConfig, svc=None, outbox_dir: Path | None = None, connect: bool = True) -> MqttTransport:
        svc = svc or service
        t = MqttTransport(cfg, DEVICE, svc, outbox_dir or tmp_path / "outbox", svc.info, "0.0-test")
        await t.start()
        made.append(t)
        if connect:
            await t._bridge.wait_connected(10)
        return t

    yield make
    for t in made:
        if not t._stopping:
            await t.stop(timeout=2)


@pytest_asyncio.fixture
async def make_client(broker, prefix):
    made = []

    async def make(protocol: str = "5", **kw) -> MqttInferClient:
        kw.setdefault("host", "127.0.0.1")
        kw.setdefault("port", broker.port)
        host, port = kw.pop("host"), kw.pop("port")
        c = MqttInferClient(host, port, device=DEVICE, prefix=prefix, protocol=protocol, **kw)
        made.append(c)
        await c.connect()
        return c

    yield make
    for c in made:
        await c.close()


@pytest.fixture(autouse=True)
def _quiet_paho(caplog):
    caplog.set_level(logging.INFO, logger="edge_agent")
