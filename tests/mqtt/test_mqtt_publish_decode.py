"""The fast MQTT 5 PUBLISH decoder gives exactly what paho's own decoder gives."""

from __future__ import annotations

import random
import struct

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.transports.mqtt import paho_fast as fast

# paho-mqtt 2.1.0 (the Python 3.8 / JetPack 5 stack) has no _packet and so no
# decoder to compare with; test_mqtt_publish_decode_fallback.py covers that case.
pytest.importorskip("paho.mqtt._packet", reason="paho-mqtt < 2.2 has no paho.mqtt._packet")

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311
paho_decode = fast._PAHO_DECODE


def publish_body(topic: bytes, qos: int, props: bytes | None, payload: bytes, mid: int = 7) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if props is not None:
        body += props
    return body + payload


def props_of(**attrs) -> bytes:
    p = Properties(PacketTypes.PUBLISH)
    for k, v in attrs.items():
        setattr(p, k, v)
    return p.pack()


def outcome(decoder, header: int, packet, protocol):
    try:
        r = decoder(header, packet, protocol)
    except Exception as e:  # noqa: BLE001 - the exception type is what is compared
        return ("raises", type(e).__name__)
    props = None
    if r.properties is not None:
        props = {k: v for k, v in vars(r.properties).items() if k not in ("packetType", "types", "names", "properties")}
        assert type(r.properties) is Properties
        assert r.properties.isEmpty() == (not props)
    return (r.dup, r.qos, r.retain, bytes(r.topic), r.mid, props, bytes(r.payload))


CASES = [
    {},
    {"ResponseTopic": "clients/c1/replies", "CorrelationData": b"\x00\x01\xff"},
    {"ResponseTopic": "r", "CorrelationData": b"", "MessageExpiryInterval": 30, "PayloadFormatIndicator": 1,
     "ContentType": "application/json", "UserProperty": [("priority", "high"), ("timeout_ms", "250"), ("priority", "x")]},
    {"TopicAlias": 3, "SubscriptionIdentifier": [5, 300000]},
    {"UserProperty": [("ünï", "cødé ✓")]},
]


@pytest.mark.parametrize("attrs", CASES)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_same_result_as_paho(attrs, qos, monkeypatch):
    packet = publish_body(b"edge/unit1/infer/digits", qos, props_of(**attrs), b'{"inputs": []}')
    header = 0x30 | (qos << 1) | 0x08 | 0x01
    want = outcome(paho_decode, header, packet, V5)

    def not_here(*a):
        raise AssertionError("a plain PUBLISH must not need paho's decoder")

    monkeypatch.setattr(fast, "_PAHO_DECODE", not_here)
    got = outcome(fast.decode_publish, header, packet, V5)
    assert got == want
    assert got[0] is True and got[2] is True and got[4] == (7 if qos else 0)
    assert got[5] == {k: v for k, v in attrs.items()}


def test_mqtt311_goes_to_paho():
    packet = publish_body(b"a/b", 1, None, b"x")
    assert outcome(fast.decode_publish, 0x32, packet, V311) == outcome(paho_decode, 0x32, packet, V311)


@pytest.mark.parametrize("props", [
    b"\x03\x11\x00\x00",                       # Session Expiry: not a PUBLISH property
    b"\x05\x23\x00\x00\x23\x00",               # Topic Alias 0 (refused) ...
    b"\x06\x02\x00\x00\x00\x01\x02",           # Message Expiry truncated
    b"\x0a\x08\x00\x03a\x00b\x08\x00\x01c",    # Response Topic with a NUL, then given twice
    b"\x04\x08\x00\x02\xc3\x28",               # Response Topic not UTF-8
    b"\x07\x08\x00\x01a\x08\x00\x01b",         # Response Topic given twice
    b"\x02\x01\x02",                           # Payload Format Indicator 2
    b"\x80\x80\x80\x80\x01",                   # property length VBI too long
    b"\x10\x09\x00\x20abc",                    # Correlation Data longer than the properties
])
def test_irregular_packets_end_as_paho_ends_them(props):
    packet = publish_body(b"t", 1, props, b"payload")
    assert outcome(fast.decode_publish, 0x32, packet, V5) == outcome(paho_decode, 0x32, packet, V5)


def test_random_mutations_agree_with_paho():
    rng = random.Random(1234)
    base = publish_body(b"edge/u/infer/m/2", 1, props_of(**CASES[2]), b'{"inputs": [1, 2, 3]}')
    agree = 0
    for _ in range(3000):
        pkt = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            i = rng.randrange(len(pkt) or 1)
            if op < 0.6 and pkt:
                pkt[i] = rng.randrange(256)
            elif op < 0.8:
                del pkt[i:]
            else:
                pkt.insert(i, rng.randrange(256))
        header = 0x30 | (rng.randint(0, 2) << 1)
        assert outcome(fast.decode_publish, header, bytes(pkt), V5) == outcome(paho_decode, header, bytes(pkt), V5), bytes(pkt)
        agree += 1
    assert agree == 3000


def test_installed_for_the_daemon_client():
    from paho.mqtt import _packet

    import edge_agent.transports.mqtt.bridge  # noqa: F401 - importing the bridge installs the decoder

    assert _packet.decode_publish is fast.decode_publish
