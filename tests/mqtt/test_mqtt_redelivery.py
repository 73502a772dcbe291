"""Broker redeliveries (DUP) against a real mosquitto: never run twice, always acknowledged,
and answered again from the LRU of recent answers when the broker may have lost the answer."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from mqtt_helpers import body, mqtt_cfg, reconnect, wait_for
from tiny_service import GatedService

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

ROWS = [[1, 2, 3, 4]]


def duplicates() -> float:
    return REGISTRY.get_sample_value("edge_agent_mqtt_messages_total", {"outcome": "duplicate"}) or 0


async def test_redelivery_of_a_running_request_is_acknowledged_with_its_answer(broker, prefix, make_transport, make_client, service):
    gated = GatedService(service)
    t = await make_transport(mqtt_cfg(broker, prefix), svc=gated)
    client = await make_client("5")
    fut = client.send("tiny", body(ROWS), correlation="run-1", qos=1)
    await wait_for(lambda: gated.calls == 1, what="the request running")
    before = duplicates()
    await reconnect(t)
    await wait_for(lambda: duplicates() == before + 1, what="the broker's redelivery")
    assert t._delivery.waiting  # noqa: SLF001 -- the redelivery waits on the run
    gated.gate.set()
    ans = await asyncio.wait_for(fut, 10)
    assert ans.error_code is None
    await asyncio.sleep(0.3)
    assert gated.calls == 1 and client.answers[b"run-1"] == 1
    # The redelivery was acknowledged with the answer: nothing comes back after another cut.
    await reconnect(t)
    await asyncio.sleep(0.5)
    assert duplicates() == before + 1 and gated.calls == 1 and client.answers[b"run-1"] == 1


async def test_redelivery_of_an_answered_request_gets_the_same_answer_not_a_second_run(broker, prefix, make_transport, make_client, service):
    t = await make_transport(mqtt_cfg(broker, prefix))
    client = await make_client("5")
    payloads: list[bytes] = []
    inner = client._bridge._cb_message  # noqa: SLF001
    client._bridge._cb_message = lambda m: (payloads.append(bytes(m.payload)), inner(m))  # noqa: SLF001
    # The request's PUBACK is lost (the broker keeps it unacknowledged), its answer is not:
    # what a broker crash between the two leaves behind.
    real_ack = t._bridge.ack  # noqa: SLF001
    dropped = []
    t._bridge.ack = lambda mid, qos, gen: dropped.append(mid) if not dropped else real_ack(mid, qos, gen)  # noqa: SLF001
    first = await client.infer("tiny", body(ROWS), correlation="ans-1", qos=1, timeout=10)
    await wait_for(lambda: not t._delivery.unconfirmed, what="the answer's PUBACK")  # noqa: SLF001
    t._bridge.ack = real_ack  # noqa: SLF001
    calls, before = service.calls, duplicates()
    await reconnect(t)
    await wait_for(lambda: client.answers[b"ans-1"] == 2, what="the answer sent again")
    await asyncio.sleep(0.3)
    assert service.calls == calls  # not run again
    assert duplicates() == before + 1
    assert payloads == [first.payload, first.payload]
    await reconnect(t)  # and the redelivery was acknowledged
    await asyncio.sleep(0.5)
    assert duplicates() == before + 1 and client.answers[b"ans-1"] == 2


async def test_redelivery_while_the_answer_is_still_queued_is_only_acknowledged(broker, prefix, make_transport, make_client, service):
    # The answer is in paho's hands (unacknowledged) when the connection drops: paho sends it
    # again after the reconnect, so the redelivered request must not add a second copy.
    gated = GatedService(service)
    t = await make_transport(mqtt_cfg(broker, prefix), svc=gated)
    client = await make_client("5", persistent=True, client_id=f"{prefix}-client")
    fut = client.send("tiny", body(ROWS), correlation="q-1", qos=1)
    await wait_for(lambda: gated.calls == 1, what="the request running")
    broker.stop()
    await wait_for(lambda: not t._bridge.connected, what="the transport to see the broker go")  # noqa: SLF001
    gated.gate.set()
    await wait_for(lambda: len(t._delivery.outbox) == 1, what="the answer queued")  # noqa: SLF001
    before = duplicates()
    broker.start()
    await asyncio.wait_for(fut, 20)
    await wait_for(lambda: duplicates() == before + 1, what="the broker's redelivery")
    await asyncio.sleep(0.5)
    assert gated.calls == 1 and client.answers[b"q-1"] == 1


async def test_same_bytes_soon_after_a_reconnect_are_a_redelivery_other_bytes_are_new(
        broker, prefix, make_transport, make_client, service):
    # After kill -9 a broker restored from its file sends again, without DUP, what the file had
    # not recorded as sent, and forwards as new the requests clients re-send to it (both seen in
    # test_mqtt_resilience's sigkill case: 152 runs of 150 requests on DUP alone). So right after
    # a reconnect the same bytes under the same key are taken for a redelivery.
    t = await make_transport(mqtt_cfg(broker, prefix))
    client = await make_client("5")
    await client.infer("tiny", body(ROWS), correlation="same-1", qos=1, timeout=10)
    await wait_for(lambda: not t._delivery.unconfirmed, what="the answer's PUBACK")  # noqa: SLF001
    calls, before = service.calls, duplicates()
    client.send("tiny", body(ROWS), correlation="same-1", qos=1)  # first connection: a new request
    await wait_for(lambda: client.answers[b"same-1"] == 2, what="its answer")
    assert service.calls == calls + 1 and duplicates() == before
    await wait_for(lambda: not t._delivery.unconfirmed, what="the answer's PUBACK")  # noqa: SLF001
    await reconnect(t)
    client.send("tiny", body(ROWS), correlation="same-1", qos=1)  # same bytes, just after a reconnect
    await wait_for(lambda: client.answers[b"same-1"] == 3, what="the remembered answer sent again")
    assert service.calls == calls + 1 and duplicates() == before + 1
    other = client.send("tiny", body([[4, 3, 2, 1]]), correlation="same-1", qos=1)  # other bytes: new
    await asyncio.wait_for(other, 10)
    assert service.calls == calls + 2
