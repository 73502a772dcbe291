"""Identical concurrent requests share one in-flight computation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from . import metrics

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Flight:
    __slots__ = ("work", "waiters")

    def __init__(self, work: asyncio.Future) -> None:
        self.work = work
        self.waiters: list[asyncio.Future] | None = None


class SingleFlight(Generic[T]):
    """The first caller for a key (the leader) starts ``factory()`` and awaits
    it itself; callers that arrive while it runs (followers) each await a
    plain future of their own, which the leader resolves. ``store(result)``
    runs once, before any follower is answered and before the key is released,
    so a request arriving after that finds the answer in the cache.

    A miss thus costs what an uncached request costs (one future, awaited by
    its own caller) plus a dict entry: no task, no shield, no callbacks.
    ``factory`` may return a future (the batcher's, used as it is) or a
    coroutine (run in a task).

    Cancellation. A follower's cancel only ends its own wait. A leader's
    cancel reaches the work it awaits (asyncio cancels what a task awaits);
    if followers are waiting, the work is started again for them at once, so
    no other caller fails for it. Transports never cancel a request when its
    client goes away (only shutdown does), so this path is rare.
    One event loop only (not thread-safe)."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, _Flight] = {}
        self._shared = metrics.SINGLEFLIGHT_SHARED

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(
        self, key: Hashable, factory: Callable[[], Awaitable[T]], store: Callable[[T], None] | None = None
    ) -> T:
        flight = self._inflight.get(key)
        if flight is not None and not flight.work.cancelled():
            self._shared.inc()
            waiter = asyncio.get_running_loop().create_future()
            if flight.waiters is None:
                flight.waiters = [waiter]
            else:
                flight.waiters.append(waiter)
            return await waiter
        work = _start(factory)
        flight = self._inflight[key] = _Flight(work)
        try:
            result = await work
        except asyncio.CancelledError:
            if work.cancelled():
                self._restart(key, flight, factory, store)
            else:  # this caller was cancelled after the work had finished
                self._complete(key, flight, store)
            raise
        except BaseException:
            self._complete(key, flight, store)
            raise
        self._complete(key, flight, store)
        return result

    def _complete(self, key: Hashable, flight: _Flight, store) -> None:
        """The work is done: store its result, release the key, answer the followers."""
        work = flight.work
        exc = work.exception()
        if exc is None and store is not None:
            try:
                store(work.result())
            except Exception:  # noqa: BLE001 - storing must never fail the request
                log.exception("single flight: storing a result failed")
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if flight.waiters:
            for w in flight.waiters:
                if w.done():  # that follower was cancelled
                    continue
                if exc is None:
                    w.set_result(work.result())
                else:
                    w.set_exception(exc)

    def _restart(self, key: Hashable, flight: _Flight, factory, store) -> None:
        """The leader's cancel took the work with it: start it again for the followers."""
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        waiters = [w for w in flight.waiters or () if not w.done()]
        if not waiters:
            return
        try:
            work = _start(factory)
        except Exception as exc:  # noqa: BLE001 - e.g. the queue is full: the followers get that error
            for w in waiters:
                w.set_exception(exc)
            return
        again = self._inflight[key] = _Flight(work)
        again.waiters = waiters
        work.add_done_callback(lambda w: self._finish_restarted(key, again, store))

    def _finish_restarted(self, key: Hashable, flight: _Flight, store) -> None:
        if flight.work.cancelled():  # no leader to blame: the work itself was cancelled (shutdown)
            self._cancel_all(key, flight)
            return
        self._complete(key, flight, store)

    def _cancel_all(self, key: Hashable, flight: _Flight) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        for w in flight.waiters or ():
            w.cancel()


def _start(factory) -> asyncio.Future:
    work = factory()
    return work if asyncio.isfuture(work) else asyncio.ensure_future(work)
