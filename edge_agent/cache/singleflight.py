"""Identical concurrent requests share one in-flight computation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from . import metrics

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The first caller for a key starts ``factory()``; callers that arrive
    while it runs share its result. The factory should store its result in
    the cache before it completes (a done callback added before returning a
    future runs first): a request arriving after that finds the cache.

    When the factory returns a future (the batcher's), that future IS the
    shared work: no task is made for it. Otherwise (a coroutine) it runs in
    its own task. Every caller waits on a future of its own, resolved from the
    work's done callback, so a cancelled caller (a client gone) cancels only
    its own wait, never the work nor the others' waits.
    One event loop only (not thread-safe)."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, list] = {}
        self._shared = metrics.SINGLEFLIGHT_SHARED

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        waiters = self._inflight.get(key)
        if waiters is None:
            work = factory()
            if not asyncio.isfuture(work):
                work = asyncio.ensure_future(work)
            if work.done():  # answered at once: nothing to share
                return work.result()
            waiters = self._inflight[key] = []
            work.add_done_callback(lambda w, key=key: self._done(key, w))
        else:
            self._shared.inc()
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        return await waiter

    def _done(self, key: Hashable, work: asyncio.Future) -> None:
        waiters = self._inflight.pop(key)
        if work.cancelled():
            for w in waiters:
                w.cancel()
            return
        exc = work.exception()  # also marks it retrieved when every waiter left
        for w in waiters:
            if w.done():  # that caller was cancelled
                continue
            if exc is None:
                w.set_result(work.result())
            else:
                w.set_exception(exc)
