"""The disk tier's key filter (never a false negative, few false positives) and the doorkeeper."""

import hashlib
import sqlite3

import numpy as np

from edge_agent.cache.keyfilter import Doorkeeper, KeyFilter
from edge_agent.cache.response_cache import DB_NAME, ResponseCache


def digest(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32).digest()


def out(i: int) -> dict:
    return {"y": np.full(4, i, np.float32)}


def test_every_added_key_is_found_and_few_others_are():
    f = KeyFilter(20_000)
    for i in range(20_000):
        f.add(digest(i))
    assert all(digest(i) in f for i in range(20_000))
    false_positives = sum(digest(i) in f for i in range(20_000, 60_000))
    assert false_positives < 0.02 * 40_000


def test_a_built_filter_is_the_same_as_one_filled_key_by_key():
    keys = [digest(i) for i in range(5000)]
    built = KeyFilter.build(keys, 5000)
    filled = KeyFilter(built.capacity)
    for key in keys:
        filled.add(key)
    assert built._array == filled._array and all(key in built for key in keys)


def test_a_key_that_is_not_a_digest_is_always_looked_up():
    f = KeyFilter(100)
    assert b"short" in f and bytes(33) in f


def disk_only(path) -> ResponseCache:
    return ResponseCache(path, 0, 1 << 20, 3600.0)


def test_a_miss_skips_sqlite_and_a_stored_key_is_still_found_after_a_restart(tmp_path):
    cache = disk_only(tmp_path)
    for i in range(50):
        cache.put(digest(i), out(i))
    cache.flush()
    assert all(cache.get(digest(i)) is not None for i in range(50))
    assert all(cache.get(digest(i)) is None for i in range(1000, 1200))
    assert cache.stats()["tiers"]["disk"]["filter"]["filtered"] >= 190
    cache.close()

    cache = disk_only(tmp_path)  # the writer builds the filter from the stored keys
    cache.flush()
    assert cache.stats()["tiers"]["disk"]["filter"] is not None
    assert all(cache.get(digest(i))["y"][0] == i for i in range(50))
    cache.close()


def test_keys_written_behind_the_filters_back_are_found_after_a_restart(tmp_path):
    cache = disk_only(tmp_path)
    cache.put(digest(1), out(1))
    cache.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:  # e.g. a copy from another unit
        row = conn.execute("SELECT size, expires_at, last_access, value FROM entries").fetchone()
        conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", (digest(2), *row))
    cache = disk_only(tmp_path)
    assert cache.get(digest(2))["y"][0] == 1  # looked up even before the filter exists
    cache.flush()
    assert cache.get(digest(2)) is not None
    cache.close()


def test_clear_empties_the_filter_and_later_puts_are_found(tmp_path):
    cache = disk_only(tmp_path)
    cache.put(digest(1), out(1))
    cache.flush()
    cache.clear()
    cache.put(digest(2), out(2))
    cache.flush()
    assert cache.get(digest(1)) is None and cache.get(digest(2)) is not None
    assert cache.stats()["tiers"]["disk"]["filter"]["added"] == 1
    cache.close()


def test_a_stale_filter_is_rebuilt_from_the_database(tmp_path):
    cache = ResponseCache(tmp_path, 0, 1 << 20, 3600.0)
    f = cache.disk._store.filter
    for i in range(f.capacity + 1):
        f.add(digest(10_000 + i))  # as if many keys had come and gone
    cache.put(digest(1), out(1))
    cache.flush()
    cache.put(digest(2), out(2))  # the writer rebuilds before this batch
    cache.flush()
    stats = cache.stats()["tiers"]["disk"]["filter"]
    assert stats["added"] <= 2
    assert cache.get(digest(1)) is not None and cache.get(digest(2)) is not None
    cache.close()


def test_the_doorkeeper_says_no_once_then_yes():
    d = Doorkeeper(4096)
    assert [d.seen_before(digest(i)) for i in range(100)] == [False] * 100
    assert all(d.seen_before(digest(i)) for i in range(100))
    # Few unseen keys pass for seen (a Bloom filter's false positives).
    assert sum(d.seen_before(digest(i)) for i in range(10_000, 11_000)) < 20


def test_the_doorkeeper_remembers_a_key_for_one_to_two_capacities_of_later_keys():
    d = Doorkeeper(1024)
    early = digest(-1 & 0xFFFF)
    assert not d.seen_before(early)
    # A full generation later the key is in the previous filter: still remembered.
    for i in range(1024):
        d.seen_before(digest(10_000 + i))
    assert d.stats()["rotations"] == 1
    assert d.seen_before(early)  # and carried into the current generation
    # Two more generations without it: forgotten (a new "first" offer).
    for i in range(2048):
        d.seen_before(digest(20_000 + i))
    assert d.stats()["rotations"] == 3
    assert not d.seen_before(early)


def test_test_and_add_answers_membership_before_adding():
    f, g = KeyFilter(5000), KeyFilter(5000)
    for i in range(5000):
        k = digest(i)
        was = k in g
        g.add(k)
        assert f.test_and_add(k) == was
    assert all(digest(i) in f for i in range(5000)) and f._array == g._array
    assert f.test_and_add(digest(7)) and f.added <= 5000
