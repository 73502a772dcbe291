"""Companion side of offloading: take edge units' requests on shared subscriptions.

A companion (``mode: companion``) subscribes ``$share/{group}/{prefix}/offload/{model}[/+]``
for every model it serves, following reloads, so the broker hands each offloaded
request to one companion of the group. The requests themselves are handled like
any other (the transport's request path); answers go back to the edge unit's
``offload-replies`` topic (topics.py), which the companion's reply-topic rule allows.
Config refuses companions on MQTT 3.1.1 (shared subscriptions and ResponseTopic
need MQTT 5), so no protocol check is repeated here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable, Set

from .topics import offload_filters, offload_prefix

log = logging.getLogger(__name__)

REFRESH_S = 2.0


class Companion:
    """The shared offload subscriptions of one transport."""

    def __init__(self, group: str, prefix: str, models: Callable[[], Iterable[str]]) -> None:
        self.group = group
        self.prefix = offload_prefix(prefix)
        self._models = models
        self._subscribed: Set[str] = set()

    def on_connect(self, bridge) -> None:
        # A new session may have lost the subscriptions: make them all again.
        self._subscribed = set()
        self.refresh(bridge)

    def refresh(self, bridge) -> None:
        """Follow the served models: a model loaded by a reload starts taking offloaded work."""
        if bridge is None or not bridge.connected or not bridge.v5:
            return
        try:
            want = set(self._models())
        except Exception:  # the daemon's hook must not take the transport down
            log.exception("mqtt: listing served models for offload failed")
            return
        added, removed = want - self._subscribed, self._subscribed - want
        if added:
            bridge.subscribe([(f, 1) for m in sorted(added) for f in offload_filters(self.group, self.prefix, m)])
        if removed:
            bridge.unsubscribe([f for m in sorted(removed) for f in offload_filters(self.group, self.prefix, m)])
        if added or removed:
            log.info("mqtt: taking offloaded requests for %s (group %s)", sorted(want) or "no models", self.group)
        self._subscribed = want

    async def refresh_loop(self, bridge) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            self.refresh(bridge)
