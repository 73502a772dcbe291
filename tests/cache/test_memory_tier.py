from edge_agent.cache import tiers
from edge_agent.cache.tiers import ENTRY_OVERHEAD, MemoryTier

from cache_helpers import FakeClock, metric

KEY = [bytes([i]) * 32 for i in range(20)]
VALUE = b"v" * 1000
ENTRY = 32 + 1000 + ENTRY_OVERHEAD


def test_filling_past_the_bound_evicts_the_least_recently_used():
    clock = FakeClock()
    tier = MemoryTier(max_bytes=5 * ENTRY, clock=clock)
    before = metric("edge_agent_cache_evictions_total", tier="memory", reason="size")
    for k in KEY[:5]:
        tier.put(k, VALUE, clock() + 60)
    assert tier.get(KEY[0]) is not None  # now the most recent
    tier.put(KEY[5], VALUE, clock() + 60)
    tier.put(KEY[6], VALUE, clock() + 60)
    assert tier.get(KEY[1]) is None and tier.get(KEY[2]) is None
    assert all(tier.get(k) is not None for k in (KEY[0], KEY[3], KEY[4], KEY[5], KEY[6]))
    s = tier.stats()
    assert s["entries"] == 5 and s["bytes"] <= 5 * ENTRY
    assert s["evictions"]["size"] == 2
    assert metric("edge_agent_cache_evictions_total", tier="memory", reason="size") - before == 2


def test_expired_entries_are_not_served_and_are_dropped():
    clock = FakeClock()
    tier = MemoryTier(max_bytes=10 * ENTRY, clock=clock)
    tier.put(KEY[0], VALUE, clock() + 10)
    tier.put(KEY[1], VALUE, clock() + 100)
    clock.advance(11)
    assert tier.get(KEY[0]) is None
    assert tier.get(KEY[1]).value == VALUE
    assert tier.stats()["entries"] == 1 and tier.stats()["evictions"]["ttl"] == 1


def test_an_entry_larger_than_the_bound_is_not_stored_and_evicts_nothing():
    tier = MemoryTier(max_bytes=2 * ENTRY)
    tier.put(KEY[0], VALUE, 2e9)
    tier.put(KEY[1], b"x" * (3 * ENTRY), 2e9)
    assert tier.get(KEY[1]) is None and tier.get(KEY[0]) is not None


def test_replacing_a_key_keeps_the_byte_count_right():
    tier = MemoryTier(max_bytes=10 * ENTRY)
    for _ in range(3):
        tier.put(KEY[0], VALUE, 2e9)
    assert tier.stats()["bytes"] == ENTRY
    tier.delete(KEY[0])
    assert tier.stats()["bytes"] == 0 and tier.get(KEY[0]) is None


def test_only_entries_the_bound_pushes_out_are_handed_on():
    clock = FakeClock()
    evicted = []
    tier = MemoryTier(max_bytes=3 * ENTRY, clock=clock, on_evict=lambda k, e: evicted.append((k, e[tiers.VALUE])))
    tier.put(KEY[0], VALUE, clock() + 10)
    tier.put(KEY[1], VALUE, clock() + 100)
    tier.delete(KEY[1])
    clock.advance(11)
    assert tier.get(KEY[0]) is None  # expired: dropped, not handed on
    for k in KEY[2:6]:
        tier.put(k, VALUE, clock() + 100)
    assert evicted == [(KEY[2], VALUE)]


def test_drain_returns_live_entries_most_recent_first_and_empties_the_tier():
    clock = FakeClock()
    tier = MemoryTier(max_bytes=10 * ENTRY, clock=clock)
    tier.put(KEY[0], VALUE, clock() + 100)
    tier.put(KEY[1], VALUE, clock() + 5)
    tier.put(KEY[2], VALUE, clock() + 100)
    tier.get(KEY[0])
    clock.advance(6)
    assert [k for k, _ in tier.drain()] == [KEY[0], KEY[2]]
    assert tier.stats()["entries"] == 0 and tier.stats()["bytes"] == 0
