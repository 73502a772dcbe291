"""PahoBridge driven by the event loop: no paho thread, keepalive, TLS buffers, packed properties."""

from __future__ import annotations

import asyncio
import threading

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.transports.mqtt.bridge import BrokerSettings, PahoBridge, PublishProperties, TlsSettings
from brokers import Mosquitto
from certs import make_certs
from mqtt_helpers import wait_for

pytestmark = pytest.mark.timeout(60)


def _paho_props(**kw) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


@pytest.mark.parametrize("kw, paho_kw", [
    ({}, {}),
    ({"correlation": b"\x00\x01corr"}, {"CorrelationData": b"\x00\x01corr"}),
    (
        {"correlation": b"c" * 300, "response_topic": "edge/clients/é/replies", "expiry_s": 70000,
         "user": [("Inference-Header-Content-Length", "123"), ("priority", "high")]},
        {"CorrelationData": b"c" * 300, "ResponseTopic": "edge/clients/é/replies", "MessageExpiryInterval": 70000,
         "UserProperty": [("Inference-Header-Content-Length", "123"), ("priority", "high")]},
    ),
])
def test_publish_properties_decode_like_paho_properties(kw, paho_kw):
    packed = PublishProperties(**kw).pack()
    p = Properties(PacketTypes.PUBLISH)
    _, used = p.unpack(packed)
    assert used == len(packed)
    for name, value in paho_kw.items():
        assert getattr(p, name) == value, name
    assert len(packed) == len(_paho_props(**paho_kw).pack())


def _bridge(port: int, cid: str, got: list | None = None, topic: str | None = None, acked: list | None = None, **kw) -> PahoBridge:
    kw.setdefault("persistent", False)
    b = PahoBridge(
        BrokerSettings("127.0.0.1", port, cid, **kw),
        on_connect=lambda sp: b.subscribe([(topic, 1)]) if topic else None,
        on_disconnect=lambda: None,
        on_message=(lambda m: got.append((bytes(m.payload), m.properties))) if got is not None else (lambda m: None),
        on_publish=acked.append if acked is not None else None,
    )
    b.publish_events(acked is not None)
    return b


@pytest.mark.asyncio
async def test_no_paho_thread_and_keepalive_pings_keep_the_session(tmp_path):
    # keepalive 1 s: mosquitto drops a client silent for 1.5 s, so the session only
    # survives 4 idle seconds if loop_misc sends PINGREQs from the event loop.
    with Mosquitto(tmp_path / "b") as broker:
        threads_before = set(threading.enumerate())
        b = _bridge(broker.port, "ka", keepalive_s=1)
        b.start()
        try:
            await b.wait_connected(10)
            new = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
            assert not [n for n in new if "paho" in n], new
            gen = b.generation
            await asyncio.sleep(4)
            assert b.connected and b.generation == gen
        finally:
            await b.stop(2)
        assert not b.connected


@pytest.mark.asyncio
@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
async def test_bursts_and_large_payloads_arrive_whole_and_in_order(tmp_path, use_tls):
    # The broker holds QoS 1 messages for a persistent session and sends them all
    # at once on its return: many packets per read, and payloads larger than a TLS
    # record (16 KiB) and our 64 KiB read buffer. Bytes already read into a buffer
    # never wake the loop again, so this stalls unless the reader drains them.
    certs = make_certs(tmp_path / "pki") if use_tls else None
    tls = TlsSettings(ca_file=certs.ca_cert) if use_tls else None
    topic = "t/bridge/burst"
    with Mosquitto(tmp_path / "b", tls=certs) as broker:
        got: list = []
        acked: list = []
        kw = dict(tls=tls, session_expiry_s=60, persistent=True)
        sub = _bridge(broker.port, "sub", got, topic, **kw)
        pub = _bridge(broker.port, "pub", acked=acked, tls=tls)
        sub.start()
        pub.start()
        try:
            await sub.wait_connected(10)
            await pub.wait_connected(10)
            await asyncio.sleep(0.2)  # SUBACK
            await sub.stop(2)
            big = bytes(range(256)) * 1200  # 300 KiB
            sent = [b"%05d" % i for i in range(400)] + [big, big[:70000]] + [b"tail%d" % i for i in range(50)]
            for i, payload in enumerate(sent):
                pub.publish(topic, payload, 1, properties=PublishProperties(correlation=b"%d" % i))
            await wait_for(lambda: len(acked) >= len(sent), 10, "broker to take all messages")
            sub = _bridge(broker.port, "sub", got, None, **kw)
            sub.start()
            await wait_for(lambda: len(got) >= len(sent), 20, "all messages")
            assert [p for p, _ in got] == sent
            assert [pr.CorrelationData for _, pr in got] == [b"%d" % i for i in range(len(sent))]
        finally:
            await pub.stop(2)
            await sub.stop(2)
