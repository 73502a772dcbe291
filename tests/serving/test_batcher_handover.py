"""Batcher.submit hands the requests of one event-loop turn to the workers together."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from batcher_helpers import X, digits_model, prepared

from edge_agent.errors import Overloaded, ShuttingDown
from edge_agent.ops.metrics import ModelMetrics
from edge_agent.serving.batcher import Batcher
from edge_agent.types import PRIORITY_HIGH, PRIORITY_NORMAL


@pytest.fixture
def model(tmp_path):
    return digits_model(tmp_path)


def test_one_turn_is_one_hand_over_even_when_the_loop_lets_go_of_the_gil(model):
    """Between two submits the loop releases the GIL (here a sleep; in the
    daemon, a socket read). A worker woken per request would take the first
    one alone; handed over at the end of the turn, all eight run as one batch
    and each gets its own row back."""
    sizes: list[int] = []
    real = model.run_batch

    def run_batch(batch):
        sizes.append(len(batch))
        return real(batch)

    model.run_batch = run_batch

    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, "handover"), 0.0, 64)
        try:
            futs = []
            for i in range(8):
                futs.append(b.submit(prepared(model, i), PRIORITY_HIGH if i == 7 else PRIORITY_NORMAL, time.monotonic() + 30))
                assert b.queued == i + 1  # counted while still on the loop's side
                time.sleep(0.002)
            return await asyncio.gather(*futs)
        finally:
            b.close()

    results = asyncio.run(scenario())
    assert sizes == [8]
    for i, out in enumerate(results):
        want = model.session.run(None, {"input": X[i : i + 1]})
        np.testing.assert_allclose(out["probabilities"], want[1], rtol=1e-6)


def test_the_queue_bound_counts_requests_not_yet_handed_over(model):
    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, "bound"), 0.0, 4)
        try:
            futs = [b.submit(prepared(model, i), PRIORITY_NORMAL, time.monotonic() + 30) for i in range(4)]
            with pytest.raises(Overloaded):
                b.submit(prepared(model, 4), PRIORITY_NORMAL, time.monotonic() + 30)
            return await asyncio.gather(*futs)
        finally:
            b.close()

    assert len(asyncio.run(scenario())) == 4


def test_close_fails_requests_of_the_same_turn_instead_of_losing_them(model):
    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, "close"), 0.0, 16)
        futs = [b.submit(prepared(model, i), PRIORITY_NORMAL, time.monotonic() + 30) for i in range(3)]
        b.close()
        with pytest.raises(ShuttingDown):
            b.submit(prepared(model, 3), PRIORITY_NORMAL, time.monotonic() + 30)
        return await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)

    results = asyncio.run(scenario())
    assert [type(r) for r in results] == [ShuttingDown] * 3


def test_drain_waits_for_requests_not_yet_handed_over(model):
    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, "drain"), 0.0, 16)
        try:
            futs = [b.submit(prepared(model, i), PRIORITY_NORMAL, time.monotonic() + 30) for i in range(3)]
            drained = await b.drain(5)
            return drained, [f.done() and f.exception() is None for f in futs]
        finally:
            b.close()

    drained, ok = asyncio.run(scenario())
    assert drained and ok == [True, True, True]
