"""ResponseCache end to end over real SQLite files: tiers, versions, TTL, metrics."""

import sqlite3

import numpy as np

from cache_helpers import FakeClock, TickingClock, metric
from edge_agent.cache import response_cache
from edge_agent.cache.keys import request_key
from edge_agent.cache.response_cache import DB_NAME, ResponseCache
from edge_agent.cache.tiers import ENTRY_OVERHEAD
from edge_agent.cache.values import prepare_outputs
from edge_agent.types import InferRequest

V1 = "sha256:" + "1" * 64
V2 = "sha256:" + "2" * 64


def request(pixels: float = 0.5) -> InferRequest:
    return InferRequest(model="digits", inputs={"pixels": np.full((1, 64), pixels, np.float32)})


def answer(label: int) -> dict:
    return {"label": np.array([label], np.int64), "probs": np.eye(10, dtype=np.float32)[label][None]}


def test_a_new_version_never_reads_the_old_versions_answer(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    cache.put(request_key("digits", V1, request()), answer(3))
    misses = metric("edge_agent_cache_misses_total")
    assert cache.get(request_key("digits", V2, request())) is None
    assert metric("edge_agent_cache_misses_total") - misses == 1
    cache.close()


def test_after_a_rollback_the_older_versions_entries_serve_again(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    cache.put(request_key("digits", V1, request()), answer(3))
    # v2 goes live and answers differently for the same input ...
    assert cache.get(request_key("digits", V2, request())) is None
    cache.put(request_key("digits", V2, request()), answer(5))
    assert cache.get(request_key("digits", V2, request()))["label"][0] == 5
    cache.close()
    # ... then is rolled back, across a restart: v1's own answer comes back from disk.
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    assert cache.get(request_key("digits", V1, request()))["label"][0] == 3
    assert cache.stats()["hits"]["disk"] == 1
    cache.close()


def test_hits_are_counted_per_tier_and_a_disk_hit_is_promoted(tmp_path):
    key = request_key("digits", V1, request())
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    cache.put(key, answer(7))
    cache.close()
    mem, disk = metric("edge_agent_cache_hits_total", tier="memory"), metric("edge_agent_cache_hits_total", tier="disk")
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    for _ in range(3):
        assert cache.get(key)["label"][0] == 7
    assert metric("edge_agent_cache_hits_total", tier="disk") - disk == 1
    assert metric("edge_agent_cache_hits_total", tier="memory") - mem == 2
    assert cache.stats()["tiers"]["memory"]["entries"] == 1
    cache.close()


def test_promotion_keeps_the_disk_entrys_expiry(tmp_path):
    clock = FakeClock()
    key = request_key("digits", V1, request())
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0, clock=clock)
    cache.put(key, answer(1), ttl_s=10)
    cache.close()
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0, clock=clock)
    clock.advance(5)
    assert cache.get(key) is not None  # from disk, now also in memory
    clock.advance(6)
    assert cache.get(key) is None  # neither tier serves it past its original TTL
    cache.close()


def test_default_ttl_applies_when_none_is_given(tmp_path):
    clock = FakeClock()
    key = request_key("digits", V1, request())
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 60.0, clock=clock)
    cache.put(key, answer(1))
    clock.advance(59)
    assert cache.get(key) is not None
    clock.advance(2)
    assert cache.get(key) is None
    cache.close()


def entry_size() -> int:
    return prepare_outputs(answer(0))[1] + 32 + ENTRY_OVERHEAD


def disk_rows(path) -> int:
    with sqlite3.connect(path / DB_NAME) as conn:
        return conn.execute("SELECT count(*) FROM entries").fetchone()[0]


def test_memory_bound_evicts_and_only_answers_that_come_back_go_to_disk(tmp_path):
    one = entry_size()
    cache = ResponseCache(tmp_path, 5 * one, 1 << 20, 3600.0)
    keys = [request_key("digits", V1, request(p)) for p in np.linspace(0, 1, 17)]
    declined = metric("edge_agent_cache_spills_declined_total")
    for i, key in enumerate(keys[:12]):
        cache.put(key, answer(i % 10))
    cache.flush()
    mem = cache.stats()["tiers"]["memory"]
    assert mem["entries"] == 5 and mem["bytes"] <= 5 * one and mem["evictions"]["size"] == 7
    # Seven unique inputs pushed out unused: none is written (the doorkeeper
    # now remembers them), and the metric says so.
    assert disk_rows(tmp_path) == 0 and cache.stats()["spilled"]["evicted"] == 0
    assert cache.stats()["not_spilled"] == 7
    assert metric("edge_agent_cache_spills_declined_total") - declined == 7
    # keys[0] comes back: a miss, answered again and put again ...
    assert cache.get(keys[0]) is None
    cache.put(keys[0], answer(0))
    # ... and pushed out unused a second time: now it goes to disk.
    for i, key in enumerate(keys[12:]):
        cache.put(key, answer(i % 10))
    cache.flush()
    assert disk_rows(tmp_path) == 1 and cache.stats()["spilled"]["evicted"] == 1
    disk_hits = cache.stats()["hits"]["disk"]
    assert cache.get(keys[0])["label"][0] == 0
    assert cache.stats()["hits"]["disk"] == disk_hits + 1
    cache.close()


