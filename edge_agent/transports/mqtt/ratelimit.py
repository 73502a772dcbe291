"""Per-client token buckets, under one bucket for all clients together.

Keyed by what the transport can tell clients apart by without trusting what a
client says about itself: over MQTT the reply topic's namespace (reply_topics.py).
That key is only as good as the broker ACL: a client may name any namespace the
reply-topic rule allows, and one that rotates namespaces gets a fresh bucket
each time (it never reads the answers if the ACL lets each client read only
its own namespace, but the daemon still runs the requests). So the per-client
buckets sit under a total bucket (``total_rate``/``total_burst``): whatever
identities requests claim, together they get no more than that (docs/MQTT.md).
The table is an LRU bounded in size so a stream of new keys cannot grow memory
without limit; an evicted key just starts with a full bucket again.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_clients: int = 10_000, clock=time.monotonic,
                 total_rate: float | None = None, total_burst: int | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        # key -> (tokens, last refill time)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # All clients together (None: no total bound).
        self.total_rate = float(total_rate) if total_rate is not None else None
        self.total_burst = float(total_burst if total_burst is not None else (total_rate or 0) * 2)
        self._total = (self.total_burst, clock())

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= cost
        if ok and self.total_rate is not None:
            # The client's own bucket allows it; all clients together must too.
            # A request the total refuses costs its client nothing.
            total, t_last = self._total
            total = min(self.total_burst, total + (now - t_last) * self.total_rate)
            ok = total >= cost
            self._total = (total - cost if ok else total, now)
        if ok:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)
