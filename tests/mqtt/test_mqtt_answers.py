"""Every request is acknowledged and answered where it may be: reply topic rules, the rate-limit
key, and hostile requests the codec or the properties cannot take -- a real mosquitto, a real
MqttTransport over a real ORT model."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from prometheus_client import REGISTRY

from edge_agent.transports.mqtt import inbound as mqtt_module
from edge_agent.transports.mqtt.bridge import PublishProperties
from mqtt_helpers import DEVICE, assert_nothing_left_unacknowledged, body, mqtt_cfg, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

ROWS = [[1, 2, 3, 4]]


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("edge_agent_mqtt_messages_total", {"outcome": outcome}) or 0


async def watch_all(make_client) -> list:
    """A client subscribed to '#': every (topic, payload, correlation) published on the broker."""
    seen: list = []
    w = await make_client("5", reply_topic="#")
    w._bridge._cb_message = lambda m: seen.append(  # noqa: SLF001
        (m.topic, bytes(m.payload), getattr(m.properties, "CorrelationData", None)))
    await asyncio.sleep(0.2)  # SUBACK
    return seen


def send(client, prefix: str, payload: bytes, correlation: bytes | None = None, response_topic: str | None = None,
         user=None, qos: int = 1, model: str = "tiny") -> None:
    props = PublishProperties(correlation=correlation, response_topic=response_topic, user=user)
    client._bridge.publish(f"{prefix}/{DEVICE}/infer/{model}", payload, qos, False, props)  # noqa: SLF001


async def test_refused_reply_topics_are_answered_on_the_default_topic_and_nothing_goes_there(
        broker, prefix, make_transport, make_client, service):
    t = await make_transport(mqtt_cfg(broker, prefix))
    seen = await watch_all(make_client)
    sender = await make_client("5")
    default = f"{prefix}/{DEVICE}/responses"
    refused = {
        "other-device-infer": f"{prefix}/unit2/infer/tiny",
        "own-ota": f"{prefix}/{DEVICE}/ota",
        "own-status": f"{prefix}/{DEVICE}/status",
        "fleet-ota": "fleet/default/ota",
        "long": "replies/" + "x" * 60_000,
        "wildcard": "#",
        "plus": "replies/+",
        "elsewhere": "somewhere/else",
    }
    before = count("reply_topic_refused")
    for name, topic in refused.items():
        send(sender, prefix, orjson.dumps(body(ROWS)), name.encode(), topic)
    # 3.1.1: parameters.reply_to, same rule.
    s311 = await make_client("3.1.1")
    doc = {**body(ROWS), "parameters": {"reply_to": "fleet/default/ota", "id": "v311"}}
    s311._bridge.publish(f"{prefix}/{DEVICE}/infer/tiny", orjson.dumps(doc), 1)  # noqa: SLF001

    def on_default():
        return [(orjson.loads(p), c) for tp, p, c in seen if tp == default]

    await wait_for(lambda: len(on_default()) == len(refused) + 1, what="every refusal answered on the default topic")
    by_corr = {c: d for d, c in on_default()}
    for name in refused:
        d = by_corr[name.encode()]
        assert d["code"] == "reply_topic_refused", d
        assert len(d["error"]) < 400
    assert by_corr[None]["code"] == "reply_topic_refused" and by_corr[None]["id"] == "v311"
    assert count("reply_topic_refused") - before == len(refused) + 1
    assert service.calls == 0  # refused, not run

    # A valid request on an allowed topic still works.
    ok = await sender.infer("tiny", body(ROWS), timeout=10)
    assert ok.error_code is None
    await asyncio.sleep(0.3)
    # Nothing but the daemon's own retained status reached any refused topic.
    for tp, payload, _ in seen:
        if tp in refused.values():
            assert tp == f"{prefix}/{DEVICE}/status" and orjson.loads(payload)["state"] == "online", (tp[:80], payload[:200])
    await assert_nothing_left_unacknowledged(t)


async def test_rotating_client_id_does_not_escape_the_rate_limit(broker, prefix, make_transport, make_client):
    await make_transport(mqtt_cfg(broker, prefix, rate_limit={"rate": 1, "burst": 5}))
    greedy = await make_client("5")
    answers = await asyncio.gather(*(
        greedy.infer("tiny", body(ROWS), user_properties=[("client_id", f"rotated-{i}")], timeout=10) for i in range(12)
    ))
    codes = [a.error_code for a in answers]
    assert codes.count(None) == 5 and codes.count("rate_limited") == 7, codes


async def test_rotating_reply_namespaces_do_not_escape_the_total_limit(broker, prefix, make_transport, make_client):
    """Each client names its own reply namespace (the per-client key): twelve
    namespaces get twelve fresh per-client buckets, but all of them together
    no more than mqtt.rate_limit.total_burst at once."""
    await make_transport(mqtt_cfg(broker, prefix, rate_limit={"rate": 100, "burst": 100, "total_rate": 0.01, "total_burst": 5}))
    clients = [await make_client("5") for _ in range(12)]
    assert len({c.reply_topic for c in clients}) == 12
    answers = await asyncio.gather(*(c.infer("tiny", body(ROWS), timeout=10) for c in clients))
    codes = [a.error_code for a in answers]
    assert codes.count(None) == 5 and codes.count("rate_limited") == 7, codes


async def test_a_victims_client_id_does_not_get_the_victim_limited(broker, prefix, make_transport, make_client):
    await make_transport(mqtt_cfg(broker, prefix, rate_limit={"rate": 1, "burst": 5}))
    victim = await make_client("5")
    attacker = await make_client("5")
    as_victim = [("client_id", victim.client_id), ("client-id", victim.client_id)]
    answers = await asyncio.gather(*(attacker.infer("tiny", body(ROWS), user_properties=as_victim, timeout=10) for _ in range(12)))
    assert [a.error_code for a in answers].count("rate_limited") == 7
    mine = await asyncio.gather(*(victim.infer("tiny", body(ROWS), user_properties=as_victim[:1], timeout=10) for _ in range(5)))
    assert [a.error_code for a in mine] == [None] * 5


def _nested_bytes_body(depth: int) -> bytes:
    """BYTES data nested ``depth`` lists deep (orjson reads up to 1024; the codec recursed)."""
    data = b"[" * depth + b'"x"' + b"]" * depth
    return b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ' + data + b"}]}"


async def test_hostile_requests_each_get_one_coded_answer_and_the_ack(broker, prefix, make_transport, make_client, service, monkeypatch):
    t = await make_transport(mqtt_cfg(broker, prefix, rate_limit={"rate": 10_000, "burst": 10_000}))
    client = await make_client("5")
    good = orjson.dumps(body(ROWS))
    cases = {
        # "²".isdigit() is True, int("²") raises ValueError: no answer before.
        "prio-superscript": (good, [("priority", "²")], "malformed_request"),
        "prio-huge": (good, [("priority", "9" * 5000)], "malformed_request"),
        "timeout-nan": (good, [("timeout_ms", "nan")], "malformed_request"),
        "timeout-inf": (good, [("timeout_ms", "inf")], "malformed_request"),
        "header-length-superscript": (good, [("Inference-Header-Content-Length", "²")], "malformed_request"),
        "deep-bytes": (_nested_bytes_body(1000), None, "invalid_input"),  # the codec bounds nesting (invalid_input)
    }
    for name, (payload, user, _) in cases.items():
        client.send("tiny", payload, correlation=name, user_properties=user)
    answers = {name: client._calls.futures[name.encode()] for name in cases}  # noqa: SLF001
    await wait_for(lambda: all(client.answers[n.encode()] == 1 for n in cases), what="an answer to each")
    await asyncio.sleep(0.2)
    for name, (_, _, code) in cases.items():
        assert client.answers[name.encode()] == 1, name
        assert answers[name].result().error_code == code, (name, answers[name].result().doc)

    # Whatever the codec raises is answered with a code (the codec's own checks are
    # tests/test_codec.py's; here it is made to raise what a bug or exhaustion would).
    for exc, code in ((MemoryError(), "payload_too_large"), (RecursionError("deep"), "malformed_request"),
                      (ValueError("bad"), "malformed_request"), (ZeroDivisionError(), "internal")):
        def boom(*a, _exc=exc, **k):
            raise _exc
        monkeypatch.setattr(mqtt_module, "decode_request", boom)
        ans = await client.infer("tiny", good, timeout=10)
        assert ans.error_code == code, (exc, ans.doc)
    monkeypatch.undo()
    assert (await client.infer("tiny", good, timeout=10)).error_code is None
    await assert_nothing_left_unacknowledged(t)
