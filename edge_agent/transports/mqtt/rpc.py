"""Request/answer over MQTT: futures by correlation, for offloading and the CLI client.

A caller registers a waiter under its correlation before it publishes, and the
message handler resolves the waiter when an answer with that correlation comes
back. ``Calls.call`` is the only way the transport registers one, and it removes
the waiter in ``finally`` whatever happens (answer, timeout, cancellation), so
the table never outgrows the calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Dict, Hashable, Iterator


class Calls:
    """Waiters by correlation (bytes for MQTT 5 CorrelationData, str for a 3.1.1 id)."""

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: Dict[Hashable, asyncio.Future] = {}

    def register(self, key: Hashable) -> asyncio.Future:
        """A waiter that stays until answered or cancel_all() (the CLI client's send())."""
        fut = asyncio.get_running_loop().create_future()
        self.futures[key] = fut
        return fut

    @contextlib.contextmanager
    def call(self, key: Hashable) -> Iterator[asyncio.Future]:
        """Register a waiter for the duration of the ``with`` block.

        Register BEFORE publishing: [1] an answer can arrive (and be dispatched by the
        loop) as soon as the publish is written, before the caller awaits anything; a
        waiter registered after it would find the answer gone and wait for its timeout.
        [2] The waiter is removed in ``finally`` even when the caller is cancelled or
        times out: an answer arriving after that finds no waiter (``resolve`` returns
        False, the caller logs it) rather than a dead future kept forever.
        """
        fut = asyncio.get_running_loop().create_future()
        self.futures[key] = fut  # [1]
        try:
            yield fut
        finally:
            if self.futures.get(key) is fut:  # [2]
                del self.futures[key]

    def resolve(self, key: Hashable, value) -> bool:
        """Hand value to the waiter of key; False when none waits (late, duplicate, unknown)."""
        fut = self.futures.pop(key, None)
        if fut is None or fut.done():
            return False
        fut.set_result(value)
        return True

    def cancel_all(self) -> None:
        for f in self.futures.values():
            if not f.done():
                f.cancel()
        self.futures.clear()
