"""Batcher.submit(store=...): the response cache's put runs on the worker thread, before the answer is seen."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from daemon_proc import copy_digits

from edge_agent.config import RuntimeConfig
from edge_agent.errors import InferenceFailed
from edge_agent.ops.metrics import ModelMetrics
from edge_agent.runtime.session import LoadedModel
from edge_agent.serving.batcher import Batcher
from edge_agent.types import PRIORITY_NORMAL, InferRequest


def test_store_runs_on_the_worker_before_the_future_resolves_and_never_for_a_failure(tmp_path):
    copy_digits(tmp_path / "models", batching__max_queue_delay_us=0)
    model = LoadedModel("digits", "1", tmp_path / "models" / "digits" / "1", RuntimeConfig(), tmp_path / "state")
    x = np.random.default_rng(3).uniform(0, 16, (3, 64)).astype(np.float32)
    bad = x[2:3]
    real = model.run_batch

    def run_batch(batch):  # the third request breaks the model, alone or in a batch
        if any(np.array_equal(p.feeds["input"], bad) for p in batch):
            raise RuntimeError("broken input")
        return real(batch)

    model.run_batch = run_batch
    stored: dict[int, tuple] = {}

    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, "store"), 0.0, 16)
        futs: list[asyncio.Future] = []

        def store(i: int):
            def put(outputs):
                stored[i] = (threading.current_thread().name, futs[i].done(), outputs)
                if i == 1:
                    raise OSError("cache says no")  # must not fail the request
            return put

        try:
            for i in range(3):
                prepared = model.prepare(InferRequest(model="digits", inputs={"input": x[i : i + 1]}))
                futs.append(b.submit(prepared, PRIORITY_NORMAL, loop.time() + 30, store(i)))
            return await asyncio.gather(*futs, return_exceptions=True)
        finally:
            b.close()

    results = asyncio.run(scenario())
    assert isinstance(results[2], InferenceFailed) and 2 not in stored
    for i in (0, 1):
        thread, done_before, outputs = stored[i]
        assert thread.startswith("batcher-digits") and not done_before
        assert outputs is results[i]
        want = model.session.run(None, {"input": x[i : i + 1]})
        np.testing.assert_allclose(results[i][model.output_names[0]], want[0], rtol=1e-5)
