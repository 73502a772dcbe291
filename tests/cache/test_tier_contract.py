"""Every tier keeps the CacheTier contract (cache/tiers.py): the same checks
run over the memory tier, the memo's tier and the SQLite tier (a real file).
A new tier joins TIERS and passes these before ResponseCache uses it."""

from __future__ import annotations

import pytest
from cache_helpers import FakeClock

from edge_agent.cache import CacheTier, Found, MemoryTier, SQLiteTier
from edge_agent.cache.memo import MemoTier

TIERS = {
    "memory": lambda path, clock, max_bytes: MemoryTier(max_bytes, clock=clock),
    "memo": lambda path, clock, max_bytes: MemoTier(max_bytes, clock=clock),
    "disk": lambda path, clock, max_bytes: SQLiteTier(path / "tier.sqlite3", max_bytes, clock=clock),
}
K1, K2 = b"1" * 32, b"2" * 32


@pytest.fixture(params=sorted(TIERS))
def made(request, tmp_path):
    clock = FakeClock()
    tiers = []

    def make(max_bytes: int = 1 << 20):
        tiers.append(TIERS[request.param](tmp_path, clock, max_bytes))
        return tiers[-1]

    yield make, clock
    for t in tiers:
        t.close()


def test_it_is_a_cache_tier_with_a_name(made):
    tier = made[0]()
    assert isinstance(tier, CacheTier) and tier.name in TIERS


def test_what_is_put_is_found_with_its_expiry_until_it_expires(made):
    make, clock = made
    tier = make()
    tier.put(K1, b"value-1", clock() + 10)
    assert tier.flush()
    assert tier.get(K1) == Found(b"value-1", clock() + 10)
    assert tier.get(K2) is None
    clock.advance(11)
    assert tier.get(K1) is None


def test_delete_and_clear_remove(made):
    make, clock = made
    tier = make()
    tier.put(K1, b"value-1", clock() + 10)
    tier.put(K2, b"value-2", clock() + 10)
    tier.delete(K1)
    tier.flush()
    assert tier.get(K1) is None and tier.get(K2).value == b"value-2"
    tier.clear()
    tier.flush()
    assert tier.get(K2) is None


def test_a_value_larger_than_the_bound_is_not_stored(made):
    make, clock = made
    tier = make(max_bytes=1024)
    tier.put(K1, b"x" * 4096, clock() + 10)
    tier.flush()
    assert tier.get(K1) is None


def test_stats_say_what_it_holds(made):
    make, clock = made
    tier = make()
    tier.put(K1, b"value-1", clock() + 10)
    tier.flush()
    s = tier.stats()
    assert s["available"] is True and s["entries"] == 1 and 0 < s["bytes"] <= s["max_bytes"] == 1 << 20
