"""The disk tier's SQLite file as its writer sees it: open, check, write, bound.

One ``SQLiteStore`` per tier, used by one thread at a time (the tier's
constructor, then its writer thread). It raises on every fault (``Corrupt``,
``Replaced``, ``sqlite3.Error``, ``OSError``) and never decides what a fault
means: that is the tier's state table (disk_state.py).

Bounds. ``max_bytes`` bounds the rows (key + value + ROW_OVERHEAD each) AND
the files on disk: database + ``-wal`` + ``-shm`` stay within ``max_bytes +
FILE_SLACK`` after every write batch (the slack is what an empty store takes:
schema pages and the 32 KiB WAL index). The WAL is checkpointed and truncated
whenever it passes ``max_bytes / 8`` (at most WAL_MAX), and the database is
created with incremental auto-vacuum so evicting rows really shrinks the file.
Within a batch the WAL may briefly hold that batch's pages on top.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import metrics
from .disk_ops import Clear, Delete, Put, Touch, Write
from .disk_state import Corrupt, Replaced
from .keyfilter import KeyFilter

# The disk tier logs under one name, whichever of its modules speaks.
log = logging.getLogger("edge_agent.cache.sqlite_tier")

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


def connect(path: Path, busy_timeout_s: float, query_only: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    if query_only:
        conn.execute("PRAGMA query_only = 1")
    return conn


class SQLiteStore:
    name = "disk"

    def __init__(self, path: Path, max_bytes: int, *, clock, busy_timeout_s: float, quick_check_max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock
        self.busy_timeout_s = busy_timeout_s
        self._quick_check_max_bytes = quick_check_max_bytes
        self.conn: Optional[sqlite3.Connection] = None
        self._inode: Optional[int] = None
        self.bytes = 0
        self.count = 0
        self.file_bound = max_bytes + FILE_SLACK
        self._wal_limit = min(max_bytes // 8, WAL_MAX)
        self.disk_bytes = 0  # db + wal + shm, measured after each batch
        self._page_size = 4096
        # None until the writer has read the stored keys: every get looks up.
        self.filter: Optional[KeyFilter] = None
        self.evictions = {"size": 0, "ttl": 0, "corrupt": 0}
        self._bytes_gauge = metrics.BYTES.labels(self.name)
        self._entries_gauge = metrics.ENTRIES.labels(self.name)
        self._encode_errors = metrics.ERRORS.labels("codec", "encode")

    # --- opening and checking ----------------------------------------------

    def open(self) -> bool:
        """Open (creating if needed) and check the file; raises on any fault.
        True when the file was too big to check here: the writer checks it
        (``quick_check``) while the tier already serves (values carry a crc)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        deferred = False
        conn = connect(self.path, self.busy_timeout_s, query_only=False)
        try:
            if size and not self._shrinkable(conn):
                conn.close()
                self.discard_files("it predates file-size accounting (no incremental auto-vacuum)")
                size = 0
                conn = connect(self.path, self.busy_timeout_s, query_only=False)
            # Before WAL mode and the tables, or it has no effect: evicted rows
            # then give their pages back to the file system (_shrink).
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.OperationalError("cannot switch to WAL")
            # quick_check reads every page: ~0.1 s for a 16 MB file, over a
            # second for 90 MB read cold, so a big file is checked later.
            if size <= self._quick_check_max_bytes:
                self.quick_check(conn)
            else:
                deferred = True
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
        self.conn = conn
        self.count, self.bytes = count, int(total)
        self._inode = inode
        self.disk_bytes = self._measure_files()
        # An empty store needs no scan; otherwise the writer builds the filter
        # before its first batch, and lookups go to SQLite until then.
        self.filter = KeyFilter(self._filter_capacity()) if count == 0 else None
        self.publish()
        return deferred

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

    def discard_files(self, why: str) -> None:
        """Start empty: the store is a cache, so losing it costs misses only."""
        log.info("disk cache: starting an empty store at %s: %s", self.path, why)
        for suffix in _SUFFIXES:
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    def move_aside(self) -> None:
        """Keep the corrupt file as ``<name>.corrupt-<ts>`` (one specimen,
        never a pile that fills the disk) and drop its WAL; raises OSError."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for old in self.path.parent.glob(self.path.name + ".corrupt-*"):
            old.unlink()
        if self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.corrupt-{stamp}"))
        for suffix in ("-wal", "-shm"):
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

    def build_filter(self) -> None:
        """A filter of exactly the keys stored now."""
        keys: List[bytes] = []
        cur = self.conn.execute("SELECT key FROM entries")
        while True:
            rows = cur.fetchmany(10_000)
            if not rows:
                break
            keys.extend(r[0] for r in rows)
        self.filter = KeyFilter.build(keys, self._filter_capacity())

    def quick_check(self, conn: Optional[sqlite3.Connection] = None) -> None:
        rows = (conn or self.conn).execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise Corrupt(f"quick_check: {str(rows[0][0])[:200]!r}")

    def probe(self) -> None:
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
            raise Replaced("database file vanished") from None
        if st.st_ino != self._inode:
            raise Replaced("database file was replaced")
        if head and head != SQLITE_MAGIC:
            raise Corrupt("database header is not SQLite")

    def close(self) -> None:
        self.filter = None
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None

    def rollback(self) -> None:
        """After a failed batch: leave no transaction open."""
        if self.conn is not None and self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # --- writing -------------------------------------------------------------

    def apply(self, writes: List[Write], sweep: bool) -> None:
        """One batch: probe the file, one transaction, then the bounds."""
        self.probe()
        self._transaction(writes)
        self._bound_wal()
        if sweep or self.bytes > self.max_bytes or self.disk_bytes > self.file_bound:
            self._evict()

    def _transaction(self, writes: List[Write]) -> None:
        if not writes:
            return
        conn = self.conn
        d_bytes = d_count = 0
        touches: Dict[bytes, float] = {}
        added: List[bytes] = []
        cleared = False
        f = self.filter
        conn.execute("BEGIN IMMEDIATE")
        for op in writes:
            cls = op.__class__
            if cls is Touch:
                touches[op.key] = op.at
                continue
            if cls is Clear:
                conn.execute("DELETE FROM entries")
                d_bytes, d_count, touches, added, cleared = -self.bytes, -self.count, {}, [], True
                continue
            key = op.key
            if cls is Put:
                value = op.value
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
            if cls is Delete:
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO entries (key, size, expires_at, last_access, value) VALUES (?, ?, ?, ?, ?)",
                    (key, size, op.expires_at, self._clock() if op.last_access is None else op.last_access, value),
                )
                d_bytes += size
                d_count += 1
                added.append(key)
        if touches:
            conn.executemany("UPDATE entries SET last_access = ? WHERE key = ?", [(t, k) for k, t in touches.items()])
        conn.execute("COMMIT")
        if cleared:
            self.filter = f = KeyFilter(self._filter_capacity())
        if f is not None:
            for key in added:
                f.add(key)
        self.bytes += d_bytes
        self.count += d_count
        self.publish()

    def _encode(self, encoder: Callable[[], bytes]) -> Optional[bytes]:
        try:
            return encoder()
        except Exception as exc:  # noqa: BLE001 - an answer we cannot store is skipped, never fatal
            log.warning("disk cache: not storing an answer the codec cannot encode: %s", exc)
            self._encode_errors.inc()
            return None

    # --- bounds --------------------------------------------------------------

    def _bound_wal(self) -> None:
        """Fold the WAL back into the database (and truncate it) once it has
        grown past its share of the bound, then measure the files."""
        try:
            wal = os.stat(str(self.path) + "-wal").st_size
        except FileNotFoundError:
            wal = 0
        if wal > self._wal_limit:
            self._checkpoint()
        self.disk_bytes = self._measure_files()

    def _checkpoint(self) -> None:
        # Readers hold their snapshot for one point read only, so TRUNCATE
        # waits (busy_timeout) a moment at most; if it still cannot finish,
        # the next batch tries again.
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _evict(self) -> None:
        conn = self.conn
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
            excess = self.bytes - int(self.max_bytes * 0.9)
            file_excess = self.disk_bytes - (int(self.max_bytes * 0.9) + FILE_SLACK)
            if self.disk_bytes > self.file_bound and file_excess > 0 and self.bytes > 0:
                db = max(1, self.disk_bytes - FILE_SLACK)
                excess = max(excess, int(file_excess * min(1.0, self.bytes / db)) + 1)
            elif self.bytes <= self.max_bytes:
                return
            if excess <= 0 or not self._evict_lru(excess):
                return
            self._shrink()
            if self.disk_bytes <= self.file_bound and self.bytes <= self.max_bytes:
                return

    def _evict_lru(self, excess: int) -> bool:
        """Delete least recently used rows worth ``excess`` bytes; False when none are left."""
        conn = self.conn
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
        self.conn.executescript("PRAGMA incremental_vacuum;")
        self._checkpoint()
        self.disk_bytes = self._measure_files()

    def _note_evicted(self, reason: str, n: int, freed: int) -> None:
        self.count -= n
        self.bytes -= freed
        self.note_eviction(reason, n)
        self.publish()

    def note_eviction(self, reason: str, n: int = 1) -> None:
        self.evictions[reason] += n
        metrics.EVICTIONS.labels(self.name, reason).inc(n)

    def publish(self) -> None:
        self._bytes_gauge.set(self.bytes)
        self._entries_gauge.set(self.count)
