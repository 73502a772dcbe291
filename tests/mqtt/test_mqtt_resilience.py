"""Broker restarts, transport restarts and the disk outbox: nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import sqlite3

import numpy as np
import pytest
from prometheus_client import REGISTRY

from mqtt_helpers import body, mqtt_cfg, wait_for
from tiny_service import GatedService, expected

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

FAST = {"rate_limit": {"rate": 10_000, "burst": 10_000}}


def rows_for(i: int) -> list[list[float]]:
    return [[i, i + 1, -i, 0.5]]


def check(ans, i: int) -> None:
    y = np.asarray(ans.doc["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)
    np.testing.assert_allclose(y, expected(rows_for(i)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_broker_restart_mid_stream_every_request_answered_once(broker, prefix, make_transport, make_client, service, hard):
    await make_transport(mqtt_cfg(broker, prefix, **FAST))
    client = await make_client("5", persistent=True, client_id=f"{prefix}-client")
    ok_before = REGISTRY.get_sample_value("edge_agent_mqtt_messages_total", {"outcome": "ok"}) or 0
    futs = {}
    for i in range(150):
        futs[i] = client.send("tiny", body(rows_for(i)), correlation=f"r{i}", qos=1)
        if i == 50:
            broker.restart(hard=hard)  # blocks: requests 51.. are queued in paho until it reconnects
        if i % 10 == 0:
            await asyncio.sleep(0.01)
    if hard:
        # mosquitto acknowledges (PUBACK) a QoS 1 publish before its persistence file
        # holds it: even with autosave_on_changes, a kill -9 can lose a request the
        # client handed over, or an answer the daemon handed over. Neither sender can
        # see that (its leg of QoS 1 is done), so for a broker crash the test allows a
        # few missing answers (about 1 run in 5 on 2026-12-04) while still requiring
        # that nothing ran twice; a clean stop saves first and loses none.
        await asyncio.wait(futs.values(), timeout=20)
        missing = [i for i, f in futs.items() if not f.done()]
        assert len(missing) <= 3, missing
        for f in futs.values():
            f.cancel()
    else:
        await asyncio.wait_for(asyncio.gather(*futs.values()), 60)
        missing = []
    for i, f in futs.items():
        if i not in missing:
            check(f.result(), i)
    await asyncio.sleep(0.5)  # let any stray duplicate arrive before counting
    assert set(client.answers) == {f"r{i}".encode() for i in range(150) if i not in missing}
    repeated = {k: n for k, n in client.answers.items() if n != 1}
    # QoS 1 is at least once: an answer the broker had taken but whose PUBACK the
    # restart cut off is published again after it, and the broker forwards both
    # copies (seen for a kill -9 on 2026-11-25 and for a clean stop on 2026-12-04).
    # The request still ran once (service.calls below).
    assert all(n == 2 for n in repeated.values()) and len(repeated) <= 5, repeated
    # Answers the broker re-sent flagged DUP are dropped by the client; the only
    # unmatched answers are the second copies above (none for an unknown correlation).
    assert client.unmatched == len(repeated)
    # Never run twice; after a crash a missing answer is a request or an answer the
    # broker lost, so at most len(missing) requests never arrived.
    assert 150 - len(missing) <= service.calls <= 150
    assert REGISTRY.get_sample_value("edge_agent_mqtt_messages_total", {"outcome": "ok"}) - ok_before == service.calls


async def test_requests_waiting_at_broker_are_served_after_transport_restart(broker, prefix, make_transport, make_client, service, tmp_path):
    cfg = mqtt_cfg(broker, prefix, **FAST)
    t = await make_transport(cfg)
    await t.stop()  # persistent session: the broker now queues for us
    client = await make_client("5")
    futs = [client.send("tiny", body(rows_for(i)), correlation=f"q{i}", qos=1) for i in range(30)]
    await asyncio.sleep(0.3)
    assert not any(f.done() for f in futs)
    await make_transport(cfg)
    for i, ans in enumerate(await asyncio.wait_for(asyncio.gather(*futs), 20)):
        check(ans, i)
    assert service.calls == 30


async def test_outbox_survives_restart_and_flushes_in_order(broker, prefix, make_transport, make_client, service, tmp_path):
    cfg = mqtt_cfg(broker, prefix, **FAST)
    gated = GatedService(service)
    outbox = tmp_path / "outbox-restart"
    t = await make_transport(cfg, svc=gated, outbox_dir=outbox)
    client = await make_client("5", persistent=True, client_id=f"{prefix}-client")
    futs = [client.send("tiny", body(rows_for(i)), correlation=f"o{i}", qos=1) for i in range(20)]
    await wait_for(lambda: gated.calls == 20, what="all requests in the service")
    broker.stop()
    await wait_for(lambda: not t._bridge.connected, what="transport to notice the broker is gone")
    gated.gate.set()
    await wait_for(lambda: len(t._delivery.outbox) == 20, what="answers in the outbox")
    await t.stop(timeout=2)

    db = sqlite3.connect(outbox / "outbox.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'response'").fetchone()[0] == 20
    db.close()

    broker.start()
    t2 = await make_transport(cfg, svc=gated, outbox_dir=outbox)
    done = await asyncio.wait_for(asyncio.gather(*futs), 20)
    for i, ans in enumerate(done):
        check(ans, i)
    # In order, each once, and the redelivered requests were not run again.
    assert list(client.answers) == [f"o{i}".encode() for i in range(20)]
    await asyncio.sleep(0.3)
    assert all(n == 1 for n in client.answers.values())
    assert service.calls == 20
    await wait_for(lambda: len(t2._delivery.outbox) == 0, what="outbox emptied after PUBACKs")


async def test_start_returns_while_broker_down_then_connects(tmp_path, prefix, make_transport, service):
    from brokers import Mosquitto

    b = Mosquitto(tmp_path / "late")
    t = await make_transport(mqtt_cfg(b, prefix), connect=False)
    before = REGISTRY.get_sample_value("edge_agent_mqtt_reconnects_total", {"client": "transport"}) or 0
    await asyncio.sleep(0.5)
    assert not t._bridge.connected
    assert REGISTRY.get_sample_value("edge_agent_mqtt_connected", {"client": "transport"}) == 0
    b.start()
    try:
        await t._bridge.wait_connected(10)
        assert REGISTRY.get_sample_value("edge_agent_mqtt_connected", {"client": "transport"}) == 1
        assert (REGISTRY.get_sample_value("edge_agent_mqtt_reconnects_total", {"client": "transport"}) or 0) > before
    finally:
        await t.stop(timeout=1)
        b.kill()
