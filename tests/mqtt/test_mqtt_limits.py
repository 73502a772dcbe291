"""Rate limit, payload limit, and a flood of garbage that must not starve valid requests."""

from __future__ import annotations

import asyncio
import os

import pytest
from prometheus_client import REGISTRY

from mqtt_helpers import DEVICE, body, mqtt_cfg

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("edge_agent_mqtt_messages_total", {"outcome": outcome}) or 0


async def test_rate_limit_per_client(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix, rate_limit={"rate": 1, "burst": 5}))
    greedy = await make_client("5")
    before = count("rate_limited")
    answers = await asyncio.gather(*(greedy.infer("tiny", body([[1, 2, 3, 4]]), timeout=10) for _ in range(12)))
    codes = [a.error_code for a in answers]
    assert codes.count(None) == 5 and codes.count("rate_limited") == 7
    assert count("rate_limited") - before == 7
    # Another client (its own bucket, keyed by its reply namespace {prefix}/clients/{id}) is unaffected.
    polite = await make_client("5")
    ans = await polite.infer("tiny", body([[1, 2, 3, 4]]), timeout=10)
    assert ans.error_code is None


async def test_payload_limit(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix, max_payload_bytes=2048))
    for protocol in ("5", "3.1.1"):
        client = await make_client(protocol)
        big = body([[1, 2, 3, 4]] * 200)
        before = count("too_large")
        if protocol == "5":
            ans = await client.infer("tiny", big, timeout=10)
            assert ans.error_code == "payload_too_large" and "2048" in ans.doc["error"]
        else:
            # 3.1.1 keeps its reply path in the body, which is not read when too large:
            # the error goes to the default response topic, and is counted either way.
            client.send("tiny", big)
            await asyncio.sleep(0.3)
        assert count("too_large") - before == 1
    assert service.calls == 0


async def test_garbage_flood_does_not_stop_valid_requests(broker, prefix, make_transport, make_client, service):
    await make_transport(mqtt_cfg(broker, prefix, rate_limit={"rate": 10_000, "burst": 10_000}))
    attacker = await make_client("3.1.1")
    good = await make_client("5")
    before = count("malformed")
    topic = f"{prefix}/{DEVICE}/infer/tiny"
    junk = [os.urandom(64), b"{", b"[]", b'{"inputs": 5}', b'{"inputs": [{"name": "x"}]}', b"\xff\xfe" * 40]
    garbage_tasks = []
    for i in range(600):
        attacker._bridge.publish(topic, junk[i % len(junk)], i % 2)
        if i % 50 == 0:
            garbage_tasks.append(good.infer("tiny", body([[i, 0, 0, 0]]), timeout=20))
            await asyncio.sleep(0)
    answers = await asyncio.gather(*garbage_tasks)
    assert all(a.error_code is None for a in answers)
    assert len(answers) == 12
    # Garbage is counted (and answered on the default topic), not silently eaten.
    for _ in range(100):
        if count("malformed") - before >= 600:
            break
        await asyncio.sleep(0.05)
    assert count("malformed") - before == 600
