"""The response cache the service talks to: memory LRU in front of SQLite."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import metrics
from .sqlite_tier import SQLiteTier
from .tiers import CacheTier, MemoryTier
from .values import CorruptCacheValue, decode_outputs, encode_outputs

log = logging.getLogger(__name__)

DB_NAME = "responses.sqlite3"
# A key served from memory refreshes its disk LRU position at most this often,
# so a hot entry is not evicted from disk for lack of disk reads.
DISK_TOUCH_INTERVAL_S = 60.0
DISK_TOUCH_MEMO_MAX = 100_000


class ResponseCache:
    """``get``/``put`` never raise and never wait on the disk: a disk fault
    makes that tier step aside (see sqlite_tier). Returned arrays are
    read-only views of the cached value; copy before mutating."""

    def __init__(
        self,
        cache_dir: Path,
        memory_max_bytes: int,
        disk_max_bytes: int,
        default_ttl_s: float,
        *,
        clock=time.time,
        **disk_options,
    ) -> None:
        self.default_ttl_s = default_ttl_s
        self._clock = clock
        self.memory: MemoryTier | None = MemoryTier(memory_max_bytes, clock=clock) if memory_max_bytes > 0 else None
        self.disk: SQLiteTier | None = (
            SQLiteTier(Path(cache_dir) / DB_NAME, disk_max_bytes, clock=clock, **disk_options)
            if disk_max_bytes > 0
            else None
        )
        self.hits = {"memory": 0, "disk": 0}
        self.misses = 0
        # Bound once: labels() costs a locked dict lookup on every call.
        self._hit_counters = {tier: metrics.HITS.labels(tier) for tier in self.hits}
        self._disk_touched: dict[bytes, float] = {}

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
        if self.memory is not None:
            hit = self.memory.get(key)
            if hit is not None:
                outputs = self._decode(self.memory, key, hit.value, verify=False)
                if outputs is not None:
                    self._count_hit("memory")
                    if self.disk is not None:
                        self._touch_disk(key)
                    return outputs
        if self.disk is not None:
            hit = self.disk.get(key)
            if hit is not None:
                outputs = self._decode(self.disk, key, hit.value, verify=True)
                if outputs is not None:
                    if self.memory is not None:
                        # Keeps the disk entry's expiry: promotion must not extend a TTL.
                        self.memory.put(key, hit.value, hit.expires_at)
                    self._count_hit("disk")
                    return outputs
        self.misses += 1
        metrics.MISSES.inc()
        return None

    def _put(self, key: bytes, outputs: dict[str, np.ndarray], ttl_s: float | None) -> None:
        try:
            value = encode_outputs(outputs)
        except (KeyError, TypeError, ValueError) as exc:
            # An output type the codec cannot hold is not worth failing a request.
            log.warning("cache: not caching an answer the codec cannot encode: %s", exc)
            metrics.ERRORS.labels("codec", "encode").inc()
            return
        expires_at = self._clock() + (ttl_s if ttl_s is not None else self.default_ttl_s)
        if self.memory is not None:
            self.memory.put(key, value, expires_at)
        if self.disk is not None:
            self.disk.put(key, value, expires_at)

    def delete(self, key: bytes) -> None:
        for tier in self._tiers():
            tier.delete(key)

    def clear(self) -> None:
        for tier in self._tiers():
            tier.clear()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until the disk writer has applied every earlier put."""
        return self.disk.flush(timeout) if self.disk is not None else True

    def close(self) -> None:
        for tier in self._tiers():
            tier.close()

    def stats(self) -> dict:
        return {
            "hits": dict(self.hits),
            "misses": self.misses,
            "tiers": {tier.name: tier.stats() for tier in self._tiers()},
        }

    def _touch_disk(self, key: bytes) -> None:
        now = self._clock()
        if now - self._disk_touched.get(key, 0.0) < DISK_TOUCH_INTERVAL_S:
            return
        if len(self._disk_touched) >= DISK_TOUCH_MEMO_MAX:
            self._disk_touched.clear()  # forgetting only costs an extra touch
        self._disk_touched[key] = now
        self.disk.touch(key)

    def _tiers(self) -> list[CacheTier]:
        return [t for t in (self.memory, self.disk) if t is not None]

    def _count_hit(self, tier: str) -> None:
        self.hits[tier] += 1
        self._hit_counters[tier].inc()

    def _decode(self, tier, key: bytes, value: bytes, verify: bool) -> dict[str, np.ndarray] | None:
        try:
            return decode_outputs(value, verify=verify)
        except CorruptCacheValue as exc:
            log.warning("cache: dropping an undecodable %s entry: %s", tier.name, exc)
            metrics.ERRORS.labels(tier.name, "decode").inc()
            if isinstance(tier, SQLiteTier):
                tier.corrupt_value(key)
            else:
                tier.delete(key)
            return None
