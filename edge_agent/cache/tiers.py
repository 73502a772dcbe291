"""The tier interface and the in-memory LRU tier.

A tier stores opaque values under 32-byte keys with an absolute expiry time
(wall clock, because entries outlive the process). ``get`` returns the expiry
with the value so a lower tier's hit can be promoted without extending its life.
A shared Redis tier for the central host would implement the same protocol.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import NamedTuple, Protocol

from . import metrics

# Bookkeeping per entry (dict slot, tuple, bytes headers) so a flood of tiny
# entries is still bounded by memory_max_bytes.
ENTRY_OVERHEAD = 128


class Hit(NamedTuple):
    value: bytes
    expires_at: float


class CacheTier(Protocol):
    name: str

    def get(self, key: bytes) -> Hit | None: ...

    def put(self, key: bytes, value: bytes, expires_at: float) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def clear(self) -> None: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...


class MemoryTier:
    """Bytes-bounded LRU; TTL is checked on read, so expired entries cost memory
    only until looked up or pushed out by newer ones."""

    name = "memory"

    def __init__(self, max_bytes: int, clock=time.time) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[bytes, Hit] = OrderedDict()
        self._bytes = 0
        # The event loop is the main user, but transports may call from their
        # own threads; an uncontended lock costs well under a microsecond.
        self._lock = threading.Lock()
        self.evictions = {"size": 0, "ttl": 0}
        self._bytes_gauge = metrics.BYTES.labels(self.name)
        self._entries_gauge = metrics.ENTRIES.labels(self.name)
        metrics.AVAILABLE.labels(self.name).set(1)
        self._publish()

    @staticmethod
    def _size(key: bytes, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    def _publish(self) -> None:
        self._bytes_gauge.set(self._bytes)
        self._entries_gauge.set(len(self._entries))

    def _drop(self, key: bytes, reason: str | None) -> None:
        hit = self._entries.pop(key)
        self._bytes -= self._size(key, hit.value)
        if reason:
            self.evictions[reason] += 1
            metrics.EVICTIONS.labels(self.name, reason).inc()

    def get(self, key: bytes) -> Hit | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            if hit.expires_at <= self._clock():
                self._drop(key, "ttl")
                self._publish()
                return None
            self._entries.move_to_end(key)
            return hit

    def put(self, key: bytes, value: bytes, expires_at: float) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key, None)
            self._entries[key] = Hit(value, expires_at)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)), "size")
            self._publish()

    def delete(self, key: bytes) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key, None)
                self._publish()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._publish()

    def stats(self) -> dict:
        with self._lock:
            return {
                "available": True,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "evictions": dict(self.evictions),
            }

    def close(self) -> None:
        pass
