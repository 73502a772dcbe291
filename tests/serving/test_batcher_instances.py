"""batching.instances: several worker threads share one queue and one real ORT session."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from daemon_proc import copy_digits

from edge_agent.config import RuntimeConfig
from edge_agent.ops.metrics import ModelMetrics
from edge_agent.runtime.model_spec import ModelSpec
from edge_agent.runtime.session import LoadedModel, intra_op_threads
from edge_agent.serving.batcher import Batcher
from edge_agent.types import PRIORITY_NORMAL, InferRequest


def digits(tmp_path, instances: int) -> LoadedModel:
    copy_digits(tmp_path / "models", batching__instances=instances, batching__max_queue_delay_us=0)
    return LoadedModel("digits", "1", tmp_path / "models" / "digits" / "1", RuntimeConfig(), tmp_path / "state")


def run_two_batches(model: LoadedModel, instances: int) -> tuple[list, set[str]]:
    """Two one-row requests whose batches can only both finish if they run at the same time:
    each run waits (in the real run_batch's place) at a two-party barrier before running."""
    barrier = threading.Barrier(2, timeout=5)
    threads: set[str] = set()
    real = model.run_batch

    def run_batch(batch):
        threads.add(threading.current_thread().name)
        barrier.wait()
        return real(batch)

    model.run_batch = run_batch
    x = np.random.default_rng(0).uniform(0, 16, (2, 64)).astype(np.float32)

    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, f"t{instances}"), 0.0, 16, preferred_rows=1, instances=instances)
        try:
            futs = [b.submit(model.prepare(InferRequest(model="digits", inputs={"input": x[i : i + 1]})), PRIORITY_NORMAL, loop.time() + 30)
                    for i in range(2)]
            results = await asyncio.gather(*futs, return_exceptions=True)
            assert b.alive(60) and b.batch_started is None
            return results
        finally:
            b.close()

    return asyncio.run(scenario()), threads


def test_two_instances_run_two_batches_at_once_and_answer_right(tmp_path):
    model = digits(tmp_path, 2)
    results, threads = run_two_batches(model, 2)
    assert len(threads) == 2, threads
    x = np.random.default_rng(0).uniform(0, 16, (2, 64)).astype(np.float32)
    for i, r in enumerate(results):
        assert not isinstance(r, BaseException), r
        want = model.session.run(["probabilities"], {"input": x[i : i + 1]})[0]
        np.testing.assert_allclose(r["probabilities"], want, rtol=1e-6)


def test_one_instance_runs_one_batch_at_a_time(tmp_path):
    """The same scenario with one worker cannot meet at the barrier: the proof that the test
    above measures concurrency, not luck."""
    results, threads = run_two_batches(digits(tmp_path, 1), 1)
    assert len(threads) == 1
    assert all(isinstance(r, BaseException) for r in results)  # the barrier broke in each batch


@pytest.mark.parametrize("session_threads,runtime_threads,instances,want", [
    (None, 0, 1, 0),   # ORT chooses
    (None, 3, 2, 3),   # the daemon's explicit setting wins
    (1, 0, 2, 1),      # model.yaml's wins over everything
])
def test_intra_op_threads_rule(session_threads, runtime_threads, instances, want):
    spec = ModelSpec.model_validate({
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [1]}], "outputs": [{"name": "y", "datatype": "FP32", "dims": [1]}],
        "batching": {"instances": instances}, "session": {"intra_op_num_threads": session_threads},
    })
    assert intra_op_threads(spec, RuntimeConfig(intra_op_num_threads=runtime_threads)) == want


def test_instances_share_the_cores_when_ort_would_choose():
    import os

    spec = ModelSpec.model_validate({
        "inputs": [{"name": "x", "datatype": "FP32", "dims": [1]}], "outputs": [{"name": "y", "datatype": "FP32", "dims": [1]}],
        "batching": {"instances": 2},
    })
    assert intra_op_threads(spec, RuntimeConfig()) == max(1, len(os.sched_getaffinity(0)) // 2)


def bursts(model: LoadedModel, instances: int, n: int) -> tuple[list, list[int]]:
    """Park every worker in a first batch, queue ``n`` one-row requests, let the
    workers go; returns the answers and the sizes of the batches after the first ones."""
    parked = threading.Barrier(instances + 1, timeout=5)
    go = threading.Event()
    sizes: list[int] = []
    lock = threading.Lock()
    real = model.run_batch

    def run_batch(batch):
        with lock:
            first = len(sizes) < instances
            sizes.append(len(batch))
        if first:
            parked.wait()
            go.wait(5)
        return real(batch)

    model.run_batch = run_batch
    x = np.random.default_rng(1).uniform(0, 16, (n, 64)).astype(np.float32)

    async def scenario():
        loop = asyncio.get_running_loop()
        b = Batcher(model, loop, ModelMetrics(model.name, f"s{instances}"), 0.0, 64, instances=instances)
        try:
            def submit(i):
                return b.submit(model.prepare(InferRequest(model="digits", inputs={"input": x[i : i + 1]})), PRIORITY_NORMAL, loop.time() + 30)

            # One blocker per worker, each submitted once the previous one is taken.
            blockers = []
            for _ in range(instances):
                blockers.append(submit(0))
                while b.queued:
                    await asyncio.sleep(0.001)
            parked.wait()  # every worker holds a blocker; the queue is empty
            futs = [submit(i) for i in range(n)]
            go.set()
            return await asyncio.gather(*blockers, *futs)
        finally:
            b.close()

    results = asyncio.run(scenario())[instances:]
    for i, r in enumerate(results):
        want = model.session.run(["probabilities"], {"input": x[i : i + 1]})[0]
        np.testing.assert_allclose(r["probabilities"], want, rtol=1e-6)
    return results, sizes[instances:]


def test_two_instances_split_a_queue_instead_of_one_taking_it_all(tmp_path):
    """8 requests queued behind two busy workers: the first worker free takes its share
    (4), not all 8, and the rest is shared out the same way (2, then 1 and 1). Before the
    share rule, one worker took the whole queue and the other ran what trickled in one
    request at a time."""
    _, sizes = bursts(digits(tmp_path, 2), 2, 8)
    assert sum(sizes) == 8
    assert sizes[0] == 4, sizes
    assert max(sizes) <= 4 and len(sizes) >= 2, sizes


def test_one_instance_still_takes_the_whole_queue(tmp_path):
    _, sizes = bursts(digits(tmp_path, 1), 1, 8)
    assert sizes == [8]
