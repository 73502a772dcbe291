"""The tier contract and the in-memory LRU tier.

A tier stores values under 32-byte keys with an absolute expiry time (wall
clock, because entries outlive the process). ``get`` returns the expiry with
the value (``Found``) so a lower tier's hit can be promoted without extending
its life. What a value is, is the caller's business: the response cache
keeps answers in memory as they are (``dict[str, np.ndarray]``) and hands
the disk bytes, or an encoder its writer thread runs (values.py); the memo
keeps encoded answers. Every tier keeps ``CacheTier``, and
tests/cache/test_tier_contract.py runs the same checks over each of them:
a new tier (a shared Redis for the central host, say) is added by passing
them, then wiring it into ResponseCache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional, Protocol, runtime_checkable

from . import metrics

# Bookkeeping per entry (dict slot, tuple, key object) so a flood of tiny
# entries is still bounded by memory_max_bytes.
ENTRY_OVERHEAD = 128


class Found(NamedTuple):
    value: Any
    expires_at: float


# A memory entry is a plain tuple, not a NamedTuple: an exact tuple of
# untracked objects leaves the garbage collector's lists after one pass, so
# holding 100k entries does not make every full collection slower.
#   (value, expires_at, size, on_disk, touched_at, frozen)
# on_disk: the disk tier holds it (or has been asked to write it).
# touched_at: when it last refreshed its disk LRU position.
# frozen: its arrays are read-only and own their bytes (see values.freeze_outputs).
VALUE, EXPIRES_AT, SIZE, ON_DISK, TOUCHED_AT, FROZEN = range(6)
Entry = tuple


@runtime_checkable
class CacheTier(Protocol):
    """What every tier does. ``put`` may take effect later (the disk applies
    writes in its own thread); ``flush`` waits until it has. No method
    raises: a tier that cannot serve misses and drops writes."""

    name: str
    max_bytes: int

    def get(self, key: bytes) -> Optional[Found]: ...

    def put(self, key: bytes, value: Any, expires_at: float) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def clear(self) -> None: ...

    def flush(self, timeout: Optional[float] = ...) -> bool: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...


class MemoryTier:
    """Bytes-bounded LRU; TTL is checked on read, so expired entries cost memory
    only until looked up or pushed out by newer ones.

    ``on_evict(key, entry)`` is called (outside the lock) for every entry the
    byte bound pushes out, so the response cache can hand it to the disk.
    Gauges are read at scrape time, never set on the request path."""

    name = "memory"

    def __init__(self, max_bytes: int, clock=time.time, on_evict: Optional[Callable[[bytes, Entry], None]] = None) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._on_evict = on_evict
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._bytes = 0
        # The event loop is the main user, but transports may call from their
        # own threads; an uncontended lock costs well under a microsecond.
        self._lock = threading.Lock()
        self.evictions = {"size": 0, "ttl": 0}
        self._evicted = {reason: metrics.EVICTIONS.labels(self.name, reason) for reason in self.evictions}
        metrics.BYTES.labels(self.name).set_function(lambda: self._bytes)
        metrics.ENTRIES.labels(self.name).set_function(lambda: len(self._entries))
        metrics.AVAILABLE.labels(self.name).set(1)

    def get_entry(self, key: bytes) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[EXPIRES_AT] <= self._clock():
                del self._entries[key]
                self._bytes -= entry[SIZE]
                self.evictions["ttl"] += 1
                self._evicted["ttl"].inc()
                return None
            self._entries.move_to_end(key)
            return entry

    def get(self, key: bytes) -> Found | None:
        entry = self.get_entry(key)
        return None if entry is None else Found(entry[VALUE], entry[EXPIRES_AT])

    def put(self, key: bytes, value: Any, expires_at: float, size: int | None = None,
            on_disk: bool = False, touched_at: float = 0.0, frozen: bool = True) -> None:
        """``size`` is the value's bytes (``len(value)`` when not given); the
        key and the per-entry overhead are added here."""
        size = len(key) + ENTRY_OVERHEAD + (len(value) if size is None else size)
        if size > self.max_bytes:
            return
        evicted = None
        entries = self._entries
        with self._lock:
            old = entries.pop(key, None)
            if old is not None:
                self._bytes -= old[SIZE]
            entries[key] = (value, expires_at, size, on_disk, touched_at, frozen)
            self._bytes += size
            if self._bytes > self.max_bytes:
                evicted = []
                while self._bytes > self.max_bytes:
                    k, e = entries.popitem(last=False)
                    self._bytes -= e[SIZE]
                    evicted.append((k, e))
                self.evictions["size"] += len(evicted)
                self._evicted["size"].inc(len(evicted))
        if evicted and self._on_evict is not None:
            for k, e in evicted:
                self._on_evict(k, e)

    def replace(self, key: bytes, entry: Entry, new: Entry) -> None:
        """Swap ``entry`` for ``new`` (same size) where it stands in LRU order;
        nothing happens if ``entry`` has been replaced or dropped meanwhile."""
        with self._lock:
            if self._entries.get(key) is entry:
                self._entries[key] = new

    def delete(self, key: bytes) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry[SIZE]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def drain(self) -> list[tuple[bytes, Entry]]:
        """Remove and return every live entry, most recently used first."""
        now = self._clock()
        with self._lock:
            items = [(k, e) for k, e in reversed(self._entries.items()) if e[EXPIRES_AT] > now]
            self._entries.clear()
            self._bytes = 0
        return items

    def stats(self) -> dict:
        with self._lock:
            return {
                "available": True,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "evictions": dict(self.evictions),
            }

    def flush(self, timeout: float | None = None) -> bool:
        """Writes take effect at once: nothing to wait for."""
        return True

    def close(self) -> None:
        pass