def test_without_a_disk_tier_evictions_just_drop(tmp_path):
    one = entry_size()
    cache = ResponseCache(tmp_path, 2 * one, 0, 3600.0)
    keys = [request_key("digits", V1, request(p)) for p in (0.1, 0.2, 0.3)]
    for key in keys:
        cache.put(key, answer(1))
    assert cache.get(keys[0]) is None and cache.get(keys[2]) is not None
    assert cache.stats()["doorkeeper"] is None and not (tmp_path / DB_NAME).exists()
    cache.close()


def test_a_miss_writes_nothing_to_disk_until_the_answer_is_reused(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    once, twice = (request_key("digits", V1, request(p)) for p in (0.1, 0.2))
    cache.put(once, answer(1))
    cache.put(twice, answer(2))
    cache.flush()
    assert disk_rows(tmp_path) == 0
    assert cache.get(twice)["label"][0] == 2  # reused: now also on disk
    cache.flush()
    assert disk_rows(tmp_path) == 1 and cache.stats()["spilled"]["reuse"] == 1
    cache.get(twice)
    cache.flush()
    assert cache.stats()["spilled"]["reuse"] == 1  # written once, not per hit
    cache.close()


def test_close_writes_what_only_memory_held_and_a_restart_finds_it(tmp_path):
    clock = FakeClock()
    keys = [request_key("digits", V1, request(p)) for p in np.linspace(0, 1, 6)]
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0, clock=clock)
    for i, key in enumerate(keys[:5]):
        cache.put(key, answer(i), ttl_s=100 if i != 4 else 10)
    cache.get(keys[0])  # reused: written at once, so not again at close
    cache.put(keys[5], answer(5), ttl_s=1)
    clock.advance(2)  # keys[5] expires: never written
    cache.close()
    assert cache.stats()["spilled"] == {"reuse": 1, "evicted": 0, "close": 4}
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0, clock=clock)
    assert [cache.get(k)["label"][0] for k in keys[:5]] == [0, 1, 2, 3, 4]
    assert cache.get(keys[5]) is None
    assert cache.stats()["hits"]["disk"] == 5
    clock.advance(9)  # keys[4] kept its own TTL on the way through the disk
    assert cache.get(keys[4]) is None and cache.get(keys[3]) is not None
    cache.close()


def test_close_writes_no_more_than_the_disk_holds_most_recent_first(tmp_path):
    one = entry_size()
    keys = [request_key("digits", V1, request(p)) for p in np.linspace(0, 1, 10)]
    cache = ResponseCache(tmp_path, 1 << 20, 4 * one, 3600.0)
    for i, key in enumerate(keys):
        cache.put(key, answer(i))
    cache.close()
    assert 0 < cache.stats()["spilled"]["close"] <= 4
    cache = ResponseCache(tmp_path, 1 << 20, 4 * one, 3600.0)
    assert cache.get(keys[-1]) is not None and cache.get(keys[0]) is None
    cache.close()


def test_a_hit_hands_out_read_only_arrays_and_a_dict_of_its_own(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    key = request_key("digits", V1, request())
    batch = np.eye(10, dtype=np.float32)
    fresh = {"probs": batch[3:4], "label": np.array([3], np.int64)}
    cache.put(key, fresh)
    assert fresh["probs"].flags.writeable  # a miss pays for no freezing
    got = cache.get(key)
    # One row of a batch is copied when stored: it does not pin the batch.
    assert got["probs"].base is None and got["probs"][0, 3] == 1.0
    for arr in got.values():
        assert not arr.flags.writeable
    got["extra"] = np.zeros(1)
    assert "extra" not in cache.get(key)
    assert cache.get(key)["probs"] is got["probs"]  # frozen once, then shared
    cache.close()


def test_a_row_of_a_batch_is_copied_at_once(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 30, 1 << 20, 3600.0)
    key = request_key("digits", V1, request())
    batch = np.zeros((48, 10), np.float32)
    cache.put(key, {"probs": batch[1:2]})
    batch[1, 0] = 7.0
    got = cache.get(key)["probs"]
    # Its own bytes, not a view that keeps the batch alive.
    assert got[0, 0] == 0.0 and (got.base is None or got.base.nbytes == got.nbytes)
    cache.close()


def test_zero_disk_bytes_means_no_file(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 0, 3600.0)
    key = request_key("digits", V1, request())
    cache.put(key, answer(2))
    assert cache.get(key)["label"][0] == 2
    assert "disk" not in cache.stats()["tiers"]
    cache.close()
    assert not (tmp_path / DB_NAME).exists()


def test_an_answer_the_codec_cannot_hold_is_skipped_not_raised(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    key = request_key("digits", V1, request())
    cache.put(key, {"z": np.array([1 + 2j])})
    assert cache.get(key) is None
    cache.close()


def test_an_entry_hot_in_memory_stays_recent_on_disk(tmp_path):
    clock = TickingClock()
    keys = [request_key("digits", V1, request(p)) for p in np.linspace(0, 1, 4)]
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 1e9, clock=clock)
    for i, key in enumerate(keys):
        cache.put(key, answer(i))
    cache.close()
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 1e9, clock=clock)
    for key in keys:
        assert cache.get(key) is not None  # from disk, which touches each in turn
    cache.flush()
    clock.advance(response_cache.DISK_TOUCH_INTERVAL_S + 1)
    assert cache.get(keys[0]) is not None  # served by memory
    assert cache.stats()["hits"]["memory"] == 1
    cache.flush()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        order = [row[0] for row in conn.execute("SELECT key FROM entries ORDER BY last_access")]
    assert order[-1] == keys[0]
    cache.close()
