"""Fixtures for the MQTT transport tests: a real mosquitto, a real ORT model, the transport."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

from brokers import Mosquitto
from edge_agent.config import MqttConfig
from edge_agent.transports.mqtt import MqttTransport
from edge_agent.transports.mqtt.client import MqttInferClient
from mqtt_helpers import DEVICE
from tiny_service import TinyService, build_model


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
