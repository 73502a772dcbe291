"""One request through a pipeline's step batchers: the batcher of a pipeline.

``PipelineRunner`` has the face of serving/batcher.py's ``Batcher``
(``submit`` -> future, ``expected_run``, ``queued``, ``drain``, ``close``,
``alive``, ``sweep_expired``), so the service and the repository need no
branch for pipelines and the tensor path pays nothing for them.

A request decodes on the runner's small thread pool, then its image goes to
the first step's batcher, and each crop it yields to the next step's batcher
as an item of its own: crops of many images batch together, and while one
image is in recognition the next is in detection. Every step gets the
request's one deadline, so a chain never runs past it (each batcher refuses
to start an item too near its deadline). Collate and finish run on the step
batchers' threads, decoding on the pool: nothing CPU-heavy on the loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import DeadlineExceeded, Overloaded, ShuttingDown
from ..ops.metrics import BATCHER_STUCK, QUEUE_DEPTH
from ..serving.batcher import RUN_EWMA, Batcher
from .step import STEP_CPU

_now = time.monotonic


def _first_error(results: list):
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


class PipelineRunner:
    def __init__(self, model, loop: asyncio.AbstractEventLoop, metrics, max_delay_s: float, max_queue: int,
                 decode_threads: int = 2) -> None:
        self.model = model
        self.loop = loop
        self.metrics = metrics
        self.max_queue = max_queue
        self.instances = 1
        self.batchers = []
        for s in model.steps:
            b = s.step.batching
            delay = b.max_queue_delay_us / 1e6 if b.max_queue_delay_us is not None else max_delay_s
            # A crop step may hold many items per request: its queue bound is per item.
            self.batchers.append(Batcher(s, loop, s.metrics, delay, max_queue * (1 if s is model.steps[0] else 64),
                                         None, b.instances))
        # The step batchers set the (model, version) queue gauge; the pipeline's is its requests in flight.
        QUEUE_DEPTH.labels(model.name, model.version).set_function(lambda: self.queued)
        self.pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix=f"pipeline-{model.name}-{model.version}")
        self.inflight = 0
        self.batches = 0
        self.expected_run = 0.0
        self._closing = False

    @property
    def queued(self) -> int:
        return self.inflight

    @property
    def batch_started(self):
        started = [b.batch_started for b in self.batchers if b.batch_started is not None]
        return min(started) if started else None

    def submit(self, prepared, priority: int, deadline: float, store=None) -> asyncio.Future:
        """Start a request through the steps; a future of its outputs."""
        if self._closing:
            raise ShuttingDown(f"model '{self.model.name}' version {self.model.version} is unloading")
        if self.inflight >= self.max_queue:
            raise Overloaded(f"model '{self.model.name}': {self.max_queue} images in the pipeline", reason="queue_full")
        self.inflight += 1
        return self.loop.create_task(self._run(prepared, priority, deadline, store))

    async def _run(self, prepared, priority: int, deadline: float, store):
        t0 = _now()
        try:
            model = self.model
            data = prepared.feeds[model.input.name].reshape(-1)[0]
            # Waiting for the pool counts against the deadline too: answered at it, not when decoded.
            try:
                first = await asyncio.wait_for(self.loop.run_in_executor(self.pool, model.start, data), max(0.0, deadline - t0))
            except asyncio.TimeoutError:
                raise DeadlineExceeded("deadline passed while the image waited to be decoded; it was not run") from None
            regions = await self.batchers[0].submit(first, priority, deadline)
            items = regions.crops
            for b in self.batchers[1:]:
                if not items:
                    break
                step_items = list(b.model.op.items(items))
                if len(step_items) > b.room():  # all or none: no crops left running for a refused image
                    raise Overloaded(f"model '{self.model.name}': {len(step_items)} crops do not fit the queue of "
                                     f"step '{b.model.step.name}' ({b.max_queue})", reason="queue_full")
                futs = [b.submit(it, priority, deadline) for it in step_items]
                items = _first_error(await asyncio.gather(*futs, return_exceptions=True))
            outputs = model.answer(regions, items or [], prepared.outputs)
            if store is not None:
                await self.loop.run_in_executor(self.pool, store, outputs)
            dt = _now() - t0
            e = self.expected_run
            self.expected_run = dt if not e else e + (dt - e) * RUN_EWMA
            self.batches += 1
            return outputs
        finally:
            self.inflight -= 1

    def sweep_expired(self) -> int:
        return sum(b.sweep_expired() for b in self.batchers)

    def alive(self, stuck_after_s: float) -> bool:
        ok = all([b.alive(stuck_after_s) for b in self.batchers])
        BATCHER_STUCK.labels(self.model.name, self.model.version).set(0 if ok else 1)
        return ok

    async def drain(self, timeout: float) -> bool:
        """Stop taking requests, wait for the ones in the chain."""
        self._closing = True
        end = _now() + timeout
        while self.inflight and _now() < end:
            await asyncio.sleep(0.01)
        for b in self.batchers:
            await b.drain(max(0.0, end - _now()))
        return not self.inflight

    def close(self) -> None:
        self._closing = True
        for b in self.batchers:
            b.close()
        self.pool.shutdown(wait=False)
        self.metrics.remove()
        try:
            STEP_CPU.remove(self.model.name, self.model.version, "decode", "pre")
        except KeyError:
            pass
