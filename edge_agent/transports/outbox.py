"""On-disk queue of MQTT messages produced while the broker is unreachable.

SQLite (WAL, synchronous=FULL) so a message accepted here survives a daemon
restart or a power cut. Rows are kept in insertion order (``seq``) and are
removed only after the broker acknowledged them (PUBACK for QoS 1). Bounded by
bytes and age: when full, telemetry goes first, then expired responses; a
response still within its expiry is never evicted for a newer message; a new
message that does not fit is refused and counted instead.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import orjson
from prometheus_client import Counter, Gauge

from ..compat import slotted_dataclass

log = logging.getLogger(__name__)

OUTBOX_MESSAGES = Gauge("edge_agent_mqtt_outbox_messages", "Messages waiting in the MQTT outbox.")
OUTBOX_BYTES = Gauge("edge_agent_mqtt_outbox_bytes", "Payload bytes waiting in the MQTT outbox.")
OUTBOX_DROPPED = Counter(
    "edge_agent_mqtt_outbox_dropped_total", "Outbox messages dropped, by kind and reason (full, expired).", ["kind", "reason"]
)

KIND_RESPONSE = "response"
KIND_TELEMETRY = "telemetry"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    props BLOB,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    size INTEGER NOT NULL,
    dedup TEXT
);
"""


@slotted_dataclass
class OutMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    kind: str = KIND_RESPONSE
    # Plain data (JSON-able) for MQTT 5 properties: correlation (hex),
    # content_type, user (list of pairs); rebuilt into paho Properties on send.
    props: dict | None = None
    # Wall-clock time after which the message is worthless.
    expires: float | None = None
    seq: int | None = None
    created: float | None = None
    # The request this answers (reply topic + correlation): loaded at start so a
    # request the broker redelivers after a restart is not run a second time.
    dedup: str | None = None


class Outbox:
    def __init__(self, directory: Path, max_bytes: int, max_age_s: float) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "outbox.sqlite3"
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._count, self._bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self._publish_gauges()
        if self._count:
            log.info("mqtt outbox: %d messages (%d bytes) waiting from a previous run", self._count, self._bytes)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _publish_gauges(self) -> None:
        OUTBOX_MESSAGES.set(self._count)
        OUTBOX_BYTES.set(self._bytes)

    def put(self, msg: OutMessage, now: float | None = None) -> bool:
        """Store ``msg``; False (and counted) when it cannot fit."""
        now = time.time() if now is None else now
        size = len(msg.payload) + len(msg.topic)
        expires = min(msg.expires if msg.expires is not None else now + self.max_age_s, now + self.max_age_s)
        if expires <= now:
            OUTBOX_DROPPED.labels(msg.kind, "expired").inc()
            return False
        if not self._make_room(size, msg.kind, now):
            OUTBOX_DROPPED.labels(msg.kind, "full").inc()
            log.warning("mqtt outbox full (%d bytes): dropped a %s for %s", self._bytes, msg.kind, msg.topic)
            return False
        props = orjson.dumps(msg.props) if msg.props else None
        cur = self._db.execute(
            "INSERT INTO outbox(kind, topic, payload, qos, retain, props, created, expires, size, dedup) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (msg.kind, msg.topic, msg.payload, msg.qos, int(msg.retain), props, now, expires, size, msg.dedup),
        )
        msg.seq = cur.lastrowid
        self._count += 1
        self._bytes += size
        self._publish_gauges()
        return True

    def _delete_where(self, where: str, args: tuple, kind: str, reason: str) -> None:
        # No DELETE ... RETURNING: JetPack's Ubuntu ships SQLite older than 3.35.
        n, size = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE {where}", args).fetchone()
        if n:
            self._db.execute(f"DELETE FROM outbox WHERE {where}", args)
            self._count -= n
            self._bytes -= size
            OUTBOX_DROPPED.labels(kind, reason).inc(n)

    def expire(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for kind in (KIND_TELEMETRY, KIND_RESPONSE):
            self._delete_where("kind = ? AND expires <= ?", (kind, now), kind, "expired")
        self._publish_gauges()

    def _make_room(self, size: int, kind: str, now: float) -> bool:
        if self._bytes + size <= self.max_bytes:
            return True
        self.expire(now)
        # Oldest telemetry first: it is the least valuable and is re-sent anyway.
        while self._bytes + size > self.max_bytes:
            row = self._db.execute("SELECT seq FROM outbox WHERE kind = ? ORDER BY seq LIMIT 1", (KIND_TELEMETRY,)).fetchone()
            if row is None:
                break
            self._delete_where("seq = ?", (row[0],), KIND_TELEMETRY, "full")
        self._publish_gauges()
        return self._bytes + size <= self.max_bytes

    def peek(self, after_seq: int, limit: int, now: float | None = None) -> list[OutMessage]:
        """Oldest unexpired messages with seq > after_seq, in order."""
        now = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT seq, kind, topic, payload, qos, retain, props, created, expires, dedup FROM outbox "
            "WHERE seq > ? AND expires > ? ORDER BY seq LIMIT ?",
            (after_seq, now, limit),
        ).fetchall()
        return [
            OutMessage(
                topic=t, payload=bytes(p), qos=q, retain=bool(r), kind=k,
                props=orjson.loads(pr) if pr else None, expires=e, seq=s, created=c, dedup=d,
            )
            for s, k, t, p, q, r, pr, c, e, d in rows
        ]

    def dedup_keys(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT dedup FROM outbox WHERE dedup IS NOT NULL ORDER BY seq")]

    def remove(self, seq: int) -> None:
        row = self._db.execute("SELECT size FROM outbox WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._count -= 1
            self._bytes -= row[0]
            self._publish_gauges()

    def close(self) -> None:
        self._db.close()
