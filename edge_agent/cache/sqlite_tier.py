"""The on-disk tier: one SQLite file in WAL mode, bounded in bytes, LRU + TTL.

Bounds. ``max_bytes`` bounds the rows (key + value + ROW_OVERHEAD each) AND
the files on disk: database + ``-wal`` + ``-shm`` stay within ``max_bytes +
FILE_SLACK`` after every write batch (the slack is what an empty store takes:
schema pages and the 32 KiB WAL index). The WAL is checkpointed and truncated
whenever it passes ``max_bytes / 8`` (at most WAL_MAX), and the database is
created with incremental auto-vacuum so evicting rows really shrinks the file.
Within a batch the WAL may briefly hold that batch's pages on top.

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
the writer retries after ``retry_after_s``. No fault ever reaches a caller.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from . import metrics
from .keyfilter import KeyFilter
from .tiers import Hit

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    last_access REAL NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access, size);
CREATE INDEX IF NOT EXISTS entries_ttl ON entries (expires_at);
"""
# Bytes a row costs beyond key and value (record header, index entries).
ROW_OVERHEAD = 96
# The smallest row we expect (key, a few small tensors, overhead): sizes the
# key filter for a full store.
TYPICAL_MIN_ROW = 200
# The files may exceed max_bytes by this much: an empty store's pages (schema,
# table and index roots, the auto-vacuum pointer map: 24 KiB) and the WAL
# index (-shm: 32 KiB while the WAL holds fewer than ~4,000 frames).
FILE_SLACK = 64 * 1024
# The WAL is checkpointed into the database and truncated once it passes
# max_bytes / 8, and never later than at this size.
WAL_MAX = 4 * 1024 * 1024
_SUFFIXES = ("", "-wal", "-shm")

# sqlite3 primary result codes -> our fault kinds.
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_KINDS = {13: "disk_full", 8: "readonly", 14: "readonly", 3: "readonly", 23: "readonly", 5: "locked", 6: "locked"}


