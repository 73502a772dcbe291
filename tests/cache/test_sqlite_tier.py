"""The disk tier against real SQLite files: restarts, bounds, TTL and every fault."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time

import numpy as np
import pytest

from cache_helpers import FakeClock, TickingClock, can_mount, metric, remount_read_only
from edge_agent.cache.response_cache import DB_NAME, ResponseCache
from edge_agent.cache.sqlite_tier import SQLiteTier

LOGGER = "edge_agent.cache.sqlite_tier"


def k(i: int) -> bytes:
    return i.to_bytes(32, "big")


def out(i: int, n: int = 4) -> dict:
    return {"probs": np.full(n, i, np.float32), "label": np.array([f"class-{i:04d}"], dtype=object)}


def disk_only(path, clock=None, **kw) -> ResponseCache:
    """No memory tier, so every get really reads the SQLite file."""
    return ResponseCache(path, 0, kw.pop("disk_max_bytes", 1 << 20), 3600.0, clock=clock or FakeClock(), **kw)


def warnings_from(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def rows(path) -> int:
    with sqlite3.connect(path / DB_NAME) as conn:
        return conn.execute("SELECT count(*) FROM entries").fetchone()[0]


def test_entries_survive_a_restart(tmp_path):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    cache.put(k(1), out(1))
    cache.close()  # flushes the writer

    hits = metric("edge_agent_cache_hits_total", tier="disk")
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0)
    got = cache.get(k(1))
    assert got is not None and got["probs"].tolist() == [1.0] * 4 and got["label"].tolist() == ["class-0001"]
    assert metric("edge_agent_cache_hits_total", tier="disk") - hits == 1
    assert cache.get(k(1)) is not None
    assert cache.stats()["hits"] == {"memory": 1, "disk": 1}  # promoted on the first hit
    cache.close()


def test_garbage_over_the_closed_file_is_moved_aside_and_rebuilt(tmp_path, caplog):
    cache = disk_only(tmp_path)
    for i in range(20):
        cache.put(k(i), out(i))
    cache.close()
    db = tmp_path / DB_NAME
    db.write_bytes(os.urandom(db.stat().st_size))

    corrupt = metric("edge_agent_cache_errors_total", tier="disk", kind="corrupt")
    with caplog.at_level(logging.WARNING):
        cache = disk_only(tmp_path)  # must not raise
    assert len([w for w in warnings_from(caplog) if "corrupt" in w]) == 1
    assert metric("edge_agent_cache_errors_total", tier="disk", kind="corrupt") - corrupt == 1
    assert len(list(tmp_path.glob(DB_NAME + ".corrupt-*"))) == 1
    assert cache.stats()["tiers"]["disk"]["available"] is True
    assert cache.get(k(1)) is None

    cache.put(k(100), out(100))
    cache.close()
    cache = disk_only(tmp_path)
    assert cache.get(k(100))["probs"][0] == 100
    cache.close()


def test_garbage_over_the_live_file_is_detected_and_rebuilt(tmp_path, caplog):
    cache = disk_only(tmp_path)
    cache.put(k(1), out(1))
    cache.flush()
    db = tmp_path / DB_NAME
    db.write_bytes(os.urandom(db.stat().st_size))

    with caplog.at_level(logging.WARNING):
        cache.put(k(2), out(2))  # the writer's header probe sees the garbage
        assert cache.flush()
    assert any("corrupt" in w for w in warnings_from(caplog))
    disk = cache.stats()["tiers"]["disk"]
    assert disk["rebuilds"] == 1 and disk["available"] is True
    assert cache.get(k(1)) is None
    assert cache.get(k(2))["probs"][0] == 2  # the batch landed in the new store
    cache.close()


def entry_size(tmp_path) -> int:
    probe = disk_only(tmp_path / "probe")
    probe.put(k(0), out(0, n=50))
    probe.flush()
    size = probe.stats()["tiers"]["disk"]["bytes"]
    probe.close()
    return size


def test_filling_past_the_bound_evicts_least_recently_used(tmp_path):
    size = entry_size(tmp_path)
    clock = TickingClock()  # every put and touch is strictly later than the last
    cache = disk_only(tmp_path, clock=clock, disk_max_bytes=10 * size)
    evictions = metric("edge_agent_cache_evictions_total", tier="disk", reason="size")
    for i in range(10):
        cache.put(k(i), out(i, n=50))
    cache.flush()
    assert cache.stats()["tiers"]["disk"]["evictions"]["size"] == 0  # exactly at the bound
    assert cache.get(k(0)) is not None  # touched: now the most recent
    cache.flush()
    cache.put(k(10), out(10, n=50))
    cache.flush()

    disk = cache.stats()["tiers"]["disk"]
    # Over the bound, the store shrinks to 90 %: the two least recently used go.
    assert disk["evictions"]["size"] == 2
    assert metric("edge_agent_cache_evictions_total", tier="disk", reason="size") - evictions == 2
    assert disk["entries"] == 9 == rows(tmp_path)
    assert disk["bytes"] == 9 * size <= 10 * size
    assert cache.get(k(1)) is None and cache.get(k(2)) is None
    assert all(cache.get(k(i)) is not None for i in (0, 3, 10))
    cache.close()


# The documented allowance over cache.disk_max_bytes (sqlite_store.FILE_SLACK).
FILE_SLACK = 64 * 1024


def files_on_disk(path) -> int:
    """What the disk tier takes on disk: the database, its WAL and the WAL index."""
    return sum(os.stat(path / (DB_NAME + suffix)).st_size for suffix in ("", "-wal", "-shm")
               if (path / (DB_NAME + suffix)).exists())


def test_the_files_on_disk_wal_included_stay_within_the_bound(tmp_path):
    bound = 512 * 1024
    cache = disk_only(tmp_path, disk_max_bytes=bound)
    rng = random.Random(7)
    keys, worst = [], 0
    for i in range(600):  # ~2.2 KB answers under random keys: 1.3 MB written, 2.5x the bound
        keys.append(rng.getrandbits(256).to_bytes(32, "big"))
        cache.put(keys[-1], out(i, n=500))
        if i % 20 == 19:
            cache.flush()
            worst = max(worst, files_on_disk(tmp_path))
    disk = cache.stats()["tiers"]["disk"]
    assert worst <= bound + FILE_SLACK, (worst, disk)
    assert disk["file_bytes"] <= bound + FILE_SLACK and disk["bytes"] <= bound
    # Still a cache: it evicted the oldest and serves the newest.
    assert disk["evictions"]["size"] > 0 and disk["entries"] > 100
    assert cache.get(keys[-1])["probs"][0] == 599 and cache.get(keys[0]) is None
    cache.close()
    assert files_on_disk(tmp_path) <= bound + FILE_SLACK

    # A lower bound after a restart shrinks the files (auto-vacuum) at the first write.
    small = 128 * 1024
    cache = disk_only(tmp_path, disk_max_bytes=small)
    cache.put(keys[0], out(0, n=500))
    cache.flush()
    assert files_on_disk(tmp_path) <= small + FILE_SLACK
    assert cache.get(keys[-1])["probs"][0] == 599
    cache.close()


def test_a_store_from_before_the_file_bound_is_replaced_by_an_empty_one(tmp_path):
    db = tmp_path / DB_NAME
    with sqlite3.connect(db) as conn:  # as the tier used to make it: no auto-vacuum
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE entries (key BLOB PRIMARY KEY, size INTEGER NOT NULL, expires_at REAL NOT NULL,"
                     " last_access REAL NOT NULL, value BLOB NOT NULL)")
    conn.close()
    cache = disk_only(tmp_path)
    cache.put(k(1), out(1))
    cache.flush()
    assert cache.get(k(1))["probs"][0] == 1
    assert cache.stats()["tiers"]["disk"]["rebuilds"] == 0 and not list(tmp_path.glob("*.corrupt-*"))
    cache.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()


def test_expired_entries_are_not_served_and_are_swept(tmp_path):
    clock = FakeClock()
    cache = disk_only(tmp_path, clock=clock)
    cache.put(k(1), out(1), ttl_s=10)
    cache.put(k(2), out(2), ttl_s=1000)
    cache.flush()
    clock.advance(11)
    assert cache.get(k(1)) is None
    assert cache.get(k(2)) is not None

    ttl = metric("edge_agent_cache_evictions_total", tier="disk", reason="ttl")
    cache.disk.sweep()
    cache.flush()
    assert rows(tmp_path) == 1
    assert metric("edge_agent_cache_evictions_total", tier="disk", reason="ttl") - ttl == 1
    cache.close()


def test_a_corrupt_value_is_a_miss_and_is_deleted(tmp_path):
    cache = disk_only(tmp_path)
    cache.put(k(1), out(1))
    cache.close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        (value,) = conn.execute("SELECT value FROM entries").fetchone()
        bad = bytearray(value)
        bad[-1] ^= 0xFF
        conn.execute("UPDATE entries SET value = ?", (bytes(bad),))

    decode_errors = metric("edge_agent_cache_errors_total", tier="disk", kind="decode")
    cache = disk_only(tmp_path)
    assert cache.get(k(1)) is None
    cache.flush()
    assert metric("edge_agent_cache_errors_total", tier="disk", kind="decode") - decode_errors == 1
    assert rows(tmp_path) == 0
    cache.close()


@pytest.fixture
def read_only_dir(tmp_path, tmpfs):
    """A directory holding a cache, then made read-only for real."""
    if can_mount():
        path = tmpfs("4m")
        make_ro = lambda: remount_read_only(path)  # noqa: E731
    else:
        path = tmp_path / "ro"
        path.mkdir()
        make_ro = lambda: path.chmod(0o555)  # noqa: E731
    cache = disk_only(path)
    cache.put(k(1), out(1))
    cache.close()
    for f in path.iterdir():
        if f.name != DB_NAME:
            f.unlink()
    make_ro()
    yield path
    if not can_mount():
        path.chmod(0o755)


def test_read_only_directory_disables_the_disk_tier_and_memory_still_works(read_only_dir, caplog):
    readonly = metric("edge_agent_cache_errors_total", tier="disk", kind="readonly")
    with caplog.at_level(logging.WARNING):
        cache = ResponseCache(read_only_dir, 1 << 20, 1 << 20, 3600.0, retry_after_s=3600)
        cache.put(k(2), out(2))
        assert cache.flush()
        assert cache.get(k(1)) is None  # the disk tier stepped aside
        assert cache.get(k(2))["probs"][0] == 2  # memory answers
    assert len(warnings_from(caplog)) == 1
    assert metric("edge_agent_cache_errors_total", tier="disk", kind="readonly") - readonly == 1
    assert metric("edge_agent_cache_tier_available", tier="disk") == 0
    assert cache.stats()["tiers"]["disk"]["available"] is False
    cache.close()


def test_full_disk_steps_aside_then_recovers_when_space_returns(tmpfs, caplog):
    fs = tmpfs("1m")
    filler = fs / "filler"
    # Memory holds one of these answers, so each put pushes the last one to disk.
    cache = ResponseCache(fs, 12 << 10, 8 << 20, 3600.0, retry_after_s=0.05)
    filler.write_bytes(b"\0" * (700 * 1024))
    full = metric("edge_agent_cache_errors_total", tier="disk", kind="disk_full")
    with caplog.at_level(logging.WARNING):
        for i in range(200):
            cache.put(k(i), out(i, n=2000))
            cache.flush()
            if not cache.stats()["tiers"]["disk"]["available"]:
                break
    assert cache.stats()["tiers"]["disk"]["fault"] == "disk_full"
    assert metric("edge_agent_cache_errors_total", tier="disk", kind="disk_full") - full >= 1
    assert len(warnings_from(caplog)) == 1
    assert cache.get(k(i))["probs"][0] == i  # memory still serves what the disk could not take

    filler.unlink()
    time.sleep(0.1)  # past retry_after_s
    put_and_reuse(cache, k(1000), out(1000))
    cache.flush()
    assert cache.stats()["tiers"]["disk"]["available"] is True
    cache.close()
    cache = disk_only(fs)
    assert cache.get(k(1000))["probs"][0] == 1000
    cache.close()


def put_and_reuse(cache, key, outputs) -> None:
    """A put, then a memory hit: the hit sends the entry to disk."""
    cache.put(key, outputs)
    assert cache.get(key) is not None


def test_locked_database_steps_aside_then_recovers(tmp_path, caplog):
    cache = ResponseCache(tmp_path, 1 << 20, 1 << 20, 3600.0, retry_after_s=0.05, busy_timeout_s=0.05)
    put_and_reuse(cache, k(1), out(1))
    cache.flush()
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    locked = metric("edge_agent_cache_errors_total", tier="disk", kind="locked")
    with caplog.at_level(logging.WARNING):
        put_and_reuse(cache, k(2), out(2))  # no exception, no wait on the caller
        cache.flush()
    assert metric("edge_agent_cache_errors_total", tier="disk", kind="locked") - locked >= 1
    assert cache.stats()["tiers"]["disk"]["fault"] == "locked"
    assert len(warnings_from(caplog)) == 1
    assert cache.get(k(2)) is not None  # from memory

    other.execute("ROLLBACK")
    other.close()
    time.sleep(0.1)
    put_and_reuse(cache, k(3), out(3))
    cache.flush()
    assert cache.stats()["tiers"]["disk"]["available"] is True
    cache.close()
    assert rows(tmp_path) == 2  # k(1) and k(3); k(2) was dropped while locked


def test_a_missing_parent_directory_is_created(tmp_path):
    tier = SQLiteTier(tmp_path / "a" / "b" / DB_NAME, 1 << 20)
    assert tier.stats()["available"] is True
    tier.close()


def overflow_pages(db) -> list[int]:
    with sqlite3.connect(db) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT pageno FROM dbstat WHERE name = 'entries' AND pagetype = 'overflow'")]
        except sqlite3.OperationalError:
            pytest.skip("this SQLite build has no dbstat table")


@pytest.mark.parametrize("check_limit", [0, 1 << 30], ids=["checked-by-the-writer", "checked-at-open"])
def test_damage_deep_inside_a_closed_file_is_found_at_start_up(tmp_path, check_limit):
    cache = disk_only(tmp_path)
    for i in range(50):
        cache.put(k(i), out(i, n=2000))  # values spill into overflow pages
    cache.close()
    db = tmp_path / DB_NAME
    pages = overflow_pages(db)
    assert pages
    with open(db, "r+b") as f:
        # Header, schema and indexes intact: only a full check can see this.
        for page in pages:
            f.seek((page - 1) * 4096)
            f.write(os.urandom(4096))

    cache = disk_only(tmp_path, quick_check_max_bytes=check_limit)
    cache.flush()
    disk = cache.stats()["tiers"]["disk"]
    assert disk["rebuilds"] == 1 and disk["available"] is True
    assert len(list(tmp_path.glob(DB_NAME + ".corrupt-*"))) == 1
    cache.put(k(1), out(1))
    cache.flush()
    assert cache.get(k(1))["probs"][0] == 1
    cache.close()


def test_damage_met_by_a_read_is_a_miss_and_leads_to_a_check_and_rebuild(tmp_path, caplog):
    cache = disk_only(tmp_path)
    for i in range(50):
        cache.put(k(i), out(i, n=2000))
    cache.flush()
    db = tmp_path / DB_NAME
    with sqlite3.connect(db, isolation_level=None) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page now lives in the main file
    pages = overflow_pages(db)
    with open(db, "r+b") as f:  # header intact: the writer's probe cannot see this
        for page in pages:
            f.seek((page - 1) * 4096)
            f.write(os.urandom(4096))

    with caplog.at_level(logging.WARNING):
        assert cache.get(k(7)) is None  # no exception on the request path
        cache.flush()
    disk = cache.stats()["tiers"]["disk"]
    assert disk["rebuilds"] == 1 and disk["available"] is True
    assert any("corrupt" in w for w in warnings_from(caplog))
    cache.put(k(1), out(1))
    cache.flush()
    assert cache.get(k(1))["probs"][0] == 1
    cache.close()


def test_a_deleted_database_file_is_recreated_while_running(tmp_path):
    cache = disk_only(tmp_path)
    cache.put(k(1), out(1))
    cache.flush()
    for f in tmp_path.glob(DB_NAME + "*"):
        f.unlink()
    cache.put(k(2), out(2))
    cache.flush()
    assert (tmp_path / DB_NAME).exists()
    assert cache.stats()["tiers"]["disk"]["rebuilds"] == 0
    cache.close()
    cache = disk_only(tmp_path)
    assert cache.get(k(2))["probs"][0] == 2 and cache.get(k(1)) is None
    cache.close()
