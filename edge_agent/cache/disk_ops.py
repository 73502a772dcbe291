"""What the disk tier's writer queue carries: one small class per operation.

Callers on any thread put these on the queue; the one writer thread takes
them in batches (sqlite_tier.SQLiteTier._run). ``Write`` operations are
applied together in one transaction (sqlite_store.SQLiteStore.apply); the
others steer the writer itself. Plain classes with ``__slots__``: a put is
made on the request path (a first hit, a spill), so it must be cheap.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Union


class Write:
    """An operation on the rows, applied inside the writer's transaction."""

    __slots__ = ()


class Put(Write):
    """Store ``value``, or the bytes the writer gets by calling it (an encoder
    run off the request path). ``last_access`` places the row in LRU order
    (None: when the writer applies it)."""

    __slots__ = ("key", "value", "expires_at", "last_access")

    def __init__(self, key: bytes, value: Union[bytes, Callable[[], bytes]], expires_at: float,
                 last_access: Optional[float] = None) -> None:
        self.key = key
        self.value = value
        self.expires_at = expires_at
        self.last_access = last_access


class Delete(Write):
    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key


class Touch(Write):
    """The row was used at ``at`` (an upper tier served it), so LRU keeps it."""

    __slots__ = ("key", "at")

    def __init__(self, key: bytes, at: float) -> None:
        self.key = key
        self.at = at


class Clear(Write):
    __slots__ = ()


class Sweep:
    """Drop expired rows now (the writer also does so every probe interval)."""

    __slots__ = ()


class Wake:
    """Nothing to do but look at the state (a reader asked for a rebuild)."""

    __slots__ = ()


class Flush:
    """Set ``done`` once every operation queued before this one is applied."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class Stop:
    """Apply what came before, then end the writer thread."""

    __slots__ = ()


# Operations without arguments are shared.
CLEAR, SWEEP, WAKE, STOP = Clear(), Sweep(), Wake(), Stop()
