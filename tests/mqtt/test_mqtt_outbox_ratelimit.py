"""The outbox's bounds and order, and the token bucket, on real SQLite files and a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from edge_agent.transports.mqtt.client import parse_hostport
from edge_agent.transports.mqtt.outbox import KIND_RESPONSE, KIND_TELEMETRY, Outbox, OutMessage
from edge_agent.transports.mqtt.ratelimit import TokenBuckets


def msg(i: int, kind=KIND_RESPONSE, size=100, expires=None) -> OutMessage:
    return OutMessage(f"t/{i}", bytes([i % 256]) * size, 1, kind=kind, expires=expires, props={"correlation": f"{i:04x}"}, dedup=f"k{i}")


def dropped(kind, reason) -> float:
    return REGISTRY.get_sample_value("edge_agent_mqtt_outbox_dropped_total", {"kind": kind, "reason": reason}) or 0


def test_survives_reopen_in_order(tmp_path):
    ob = Outbox(tmp_path, max_bytes=10_000, max_age_s=60)
    for i in range(5):
        assert ob.put(msg(i), now=1000)
    ob.remove(ob.peek(0, 1, now=1000)[0].seq)
    ob.close()
    ob = Outbox(tmp_path, max_bytes=10_000, max_age_s=60)
    got = ob.peek(0, 100, now=1001)
    assert [m.topic for m in got] == ["t/1", "t/2", "t/3", "t/4"]
    assert got[0].payload == bytes([1]) * 100 and got[0].props == {"correlation": "0001"}
    assert ob.dedup_keys() == ["k1", "k2", "k3", "k4"]
    assert len(ob) == 4 and ob.nbytes == 4 * (100 + 3)


def test_telemetry_dropped_before_responses_and_full_refuses(tmp_path):
    ob = Outbox(tmp_path, max_bytes=5 * 103, max_age_s=60)
    ob.put(msg(0, KIND_TELEMETRY), now=0)
    ob.put(msg(1), now=0)
    ob.put(msg(2, KIND_TELEMETRY), now=0)
    ob.put(msg(3), now=0)
    ob.put(msg(4), now=0)
    before = dropped(KIND_TELEMETRY, "full")
    assert ob.put(msg(5), now=1)  # evicts the oldest telemetry
    assert dropped(KIND_TELEMETRY, "full") - before == 1
    assert [m.topic for m in ob.peek(0, 10, now=1)] == ["t/1", "t/2", "t/3", "t/4", "t/5"]
    assert ob.put(msg(6), now=1)  # evicts the other telemetry
    # Only unexpired responses left: the newcomer is refused, nothing already queued is lost.
    before = dropped(KIND_RESPONSE, "full")
    assert not ob.put(msg(7), now=1)
    assert dropped(KIND_RESPONSE, "full") - before == 1
    assert [m.topic for m in ob.peek(0, 10, now=1)] == ["t/1", "t/3", "t/4", "t/5", "t/6"]


def test_responses_dropped_only_past_expiry(tmp_path):
    ob = Outbox(tmp_path, max_bytes=3 * 103, max_age_s=100)
    ob.put(msg(0, expires=10), now=0)  # request said: worthless after 10 s
    ob.put(msg(1), now=0)  # expires at max_age (100)
    ob.put(msg(2), now=0)
    assert not ob.put(msg(3), now=5)  # full, nothing expired yet
    assert ob.put(msg(4), now=11)  # msg 0 expired: its room is reused
    assert [m.topic for m in ob.peek(0, 10, now=11)] == ["t/1", "t/2", "t/4"]
    assert ob.peek(0, 10, now=200) == []  # past max age: never sent
    ob.expire(now=200)
    assert len(ob) == 0 and ob.nbytes == 0


def test_token_bucket():
    now = [0.0]
    tb = TokenBuckets(rate=2, burst=3, max_clients=2, clock=lambda: now[0])
    assert [tb.allow("a") for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert tb.allow("a") and not tb.allow("a")
    assert tb.allow("b")
    tb.allow("c")  # evicts the least recently seen ("a")
    assert len(tb) == 2
    assert tb.allow("a")  # starts again with a full bucket


def test_token_bucket_total_bounds_all_keys_together():
    now = [0.0]
    tb = TokenBuckets(rate=10, burst=10, clock=lambda: now[0], total_rate=1, total_burst=3)
    assert [tb.allow(f"k{i}") for i in range(5)] == [True, True, True, False, False]
    now[0] = 1.0  # one total token back
    assert tb.allow("k9") and not tb.allow("k10")
    # A request the total refused cost its own key nothing.
    tb2 = TokenBuckets(rate=0.001, burst=1, clock=lambda: now[0], total_rate=0.001, total_burst=1)
    assert tb2.allow("a") and not tb2.allow("b")
    now[0] += 1.0  # the total refills (1e-3 tokens: still short), "b" is still full
    tb2.total_rate = 1.0
    assert tb2.allow("b")


def test_parse_hostport():
    assert parse_hostport("broker.local:8883") == ("broker.local", 8883)
    assert parse_hostport("broker") == ("broker", 1883)
    assert parse_hostport("[::1]:1884") == ("::1", 1884)
    with pytest.raises(ValueError):
        parse_hostport("host:abc")
