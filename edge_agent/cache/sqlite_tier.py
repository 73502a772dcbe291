"""The on-disk tier: one SQLite file in WAL mode, bounded in bytes, LRU + TTL.

Where its parts live:
  sqlite_tier.py   this tier: the request path (get, put, ...), the writer
                   thread's loop, and the fault state it keeps
  sqlite_store.py  the file as the writer sees it: opening and checking it,
                   applying a batch of writes, the bounds on rows and files
  disk_state.py    the fault states and their one transition table
  disk_ops.py      the operations the writer queue carries

Threads. Every write (put, delete, the last-access touch of a hit, eviction)
goes through a queue to ONE writer thread that applies it in batched
transactions, so the request path never waits on the disk or on a lock held
by a checkpoint. A put may hand over an encoder instead of bytes: the writer
runs it, so encoding is off the request path too. Reads run directly on the
caller's thread through a separate query-only connection: a WAL point read of
a small row costs tens of microseconds, less than handing the work to another
thread and back. A Bloom filter of the stored keys (keyfilter.py, kept by the
writer) turns most misses away before they reach SQLite.

Faults. A corrupt file (found at open, by a header probe before every write
batch and every few idle seconds, or as SQLITE_CORRUPT/NOTADB in use) is
moved aside as ``<name>.corrupt-<ts>`` and rebuilt empty. A full disk, a
read-only directory, a locked database or an I/O error makes the tier step
aside: one warning, a metric, every get a miss and every put dropped, until
the writer retries after ``retry_after_s``. Which fault leads where is the
table in disk_state.py; ``_transition`` is the only place the state changes.
No fault ever reaches a caller.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

from . import metrics
from .disk_ops import CLEAR, STOP, SWEEP, WAKE, Delete, Flush, Put, Stop, Sweep, Touch, Write
from .disk_state import Corrupt, DiskEvent, DiskState, Replaced, classify, next_state
from .sqlite_store import ROW_OVERHEAD, SQLiteStore, connect
from .tiers import Found

log = logging.getLogger(__name__)

SERVING = DiskState.SERVING
__all__ = ["SQLiteTier"]


class SQLiteTier:
    name = "disk"

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        clock=time.time,
        retry_after_s: float = 30.0,
        busy_timeout_s: float = 1.0,
        quick_check_max_bytes: int = 16 * 1024 * 1024,
        queue_max: int = 10_000,
        batch_max: int = 512,
        probe_interval_s: float = 5.0,
        recheck_interval_s: float = 600.0,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock = clock
        self._retry_after_s = retry_after_s
        self._batch_max = batch_max
        self._probe_interval_s = probe_interval_s
        self._store = SQLiteStore(self.path, max_bytes, clock=clock, busy_timeout_s=busy_timeout_s,
                                  quick_check_max_bytes=quick_check_max_bytes)
        self._queue: queue.Queue = queue.Queue(queue_max)
        self._lock = threading.Lock()  # guards the reader connection and the state
        self._reader: Optional[sqlite3.Connection] = None
        # The fault state (disk_state.py); changed by _transition only.
        self._state = DiskState.OPENING
        self._fault_kind: Optional[str] = None  # what made it step aside last; None while serving
        self._retry_at = 0.0
        # A full integrity check, asked for by open (a big file) or by a
        # corrupt value (at most every recheck_interval_s), run by the writer.
        self._check_pending = False
        self._recheck_interval_s = recheck_interval_s
        self._last_check = -recheck_interval_s
        self.errors: Dict[str, int] = {}
        self.rebuilds = 0
        self.filtered = 0  # lookups the key filter answered without SQLite
        self._available_gauge = metrics.AVAILABLE.labels(self.name)
        self._thread: Optional[threading.Thread] = None  # None: the constructor owns the files
        self._open("open")
        self._thread = threading.Thread(target=self._run, name="cache-disk-writer", daemon=True)
        self._thread.start()

    # --- the state -----------------------------------------------------------

    @property
    def state(self) -> DiskState:
        return self._state

    def _transition(self, event: DiskEvent, kind: Optional[str] = None, exc: Optional[BaseException] = None,
                    where: str = "") -> Optional[DiskState]:
        """Move to the state the table names; None (nothing done) for a stale event."""
        with self._lock:
            old = self._state
            new = next_state(old, event)
            if new is None:
                return None
            self._state = new
            first = False
            if new is DiskState.STEPPED_ASIDE:
                first = self._fault_kind is None  # warn once per outage, not at every failed retry
                self._fault_kind = kind
                self._retry_at = time.monotonic() + self._retry_after_s
            elif new is SERVING:
                self._fault_kind = None
        self._available_gauge.set(1 if new is SERVING else 0)
        if new is DiskState.REBUILDING:
            log.warning("disk cache: %s is corrupt (%s during %s); moving it aside and rebuilding", self.path, exc, where)
        elif first:
            log.warning("disk cache: stepping aside (%s: %s during %s); memory tier only, retrying every %.3g s",
                        kind, exc, where, self._retry_after_s)
        return new

    def _fault(self, exc: BaseException, where: str) -> None:
        """A fault met anywhere: count it, move the state, and rebuild now if
        this thread may touch the files (the writer, or the constructor);
        a reader only asks, and the writer rebuilds when it wakes."""
        kind = classify(exc)
        self._count_error(kind)
        event = DiskEvent.CORRUPT if kind == "corrupt" else DiskEvent.FAULT
        if self._transition(event, kind, exc, where) is DiskState.REBUILDING and self._owns_files():
            self._rebuild()

    def _owns_files(self) -> bool:
        t = self._thread
        return t is None or threading.current_thread() is t

    def _open(self, where: str) -> bool:
        try:
            deferred = self._store.open()
        except (Corrupt, sqlite3.Error, OSError) as exc:
            self._fault(exc, where)
            return False
        if deferred:
            self._check_pending = True
        self._transition(DiskEvent.OPENED)
        return True

    def _close_connections(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self._store.close()

    def _rebuild(self) -> None:
        """Move the corrupt file (and its WAL) aside and start an empty store."""
        self._close_connections()
        try:
            self._store.move_aside()
        except OSError as exc:
            self._fault(exc, "rebuild")
            return
        self.rebuilds += 1
        if self._open("rebuild"):
            log.info("disk cache: rebuilt an empty store at %s", self.path)

    def _retry(self) -> bool:
        """In the writer: try to come back after a fault. True when serving."""
        state = self._state
        if state is SERVING:
            return True
        if state is DiskState.REBUILDING:
            self._rebuild()
        elif state is DiskState.STEPPED_ASIDE and time.monotonic() >= self._retry_at:
            self._transition(DiskEvent.RETRY)
            self._close_connections()
            if self._open("open"):
                log.info("disk cache: serving again from %s", self.path)
        return self._state is SERVING

    def _count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        metrics.ERRORS.labels(self.name, kind).inc()

    # --- the request path --------------------------------------------------

    def get(self, key: bytes) -> Optional[Found]:
        if self._state is not SERVING:
            return None
        f = self._store.filter
        if f is not None and key not in f:
            self.filtered += 1
            return None
        with self._lock:
            if self._state is not SERVING:
                return None
            try:
                if self._reader is None:
                    self._reader = connect(self.path, self._store.busy_timeout_s, query_only=True)
                    # Never stall the event loop behind a lock: miss instead.
                    self._reader.execute("PRAGMA busy_timeout = 5")
                row = self._reader.execute("SELECT value, expires_at FROM entries WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                row = None
                if classify(exc) == "locked":
                    # A passing lock is not a reason to step aside.
                    self._count_error("locked")
                    return None
                fault = exc
            else:
                fault = None
        if fault is not None:
            self._fault(fault, "read")
            self._submit(WAKE, drop_quietly=True)
            return None
        if row is None:
            return None
        value, expires_at = row
        if expires_at <= self._clock():
            return None  # the writer's sweep removes it
        self.touch(key)
        return Found(value, expires_at)

    def put(self, key: bytes, value: Union[bytes, Callable[[], bytes]], expires_at: float,
            last_access: Optional[float] = None) -> None:
        """Store ``value``, or what the writer gets by calling it (an encoder
        run off the request path). ``last_access`` places the entry in LRU
        order (default: when the writer applies it)."""
        if isinstance(value, bytes) and len(key) + len(value) + ROW_OVERHEAD > self.max_bytes:
            return
        if self._state is SERVING or time.monotonic() >= self._retry_at:
            self._submit(Put(key, value, expires_at, last_access))

    def put_many(self, items: Iterable[tuple], timeout: float) -> int:
        """Queue ``(key, value, expires_at, last_access)`` puts, waiting for room
        in the queue up to ``timeout`` seconds in all; returns how many were queued."""
        if not (self._state is SERVING or time.monotonic() >= self._retry_at):
            return 0
        deadline = time.monotonic() + timeout
        n = 0
        for key, value, expires_at, last_access in items:
            try:
                self._queue.put(Put(key, value, expires_at, last_access), timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
            n += 1
        return n

    def delete(self, key: bytes) -> None:
        self._submit(Delete(key))

    def clear(self) -> None:
        self._submit(CLEAR)

    def touch(self, key: bytes) -> None:
        """Mark an entry used (an upper tier served it), so LRU keeps it."""
        self._submit(Touch(key, self._clock()), drop_quietly=True)

    def sweep(self) -> None:
        """Ask the writer to drop expired entries now (it also does so every probe interval)."""
        self._submit(SWEEP)

    def corrupt_value(self, key: bytes) -> None:
        """A value read from here failed its checksum: drop it, and have the
        writer run a full check, since SQLite can hand back damaged overflow
        pages without an error. Checks are rate-limited: on a big file each
        one reads every page."""
        self._store.note_eviction("corrupt")
        now = time.monotonic()
        if now - self._last_check >= self._recheck_interval_s:
            self._last_check = now
            self._check_pending = True
        self.delete(key)

    def _submit(self, op: object, drop_quietly: bool = False) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            if not drop_quietly:
                self._count_error("queue_full")

    def flush(self, timeout: Optional[float] = 10.0) -> bool:
        """Wait until every write queued before this call has been applied."""
        op = Flush()
        self._queue.put(op, timeout=timeout)
        return op.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put(STOP, timeout=timeout)
            except queue.Full:
                log.warning("disk cache: writer queue stuck; closing without flushing")
            self._thread.join(timeout)
        self._transition(DiskEvent.CLOSE)
        self._close_connections()

    def stats(self) -> dict:
        store = self._store
        f = store.filter
        return {
            "available": self._state is SERVING,
            "state": self._state.value,
            "fault": self._fault_kind,
            "entries": store.count,
            "bytes": store.bytes,
            "max_bytes": self.max_bytes,
            "file_bytes": store.disk_bytes,
            "evictions": dict(store.evictions),
            "errors": dict(self.errors),
            "rebuilds": self.rebuilds,
            "path": str(self.path),
            "filter": None if f is None else {**f.stats(), "filtered": self.filtered},
        }

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        next_probe = time.monotonic() + self._probe_interval_s
        while True:
            self._upkeep()
            try:
                batch = [self._queue.get(timeout=self._probe_interval_s)]
            except queue.Empty:
                batch = []
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._check_pending and self._state is SERVING:
                self._deferred_check()  # asked for while we waited: before this batch
            writes: List[Write] = [op for op in batch if isinstance(op, Write)]
            sweep = time.monotonic() >= next_probe or any(op.__class__ is Sweep for op in batch)
            if writes or sweep or self._state is DiskState.REBUILDING:
                if sweep:
                    next_probe = time.monotonic() + self._probe_interval_s
                try:
                    self._apply(writes, sweep=sweep)
                except Exception:  # a bug here must not kill the only writer
                    log.exception("disk cache: writer failed on a batch of %d writes", len(writes))
                    self._count_error("internal")
            for op in batch:
                if op.__class__ is Flush:
                    op.done.set()
            if any(op.__class__ is Stop for op in batch):
                return

    def _upkeep(self) -> None:
        """Between batches: a pending integrity check, a missing or stale key filter."""
        if self._check_pending and self._state is SERVING:
            self._deferred_check()
        f = self._store.filter
        if self._state is SERVING and (f is None or f.stale):
            try:
                self._store.build_filter()
            except sqlite3.Error as exc:
                self._fault(exc, "filter")

    def _deferred_check(self) -> None:
        self._check_pending = False
        try:
            started = time.monotonic()
            self._store.quick_check()
            log.info("disk cache: quick_check of %s passed in %.2f s", self.path, time.monotonic() - started)
        except (Corrupt, sqlite3.Error) as exc:
            self._fault(exc, "quick_check")

    def _apply(self, writes: List[Write], sweep: bool) -> None:
        # A second pass only after a rebuild or a reopen, so the batch lands in the new store.
        for _ in range(2):
            if not self._retry():
                return
            try:
                self._store.apply(writes, sweep)
                return
            except Replaced as exc:
                log.warning("disk cache: %s; reopening %s", exc, self.path)
                self._transition(DiskEvent.REPLACED)
                self._close_connections()
                self._open("open")
            except (Corrupt, sqlite3.Error, OSError) as exc:
                self._store.rollback()
                self._fault(exc, "write")
