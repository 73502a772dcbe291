"""Publish, track, flush, persist: the transport's at-least-once side.

``Delivery`` owns everything between "an answer (or telemetry) exists" and "the
broker has it": handing a message to paho or to the outbox while the broker is
away, the messages paho has not yet confirmed (``unconfirmed``, by mid), the
outbox flush after a reconnect, persisting what paho still holds at stop, and
the redelivery LRU (answers to recent QoS 1 requests, so a broker's resend of a
request is answered, not run again). It never decides what a request means
(inbound.py) nor where an answer may go (reply_topics.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import orjson
from prometheus_client import Counter

from ...errors import EdgeError
from .bridge import PublishProperties
from .inbound import Reply
from .outbox import KIND_RESPONSE, KIND_TELEMETRY, Outbox, OutMessage

log = logging.getLogger(__name__)

PUBLISH_FAILURES = Counter(
    "edge_agent_mqtt_publish_failures_total",
    "Answers or telemetry that could not be handed to paho or the outbox (logged; the request is acknowledged all the same).",
)

# Answers to recent QoS 1 requests, by (reply topic, correlation): a broker redelivery
# (DUP) of one of them is not run again. Bounded in count and in payload bytes; a
# larger answer keeps only its key.
DEDUP_SIZE = 4096
ANSWERS_MAX_BYTES = 4 * 1024 * 1024
ANSWER_KEEP_MAX = 256 * 1024
# After a reconnect, the same bytes under a known key are a broker's resend this long
# (a broker restored after a crash, and clients re-sending to it, do so at once).
REDELIVERY_WINDOW_S = 60.0
# Unacknowledged outbox messages on the wire at once while flushing.
FLUSH_WINDOW = 128


class _Answered:
    """A recent answer, for a redelivery of its request. ``confirmed``: the connection
    generation on which the broker took it (None while paho or the outbox hold it);
    ``digest``: the request's payload hash (None: not known, from the last run's outbox)."""

    __slots__ = ("msg", "confirmed", "size", "digest")

    def __init__(self, msg: OutMessage | None, size: int, digest: int | None) -> None:
        self.msg = msg
        self.confirmed: int | None = None
        self.size = size
        self.digest = digest


def publish_properties(m: OutMessage) -> PublishProperties | None:
    """The MQTT 5 properties of m (None: none to send)."""
    if not m.props and m.expires is None:
        return None
    corr = user = expiry = None
    if m.props:
        if m.props.get("correlation") is not None:
            corr = bytes.fromhex(m.props["correlation"])
        if m.props.get("user"):
            user = [tuple(kv) for kv in m.props["user"]]
    if m.expires is not None and m.seq is not None:
        # Only queued messages carry an expiry: the rest is sent at once.
        expiry = max(1, int(m.expires - time.time()))
    if corr is None and user is None and expiry is None:
        return None
    return PublishProperties(correlation=corr, user=user, expiry_s=expiry)


class Delivery:
    """One transport's outgoing messages. ``bridge`` is set once the transport made it;
    every method runs on the loop thread."""

    def __init__(self, outbox: Outbox, loop: asyncio.AbstractEventLoop, bridge=None) -> None:
        self.outbox = outbox
        self.bridge = bridge
        self._loop = loop
        # mid -> message paho has not yet confirmed (written for QoS 0, PUBACK for QoS 1).
        self.unconfirmed: Dict[int, OutMessage] = {}
        self._all_confirmed = asyncio.Event()
        self._flush_after = 0
        self._flush_task: Optional[asyncio.Task] = None
        self.draining = len(outbox) > 0
        self.stopping = False
        self.answers_sent = 0  # lets the transport tell whether a failing request was answered
        # Redelivery bookkeeping. running: dedup key -> payload hash of the request running
        # under it; waiting: the acks (mid, qos, generation) of its redeliveries, sent with
        # its answer (allocated only for those); answered: the LRU of recent answers.
        self.running: Dict[str, Optional[int]] = {}
        self.waiting: Dict[str, List[Tuple[int, int, int]]] = {}
        self.answered: OrderedDict[str, _Answered] = OrderedDict()
        self.answered_bytes = 0
        # Answers waiting from the last run: their requests, redelivered, are not run again.
        for key in outbox.dedup_keys():
            self.remember(key, None, None)

    # --- answers ---------------------------------------------------------------

    def answer(self, reply: Reply, body: bytes, user: list | None = None) -> None:
        self.answers_sent += 1
        props = None
        if reply.v5 and (reply.correlation is not None or user):
            props = {"correlation": reply.correlation.hex() if reply.correlation is not None else None, "user": user}
        m = OutMessage(reply.topic, body, reply.qos, props=props, expires=reply.expires, dedup=reply.dedup)
        if reply.dedup is not None:
            self.remember(reply.dedup, m, reply.digest)
        self.send(m)

    def answer_error(self, reply: Reply, err: EdgeError) -> None:
        doc = err.to_dict()
        if reply.id is not None:
            doc["id"] = reply.id
        self.answer(reply, orjson.dumps(doc))

    # --- publish and track -----------------------------------------------------

    def send(self, m: OutMessage) -> bool:
        """Hand m to paho, or to the outbox while the broker is away. Never raises: the
        caller still has to acknowledge the request (paho raises ValueError for a topic it
        will not publish to; SQLite can fail) -- False then, logged and counted."""
        try:
            b = self.bridge
            if b.connected and not self.draining:
                info = b.publish(m.topic, m.payload, m.qos, m.retain, publish_properties(m))
                if info.rc == 0:
                    if m.qos > 0:
                        self.track(info.mid, m)
                    return True
                if m.qos > 0:
                    # paho keeps QoS 1 and sends it after the reconnect.
                    self.track(info.mid, m)
                    return True
            self.outbox.put(m)
            if b.connected:
                self._kick_flush()
            return True
        except Exception as e:
            PUBLISH_FAILURES.inc()
            log.error("mqtt: could not publish a %s to %r: %s: %r", m.kind, m.topic[:200], type(e).__name__, str(e)[:200])
            return False

    def track(self, mid: int, m: OutMessage) -> None:
        """Wait for paho's word that m is out (written for QoS 0, PUBACK for QoS 1)."""
        if not self.unconfirmed:
            self.bridge.publish_events(True)
        self.unconfirmed[mid] = m

    def on_publish(self, mid: int) -> None:
        """paho's word for one tracked publish (the bridge's on_publish)."""
        m = self.unconfirmed.pop(mid, None)
        if m is not None:
            if m.seq is not None:
                self.outbox.remove(m.seq)
            if m.dedup is not None:
                self._confirmed(m)
        self._maybe_all_confirmed()

    def _maybe_all_confirmed(self) -> None:
        if not self.unconfirmed:
            self._all_confirmed.set()
            self.bridge.publish_events(False)

    async def wait_all_confirmed(self) -> None:
        while self.unconfirmed:
            self._all_confirmed.clear()
            await self._all_confirmed.wait()

    # --- connection events -----------------------------------------------------

    def on_connect(self) -> None:
        # paho re-sends its own unacknowledged messages; the outbox is walked again
        # from the start, skipping rows paho still holds.
        self._flush_after = 0
        if len(self.outbox):
            self.draining = True
            self._kick_flush()

    def on_disconnect(self) -> None:
        # QoS 0 packets not yet written are lost with the socket; outbox rows among
        # them are sent again by the next flush.
        for mid in [mid for mid, m in self.unconfirmed.items() if m.qos == 0]:
            del self.unconfirmed[mid]
        self._maybe_all_confirmed()

    def persist_unconfirmed(self) -> None:
        """At stop: answers paho still holds unacknowledged would die with the process."""
        for m in self.unconfirmed.values():
            if m.seq is None and m.kind in (KIND_RESPONSE, KIND_TELEMETRY):
                self.outbox.put(m)
        self.unconfirmed.clear()
        self._maybe_all_confirmed()
        if self._flush_task is not None:
            self._flush_task.cancel()

    # --- outbox flush ----------------------------------------------------------

    def _kick_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._loop.create_task(self._flush(), name="mqtt-outbox-flush")

    async def _flush(self) -> None:
        """Send outbox rows in order; each is deleted on its PUBACK."""
        b = self.bridge
        while b.connected and not self.stopping:
            held = {m.seq for m in self.unconfirmed.values() if m.seq is not None}
            batch = self.outbox.peek(self._flush_after, FLUSH_WINDOW)
            if not batch:
                self.draining = False
                return
            for m in batch:
                while len(self.unconfirmed) >= FLUSH_WINDOW and b.connected:
                    self._all_confirmed.clear()
                    try:
                        await asyncio.wait_for(self._all_confirmed.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
                if not b.connected:
                    return
                self._flush_after = m.seq
                if m.seq in held:
                    continue
                info = b.publish(m.topic, m.payload, m.qos, m.retain, publish_properties(m))
                self.track(info.mid, m)
            await asyncio.sleep(0)

    # --- redelivery LRU --------------------------------------------------------

    def redelivered(self, key: str, msg, gen: int, digest: int, connected_at: float) -> bool | None:
        """A broker redelivery of a request seen before is never run twice.

        A redelivery is a message the broker flags DUP, or the same bytes under the same key
        within REDELIVERY_WINDOW_S of a reconnect (``connected_at``, monotonic): a broker
        restored from its persistence file after a crash sends again, unflagged, what the file
        had not recorded as sent, and forwards as new the requests clients re-send to it.
        Elsewhere the same key is a new request (a client reusing a correlation).
        Still running: acknowledged with the original's answer (True: the run owns the ack).
        Answered: acknowledged now (False); the answer is published again only if the broker
        took it on an earlier connection than this one (a broker that crashed since may have
        lost it); while paho or the outbox still hold it, or the broker took it on this very
        connection, it reaches the requester anyway. None: a new request (run it).
        """
        resend_window = gen > 1 and time.monotonic() - connected_at < REDELIVERY_WINDOW_S
        if key in self.running:
            if not (msg.dup or (resend_window and self.running[key] == digest)):
                return None
            self.waiting.setdefault(key, []).append((msg.mid, msg.qos, gen))
            return True
        e = self.answered.get(key)
        if e is None or not (msg.dup or (resend_window and e.digest == digest)):
            return None
        m = e.msg
        if e.confirmed is not None and e.confirmed != self.bridge.generation and m is not None:
            if m.expires is None or m.expires > time.time():
                log.info("mqtt: request redelivered on %r after its answer went out on an earlier connection: answer sent again", msg.topic)
                again = OutMessage(m.topic, m.payload, m.qos, props=m.props, expires=m.expires, dedup=key)
                self.remember(key, again, e.digest)
                self.send(again)
        else:
            log.debug("mqtt: redelivered request on %r answered already", msg.topic)
        return False

    def finished(self, key: str) -> Optional[List[Tuple[int, int, int]]]:
        """The run under key is over: the acks of its redeliveries, to send with its own."""
        del self.running[key]
        return self.waiting.pop(key, None) if self.waiting else None

    def remember(self, key: str, m: OutMessage | None, digest: int | None) -> None:
        old = self.answered.pop(key, None)
        if old is not None:
            self.answered_bytes -= old.size
        size = 64 + (len(m.payload) + len(m.topic) if m is not None else 0)
        if size > ANSWER_KEEP_MAX:
            m, size = None, 64
        self.answered[key] = _Answered(m, size, digest)
        self.answered_bytes += size
        while len(self.answered) > DEDUP_SIZE or self.answered_bytes > ANSWERS_MAX_BYTES:
            _, gone = self.answered.popitem(last=False)
            self.answered_bytes -= gone.size

    def _confirmed(self, m: OutMessage) -> None:
        """The broker took the answer m (PUBACK)."""
        e = self.answered.get(m.dedup)
        if e is None or e.confirmed is not None:
            return
        if e.msg is None and e.size == 64:
            self.remember(m.dedup, m, e.digest)  # an answer from the outbox of the last run: keep it now
            e = self.answered[m.dedup]
        elif e.msg is not m and (m.seq is None or e.msg.seq != m.seq):
            return  # a newer answer for the same key is still on its way
        e.confirmed = self.bridge.generation
