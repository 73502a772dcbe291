"""Identical concurrent requests share one in-flight computation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from . import metrics

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """The first caller for a key starts ``factory()`` as a task; callers that
    arrive while it runs await the same task. The work runs in its own task and
    every caller awaits it through ``shield``, so one caller being cancelled
    (a client gone) neither cancels the work nor fails the others. The entry is
    dropped when the task ends, so the factory should store its result in the
    cache before returning: a request arriving after that finds the cache.
    One event loop only (not thread-safe)."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Task] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> T:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(factory())
            self._inflight[key] = task
            task.add_done_callback(lambda t, key=key: self._done(key, t))
        else:
            metrics.SINGLEFLIGHT_SHARED.inc()
        return await asyncio.shield(task)

    def _done(self, key: Hashable, task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" noise if all waiters left
