"""InferenceService.start/settle (the task-free path HTTP uses) and infer (its coroutine form),
in process, on the real digits model: same answers, errors counted, nothing left in flight."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from daemon_proc import copy_digits

from edge_agent.config import load_config
from edge_agent.errors import DeadlineExceeded, UnknownModel
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.service import InferenceService, Started
from edge_agent.types import InferRequest, InferResponse

X = np.random.default_rng(11).uniform(0, 16, (4, 64)).astype(np.float32)


def run(tmp_path, scenario):
    copy_digits(tmp_path / "models")
    cfg = load_config(None)
    cfg.paths.models_dir = tmp_path / "models"

    async def main():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        await repo.sync()
        try:
            return await scenario(InferenceService(cfg, repo), repo)
        finally:
            await repo.close(5)

    return asyncio.run(main())


def req(i: int, **kw) -> InferRequest:
    return InferRequest(model="digits", inputs={"input": X[i : i + 1]}, **kw)


def test_start_settle_and_infer_give_the_session_answer_and_let_go(tmp_path):
    async def scenario(service, repo):
        r = service.start(req(0))
        assert r.__class__ is Started and service.inflight == 1
        await asyncio.wait([r.future])
        a = service.settle(r)
        b = await service.infer(req(1))
        return a, b, service.inflight, repo.route("digits", None).model.session

    a, b, inflight, session = run(tmp_path, scenario)
    assert isinstance(a, InferResponse) and isinstance(b, InferResponse) and inflight == 0
    for i, resp in enumerate((a, b)):
        want = session.run(None, {"input": X[i : i + 1]})
        np.testing.assert_allclose(resp.outputs["probabilities"], want[1], rtol=1e-6)


def test_errors_are_raised_counted_and_let_go(tmp_path):
    async def scenario(service, repo):
        with pytest.raises(UnknownModel):
            service.start(InferRequest(model="nosuch", inputs={"input": X[:1]}))
        with pytest.raises(DeadlineExceeded):  # past already: refused at once, never run
            service.start(req(0, deadline=time.monotonic() - 1))
        with pytest.raises(DeadlineExceeded):
            await service.infer(req(1, deadline=time.monotonic() - 1))
        return service.count_err, service.inflight

    assert run(tmp_path, scenario) == (3, 0)


def test_a_bug_before_the_batcher_does_not_leave_a_request_in_flight(tmp_path):
    async def scenario(service, repo):
        model = repo.route("digits", None).model

        def broken(_req):
            raise RuntimeError("a bug in prepare")

        model.prepare = broken
        with pytest.raises(RuntimeError):
            service.start(req(0))
        with pytest.raises(RuntimeError):
            await service.infer(req(0))
        return service.inflight

    assert run(tmp_path, scenario) == 0
