"""The response cache the service talks to: memory LRU in front of SQLite.

Admission. An answer goes to memory only, as it is (frozen arrays: no
encoding). It is written to disk, encoded by the disk writer thread, when it
earns it:
  - it is hit in memory (reused, so worth keeping across a restart or crash);
  - the memory bound pushes it out unused for the second time: the disk
    extends memory's capacity for inputs that come back, and a doorkeeper
    (keyfilter.Doorkeeper) remembers which keys were pushed out once. An
    input that never repeats is never written, so a stream of unique inputs
    costs the disk and its writer thread nothing;
  - the cache closes (a clean shutdown keeps what memory held).
What a kill -9 or power cut loses is the answers seen only once since they
entered memory. Without a memory tier, every put goes to disk.

The memo of encoded answers (memo.py) lives beside this cache: it reads
``expires_at`` of the memory entry an answer encodes, and drops what it
holds when ``generation`` moves (every ``delete``/``clear``).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import numpy as np

from . import metrics
from .keyfilter import Doorkeeper
from .sqlite_tier import SQLiteTier
from .tiers import EXPIRES_AT, FROZEN, ON_DISK, SIZE, TOUCHED_AT, VALUE, Entry, MemoryTier
from .values import CorruptCacheValue, decode_outputs, encode_outputs, freeze_outputs, prepare_outputs

log = logging.getLogger(__name__)

DB_NAME = "responses.sqlite3"
# A key served from memory refreshes its disk LRU position at most this often,
# so a hot entry is not evicted from disk for lack of disk reads.
DISK_TOUCH_INTERVAL_S = 60.0
# Close() writes memory-only entries to disk for at most this long.
SPILL_TIMEOUT_S = 5.0
DOORKEEPER_ROW_BYTES = 1024


class ResponseCache:
    """``get``/``put`` never raise and never wait on the disk: a disk fault
    makes that tier step aside (disk_state.py). Returned dicts are the
    caller's; their arrays are read-only and shared with the cache.
    ``put`` keeps the arrays it is given (no copy) until the first hit, so
    the caller must not write into them afterwards."""

    def __init__(
        self,
        cache_dir: Path,
        memory_max_bytes: int,
        disk_max_bytes: int,
        default_ttl_s: float,
        *,
        clock=time.time,
        spill_timeout_s: float = SPILL_TIMEOUT_S,
        **disk_options,
    ) -> None:
        self.default_ttl_s = default_ttl_s
        self._clock = clock
        self._spill_timeout_s = spill_timeout_s
        self.disk: SQLiteTier | None = (
            SQLiteTier(Path(cache_dir) / DB_NAME, disk_max_bytes, clock=clock, **disk_options)
            if disk_max_bytes > 0
            else None
        )
        self.memory: MemoryTier | None = (
            MemoryTier(memory_max_bytes, clock=clock, on_evict=self._spill if self.disk is not None else None)
            if memory_max_bytes > 0
            else None
        )
        # Remembers about as many keys as the disk holds rows of 1 KB (two
        # filters of 1.5 bytes per key): a key that comes back after many
        # more evictions than the disk holds rows would be gone from it anyway.
        self._doorkeeper = (
            Doorkeeper(min(disk_max_bytes // DOORKEEPER_ROW_BYTES, 1 << 22))
            if self.memory is not None and self.disk is not None
            else None
        )
        # Moves at every delete/clear: the memo (memo.py) then drops what it holds.
        self.generation = 0
        self.hits = {"memory": 0, "disk": 0}
        self.misses = 0
        self.spilled = {"reuse": 0, "evicted": 0, "close": 0}
        self.not_spilled = 0  # pushed out unused for the first time: not written
        self._not_spilled = metrics.SPILLS_DECLINED
        # Bound once: labels() costs a locked dict lookup on every call.
        self._hit_counters = {tier: metrics.HITS.labels(tier) for tier in self.hits}
        self._encode_errors = metrics.ERRORS.labels("codec", "encode")

    def get(self, key: bytes) -> dict[str, np.ndarray] | None:
        try:
            return self._get(key)
        except Exception:  # a cache bug must cost a miss, never a request
            log.exception("cache: get failed")
            metrics.ERRORS.labels("cache", "internal").inc()
            return None

    def put(self, key: bytes, outputs: dict[str, np.ndarray], ttl_s: float | None = None) -> None:
        try:
            self._put(key, outputs, ttl_s)
        except Exception:
            log.exception("cache: put failed")
            metrics.ERRORS.labels("cache", "internal").inc()

    def _get(self, key: bytes) -> dict[str, np.ndarray] | None:
        memory = self.memory
        if memory is not None:
            entry = memory.get_entry(key)
            if entry is not None:
                self.hits["memory"] += 1
                self._hit_counters["memory"].inc()
                if not entry[FROZEN] or (self.disk is not None and not entry[ON_DISK]):
                    entry = self._first_hit(key, entry)
                elif self.disk is not None:
                    self._touch_disk(key, entry)
                return dict(entry[VALUE])
        if self.disk is not None:
            hit = self.disk.get(key)
            if hit is not None:
                outputs = self._decode(key, hit.value)
                if outputs is not None:
                    outputs = freeze_outputs(outputs)
                    if memory is not None:
                        size = prepare_outputs(outputs)[1]
                        # Keeps the disk entry's expiry: promotion must not extend a TTL.
                        memory.put(key, outputs, hit.expires_at, size, on_disk=True, touched_at=self._clock())
                    self.hits["disk"] += 1
                    self._hit_counters["disk"].inc()
                    return dict(outputs)
        self.misses += 1
        metrics.MISSES.inc()
        return None

    def _first_hit(self, key: bytes, entry: Entry) -> Entry:
        """An answer asked for again: freeze it before anyone else sees it,
        and give it a place on disk, where a restart finds it."""
        value = entry[VALUE] if entry[FROZEN] else freeze_outputs(entry[VALUE])
        on_disk = entry[ON_DISK]
        if self.disk is not None and not on_disk:
            self.disk.put(key, partial(encode_outputs, value), entry[EXPIRES_AT])
            self.spilled["reuse"] += 1
            on_disk = True
        new = (value, entry[EXPIRES_AT], entry[SIZE], on_disk, self._clock(), True)
        self.memory.replace(key, entry, new)
        return new

    def _touch_disk(self, key: bytes, entry: Entry) -> None:
        now = self._clock()
        if now - entry[TOUCHED_AT] >= DISK_TOUCH_INTERVAL_S:
            self.memory.replace(key, entry, entry[:TOUCHED_AT] + (now,) + entry[TOUCHED_AT + 1:])
            self.disk.touch(key)

    def _put(self, key: bytes, outputs: dict[str, np.ndarray], ttl_s: float | None) -> None:
        prepared = prepare_outputs(outputs)
        if prepared is None:
            # An output type the codec cannot hold is not worth failing a request.
            log.warning("cache: not caching an answer with a dtype the codec cannot hold: %s",
                        {n: str(np.asarray(a).dtype) for n, a in outputs.items()})
            self._encode_errors.inc()
            return
        value, size = prepared
        expires_at = self._clock() + (ttl_s if ttl_s is not None else self.default_ttl_s)
        if self.memory is not None:
            self.memory.put(key, value, expires_at, size, frozen=False)
        elif self.disk is not None:
            self.disk.put(key, partial(encode_outputs, value), expires_at)

    def _spill(self, key: bytes, entry: Entry) -> None:
        """The memory bound pushed an entry out: keep it on disk if its key
        has been pushed out before (see Admission above)."""
        if not entry[ON_DISK] and entry[EXPIRES_AT] > self._clock():
            if not self._doorkeeper.seen_before(key):
                self.not_spilled += 1
                self._not_spilled.inc()
                return
            self.disk.put(key, partial(encode_outputs, entry[VALUE]), entry[EXPIRES_AT])
            self.spilled["evicted"] += 1

    def expires_at(self, key: bytes) -> float | None:
        """When the memory entry under ``key`` expires; None if there is none."""
        entry = self.memory.get_entry(key) if self.memory is not None else None
        return None if entry is None else entry[EXPIRES_AT]

    def delete(self, key: bytes) -> None:
        self.generation += 1
        for tier in self._tiers():
            tier.delete(key)

    def clear(self) -> None:
        self.generation += 1
        for tier in self._tiers():
            tier.clear()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until the disk writer has applied every earlier write."""
        return self.disk.flush(timeout) if self.disk is not None else True

    def close(self) -> None:
        """Write memory-only entries to disk (most recent first, as many as
        the disk bound holds, for at most spill_timeout_s), then stop."""
        if self.memory is not None and self.disk is not None:
            try:
                self._spill_all()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("cache: writing memory entries to disk at close failed")
        for tier in self._tiers():
            tier.close()

    def _spill_all(self) -> None:
        now = self._clock()
        budget = self.disk.max_bytes
        items = []
        for rank, (key, entry) in enumerate(self.memory.drain()):
            if entry[ON_DISK]:
                continue
            budget -= entry[SIZE]
            if budget < 0:
                break
            # Most recent first, and LRU order on disk follows memory's.
            items.append((key, partial(encode_outputs, entry[VALUE]), entry[EXPIRES_AT], now - rank * 1e-6))
        if items:
            n = self.disk.put_many(items, self._spill_timeout_s)
            self.spilled["close"] += n
            if n < len(items):
                log.warning("cache: wrote %d of %d memory entries to disk at close", n, len(items))

    def stats(self) -> dict:
        return {
            "hits": dict(self.hits),
            "misses": self.misses,
            "spilled": dict(self.spilled),
            "not_spilled": self.not_spilled,
            "doorkeeper": None if self._doorkeeper is None else self._doorkeeper.stats(),
            "tiers": {tier.name: tier.stats() for tier in self._tiers()},
        }

    def _tiers(self) -> list:
        return [t for t in (self.memory, self.disk) if t is not None]

    def _decode(self, key: bytes, value: bytes) -> dict[str, np.ndarray] | None:
        try:
            return decode_outputs(value, verify=True)
        except CorruptCacheValue as exc:
            log.warning("cache: dropping an undecodable disk entry: %s", exc)
            metrics.ERRORS.labels("disk", "decode").inc()
            self.disk.corrupt_value(key)
            return None
