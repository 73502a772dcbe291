"""Per-client token buckets.

Keyed by what the transport can tell clients apart by without trusting what a
client says about itself: over MQTT the reply topic's namespace (reply_topics.py;
fair per client only when the broker ACL lets each client read its own namespace
alone, docs/MQTT.md). The table is an LRU bounded in size so a stream of new keys
cannot grow memory without limit; an evicted key just starts with a full bucket
again.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_clients: int = 10_000, clock=time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        # key -> (tokens, last refill time)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._buckets)