def classify(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        if code in _CORRUPT:
            return "corrupt"
        if code in _KINDS:
            return _KINDS[code]
        if type(exc) is sqlite3.DatabaseError:
            # Old builds lack error codes; a bare DatabaseError is corruption.
            return "corrupt"
        return "io"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "readonly"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "disk_full"
    return "io"


class _Corrupt(Exception):
    """Raised inside the tier when the file no longer looks like SQLite."""


class _Replaced(Exception):
    """The path now names another file (or none): reopen, nothing is corrupt."""


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
        self._busy_timeout_s = busy_timeout_s
        self._quick_check_max_bytes = quick_check_max_bytes
        self._batch_max = batch_max
        self._probe_interval_s = probe_interval_s
        self._queue: queue.Queue = queue.Queue(queue_max)
        self._lock = threading.Lock()  # guards the reader connection and state
        self._reader: sqlite3.Connection | None = None
        self._wconn: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._generation = 0
        self._reader_generation = -1
        self._available = False
        self._fault_kind: str | None = None
        self._retry_at = 0.0
        self._rebuild_requested = False
        self._check_pending = False
        self._recheck_interval_s = recheck_interval_s
        self._last_check = -recheck_interval_s
        self._bytes = 0
        self._count = 0
        self._file_bound = max_bytes + FILE_SLACK
        self._wal_limit = min(max_bytes // 8, WAL_MAX)
        self._disk_bytes = 0  # db + wal + shm, measured after each batch
        self._page_size = 4096
        self.evictions = {"size": 0, "ttl": 0, "corrupt": 0}
        self.errors: dict[str, int] = {}
        self.rebuilds = 0
        self._bytes_gauge = metrics.BYTES.labels(self.name)
        self._entries_gauge = metrics.ENTRIES.labels(self.name)
        self._encode_errors = metrics.ERRORS.labels("codec", "encode")
        # None until the writer has read the stored keys: every get looks up.
        self._filter: KeyFilter | None = None
        self.filtered = 0  # lookups the filter answered without SQLite
        self._open_or_step_aside()
        self._thread = threading.Thread(target=self._run, name="cache-disk-writer", daemon=True)
        self._thread.start()

    # --- opening, rebuilding, stepping aside ------------------------------

    def _connect(self, query_only: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        if query_only:
            conn.execute("PRAGMA query_only = 1")
        return conn

    def _open(self) -> None:
        """Open (creating if needed) and check the file. Raises on any fault."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        conn = self._connect(query_only=False)
        try:
            if size and not self._shrinkable(conn):
                conn.close()
                self._discard_files("it predates file-size accounting (no incremental auto-vacuum)")
                size = 0
                conn = self._connect(query_only=False)
            # Before WAL mode and the tables, or it has no effect: evicted rows
            # then give their pages back to the file system (_shrink).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("cannot switch to WAL")
            # quick_check reads every page: ~0.1 s for a 16 MB file, over a
            # second for 90 MB read cold, so a big file is checked by the writer
            # after start-up while the tier already serves (values carry a crc).
            if size <= self._quick_check_max_bytes:
                self._quick_check(conn)
            else:
                self._check_pending = True
            conn.execute("PRAGMA synchronous = NORMAL")  # a lost last write costs a miss only
            self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            # SQLite's own checkpoints keep to the same WAL bound as ours (_bound_wal).
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, self._wal_limit // self._page_size)}")
            conn.execute(f"PRAGMA journal_size_limit = {self._wal_limit}")
            conn.executescript(_SCHEMA)
            # Leaves the header in the main file, so the header probe is meaningful.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            count, total = conn.execute("SELECT count(*), total(size) FROM entries").fetchone()
            inode = os.stat(self.path).st_ino
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        self._count, self._bytes = count, int(total)
        self._inode = inode
        self._disk_bytes = self._measure_files()
        # An empty store needs no scan; otherwise the writer builds the filter
        # before its first batch, and lookups go to SQLite until then.
        self._filter = KeyFilter(self._filter_capacity()) if count == 0 else None
        with self._lock:
            self._generation += 1
            self._available = True
            self._fault_kind = None
        metrics.AVAILABLE.labels(self.name).set(1)
        self._publish()

    @staticmethod
    def _shrinkable(conn: sqlite3.Connection) -> bool:
        """False for a store made before the files were bounded: without
        incremental auto-vacuum its file never shrinks, and converting it
        (VACUUM) would need twice its size on disk for a while."""
        try:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            return not tables or conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        except sqlite3.DatabaseError:
            return True  # not ours to judge: the corruption checks that follow handle it

    def _discard_files(self, why: str) -> None:
        """Start empty: the store is a cache, so losing it costs misses only."""
        log.info("disk cache: starting an empty store at %s: %s", self.path, why)
        for suffix in _SUFFIXES:
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def _measure_files(self) -> int:
        total = 0
        for suffix in _SUFFIXES:
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def _filter_capacity(self) -> int:
        return min(self.max_bytes // TYPICAL_MIN_ROW, 1 << 24)

    def _build_filter(self) -> None:
        """In the writer: a filter of exactly the keys stored now."""
        keys: list[bytes] = []
        try:
            cur = self._wconn.execute("SELECT key FROM entries")
            while rows := cur.fetchmany(10_000):
                keys.extend(r[0] for r in rows)
        except sqlite3.Error as exc:
            self._fault(exc, "filter")
            return
        self._filter = KeyFilter.build(keys, self._filter_capacity())

    @staticmethod
    def _quick_check(conn: sqlite3.Connection) -> None:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise _Corrupt(f"quick_check: {str(rows[0][0])[:200]!r}")

    def _deferred_check(self) -> None:
        self._check_pending = False
        try:
            started = time.monotonic()
            self._quick_check(self._wconn)
            log.info("disk cache: quick_check of %s passed in %.2f s", self.path, time.monotonic() - started)
        except (_Corrupt, sqlite3.Error) as exc:
            self._fault(exc, "quick_check")

    def _open_or_step_aside(self) -> None:
        try:
            self._open()
        except (_Corrupt, sqlite3.Error, OSError) as exc:
            self._fault(exc, "open")

    def _close_connections(self) -> None:
        self._filter = None
        with self._lock:
            self._available = False
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._wconn is not None:
            try:
                self._wconn.close()
            except sqlite3.Error:
                pass
            self._wconn = None

    def _rebuild(self) -> None:
        """Move the corrupt file (and its WAL) aside and start an empty store."""
        self._close_connections()
        self._rebuild_requested = False
        stamp = time.strftime("%Y%m%dT%H%M%S")
        try:
            for old in self.path.parent.glob(self.path.name + ".corrupt-*"):
                old.unlink()  # keep one specimen, never a pile that fills the disk
            if self.path.exists():
                self.path.rename(self.path.with_name(f"{self.path.name}.corrupt-{stamp}"))
            for suffix in ("-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        except OSError as exc:
            self._count_error(classify(exc))
            self._step_aside(classify(exc), exc, "rebuild")
            return
        self.rebuilds += 1
        try:
            self._open()
        except (_Corrupt, sqlite3.Error, OSError) as exc:
            # A fresh file failing too is the disk's fault, not the file's:
            # step aside rather than rebuild in a loop.
            self._step_aside("corrupt" if isinstance(exc, _Corrupt) else classify(exc), exc, "rebuild")
            return
        log.info("disk cache: rebuilt an empty store at %s", self.path)

    def _count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        metrics.ERRORS.labels(self.name, kind).inc()

    def _fault(self, exc: BaseException, where: str) -> None:
        kind = "corrupt" if isinstance(exc, _Corrupt) else classify(exc)
        self._count_error(kind)
        if kind != "corrupt":
            self._step_aside(kind, exc, where)
            return
        log.warning("disk cache: %s is corrupt (%s during %s); moving it aside and rebuilding", self.path, exc, where)
        with self._lock:
            self._available = False
            self._rebuild_requested = True
        metrics.AVAILABLE.labels(self.name).set(0)
        # Only the writer (or the constructor, before the writer exists)
        # touches files and the write connection; a reader just asks.
        if where == "open" or threading.current_thread() is getattr(self, "_thread", None):
            self._rebuild()

    def _step_aside(self, kind: str, exc: BaseException, where: str) -> None:
        with self._lock:
            first = self._available or self._fault_kind is None
            self._available = False
            self._fault_kind = kind
            self._retry_at = time.monotonic() + self._retry_after_s
        metrics.AVAILABLE.labels(self.name).set(0)
        if first:
            log.warning(
                "disk cache: stepping aside (%s: %s during %s); memory tier only, retrying every %.3g s",
                kind, exc, where, self._retry_after_s,
            )

    def _retry(self) -> bool:
        """In the writer: try to come back after a fault. True when serving."""
        if self._available:
            return True
        if self._rebuild_requested:
            self._rebuild()
        elif time.monotonic() >= self._retry_at:
            self._close_connections()
            self._open_or_step_aside()
            if self._available:
                log.info("disk cache: serving again from %s", self.path)
        return self._available

    def _probe(self) -> None:
        """Cheap check that the file on disk is still ours and still SQLite.

        Open connections keep serving cached pages after garbage is written
        over the file, so without this a live corruption would only surface
        at the next restart.
        """
        try:
            st = os.stat(self.path)
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            raise _Replaced("database file vanished") from None
        if st.st_ino != self._inode:
            raise _Replaced("database file was replaced")
        if head and head != SQLITE_MAGIC:
            raise _Corrupt("database header is not SQLite")

    # --- the request path --------------------------------------------------

    def get(self, key: bytes) -> Hit | None:
        if not self._available:
            return None
        f = self._filter
        if f is not None and key not in f:
            self.filtered += 1
            return None
        with self._lock:
            if not self._available:
                return None
            try:
                if self._reader is None or self._reader_generation != self._generation:
                    if self._reader is not None:
                        self._reader.close()
                    self._reader = self._connect(query_only=True)
                    # Never stall the event loop behind a lock: miss instead.
                    self._reader.execute("PRAGMA busy_timeout = 5")
                    self._reader_generation = self._generation
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
            self._wake()
            return None
        if row is None:
            return None
        value, expires_at = row
        now = self._clock()
        if expires_at <= now:
            return None  # the writer's sweep removes it
        self.touch(key)
        return Hit(value, expires_at)

    def put(self, key: bytes, value: bytes | Callable[[], bytes], expires_at: float,
            last_access: float | None = None) -> None:
        """Store ``value``, or what the writer gets by calling it (an encoder
        run off the request path). ``last_access`` places the entry in LRU
        order (default: when the writer applies it)."""
        if isinstance(value, bytes) and len(key) + len(value) + ROW_OVERHEAD > self.max_bytes:
            return
        if self._available or time.monotonic() >= self._retry_at:
            self._submit(("put", key, value, expires_at, last_access))

    def put_many(self, items: Iterable[tuple], timeout: float) -> int:
        """Queue ``(key, value, expires_at, last_access)`` puts, waiting for room
        in the queue up to ``timeout`` seconds in all; returns how many were queued."""
        if not (self._available or time.monotonic() >= self._retry_at):
            return 0
        deadline = time.monotonic() + timeout
        n = 0
        for key, value, expires_at, last_access in items:
            try:
                self._queue.put(("put", key, value, expires_at, last_access), timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
            n += 1
        return n

    def delete(self, key: bytes) -> None:
        self._submit(("delete", key))

    def clear(self) -> None:
        self._submit(("clear",))

    def touch(self, key: bytes) -> None:
        """Mark an entry used (an upper tier served it), so LRU keeps it."""
        self._submit(("touch", key, self._clock()), drop_quietly=True)

    def sweep(self) -> None:
        """Ask the writer to drop expired entries now (it also does so every probe interval)."""
        self._submit(("sweep",))

    def corrupt_value(self, key: bytes) -> None:
        """A value read from here failed its checksum: drop it, and have the
        writer run a full check, since SQLite can hand back damaged overflow
        pages without an error. Checks are rate-limited: on a big file each
        one reads every page."""
        self.evictions["corrupt"] += 1
        metrics.EVICTIONS.labels(self.name, "corrupt").inc()
        now = time.monotonic()
        if now - self._last_check >= self._recheck_interval_s:
            self._last_check = now
            self._check_pending = True
        self.delete(key)

    def _submit(self, op: tuple, drop_quietly: bool = False) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            if not drop_quietly:
                self._count_error("queue_full")

    def _wake(self) -> None:
        self._submit(("wake",), drop_quietly=True)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every write queued before this call has been applied."""
        done = threading.Event()
        self._queue.put(("flush", done), timeout=timeout)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put(("stop",), timeout=timeout)
            except queue.Full:
                log.warning("disk cache: writer queue stuck; closing without flushing")
            self._thread.join(timeout)
        self._close_connections()

    def stats(self) -> dict:
        return {
            "available": self._available,
            "fault": self._fault_kind,
            "entries": self._count,
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "file_bytes": self._disk_bytes,
            "evictions": dict(self.evictions),
            "errors": dict(self.errors),
            "rebuilds": self.rebuilds,
            "path": str(self.path),
            "filter": None if self._filter is None else {**self._filter.stats(), "filtered": self.filtered},
        }

    def _publish(self) -> None:
        self._bytes_gauge.set(self._bytes)
        self._entries_gauge.set(self._count)

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        next_probe = time.monotonic() + self._probe_interval_s
        while True:
            if self._check_pending and self._available:
                self._deferred_check()
            if self._available and (self._filter is None or self._filter.stale):
                self._build_filter()
            try:
                batch = [self._queue.get(timeout=self._probe_interval_s)]
            except queue.Empty:
                batch = []
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if self._check_pending and self._available:
                self._deferred_check()  # asked for while we waited: before this batch
            writes = [op for op in batch if op[0] in ("put", "delete", "clear", "touch")]
            sweep = time.monotonic() >= next_probe or any(op[0] == "sweep" for op in batch)
            if writes or sweep or self._rebuild_requested:
                if sweep:
                    next_probe = time.monotonic() + self._probe_interval_s
                try:
                    self._apply(writes, sweep=sweep)
                except Exception:  # a bug here must not kill the only writer
                    log.exception("disk cache: writer failed on a batch of %d writes", len(writes))
                    self._count_error("internal")
            for op in batch:
                if op[0] == "flush":
                    op[1].set()
            if any(op[0] == "stop" for op in batch):
                return

    def _apply(self, writes: list[tuple], sweep: bool) -> None:
        # A second pass only after a rebuild, so the batch lands in the new store.
        for _ in range(2):
            if not self._retry():
                return
            try:
                self._probe()
                self._transaction(writes)
                self._bound_wal()
                if sweep or self._bytes > self.max_bytes or self._disk_bytes > self._file_bound:
                    self._evict()
                return
            except _Replaced as exc:
                log.warning("disk cache: %s; reopening %s", exc, self.path)
                self._close_connections()
                self._open_or_step_aside()
            except (_Corrupt, sqlite3.Error, OSError) as exc:
                if self._wconn is not None and self._wconn.in_transaction:
                    try:
                        self._wconn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._fault(exc, "write")

    def _transaction(self, writes: list[tuple]) -> None:
        if not writes:
            return
        conn = self._wconn
        d_bytes = d_count = 0
        touches: dict[bytes, float] = {}
        added: list[bytes] = []
        cleared = False
        f = self._filter
        conn.execute("BEGIN IMMEDIATE")
        for op in writes:
            kind = op[0]
            if kind == "touch":
                touches[op[1]] = op[2]
                continue
            if kind == "clear":
                conn.execute("DELETE FROM entries")
                d_bytes, d_count, touches, added, cleared = -self._bytes, -self._count, {}, [], True
                continue
            key = op[1]
            if kind == "put":
                _, key, value, expires_at, last_access = op
                if not isinstance(value, bytes):
                    value = self._encode(value)
                    if value is None:
                        continue
                size = len(key) + len(value) + ROW_OVERHEAD
                if size > self.max_bytes:
                    continue
            # A key the filter has never seen is not stored: no need to read its old size.
            if f is None or key in f:
                old = conn.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
                if old is not None:
                    d_bytes -= old[0]
                    d_count -= 1
            if kind == "delete":
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO entries (key, size, expires_at, last_access, value) VALUES (?, ?, ?, ?, ?)",
                    (key, size, expires_at, self._clock() if last_access is None else last_access, value),
                )
                d_bytes += size
                d_count += 1
                added.append(key)
        if touches:
            conn.executemany("UPDATE entries SET last_access = ? WHERE key = ?", [(t, k) for k, t in touches.items()])
        conn.execute("COMMIT")
        if cleared:
            self._filter = f = KeyFilter(self._filter_capacity())
        if f is not None:
            for key in added:
                f.add(key)
        self._bytes += d_bytes
        self._count += d_count
        self._publish()

    def _encode(self, encoder: Callable[[], bytes]) -> bytes | None:
        try:
            return encoder()
        except Exception as exc:  # noqa: BLE001 - an answer we cannot store is skipped, never fatal
            log.warning("disk cache: not storing an answer the codec cannot encode: %s", exc)
            self._encode_errors.inc()
            return None

    def _bound_wal(self) -> None:
        """Fold the WAL back into the database (and truncate it) once it has
        grown past its share of the bound, then measure the files."""
        try:
            wal = os.stat(str(self.path) + "-wal").st_size
        except FileNotFoundError:
            wal = 0
        if wal > self._wal_limit:
            self._checkpoint()
        self._disk_bytes = self._measure_files()

    def _checkpoint(self) -> None:
        # Readers hold their snapshot for one point read only, so TRUNCATE
        # waits (busy_timeout) a moment at most; if it still cannot finish,
        # the next batch tries again.
        self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _evict(self) -> None:
        conn = self._wconn
        now = self._clock()
        n, freed = conn.execute("SELECT count(*), total(size) FROM entries WHERE expires_at <= ?", (now,)).fetchone()
        if n:
            conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,))
            self._note_evicted("ttl", n, int(freed))
            self._shrink()
        # Down to 90 % so a full store does not evict on every write. Rows
        # cost more on disk than their sizes say (pages, indexes): the files'
        # excess is converted at the measured ratio, and measured again.
        for _ in range(4):
            excess = self._bytes - int(self.max_bytes * 0.9)
            file_excess = self._disk_bytes - (int(self.max_bytes * 0.9) + FILE_SLACK)
            if self._disk_bytes > self._file_bound and file_excess > 0 and self._bytes > 0:
                db = max(1, self._disk_bytes - FILE_SLACK)
                excess = max(excess, int(file_excess * min(1.0, self._bytes / db)) + 1)
            elif self._bytes <= self.max_bytes:
                return
            if excess <= 0 or not self._evict_lru(excess):
                return
            self._shrink()
            if self._disk_bytes <= self._file_bound and self._bytes <= self.max_bytes:
                return

    def _evict_lru(self, excess: int) -> bool:
        """Delete least recently used rows worth ``excess`` bytes; False when none are left."""
        conn = self._wconn
        victims, freed = [], 0
        cur = conn.execute("SELECT key, size FROM entries ORDER BY last_access")
        for key, size in cur:
            victims.append((key,))
            freed += size
            if freed >= excess:
                break
        cur.close()
        if not victims:
            return False
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("DELETE FROM entries WHERE key = ?", victims)
        conn.execute("COMMIT")
        self._note_evicted("size", len(victims), freed)
        return True

    def _shrink(self) -> None:
        """Give freed pages back to the file system: vacuum them to the end
        of the file, then a checkpoint truncates the database (and the WAL)."""
        # executescript: sqlite3's execute() steps this pragma once, freeing one page.
        self._wconn.executescript("PRAGMA incremental_vacuum;")
        self._checkpoint()
        self._disk_bytes = self._measure_files()

    def _note_evicted(self, reason: str, n: int, freed: int) -> None:
        self._count -= n
        self._bytes -= freed
        self.evictions[reason] += n
        metrics.EVICTIONS.labels(self.name, reason).inc(n)
        self._publish()
