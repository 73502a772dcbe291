"""non_finite_inputs: reject, checked on the batcher thread once per batch (runtime/session.py
``_non_finite_rows``): a request holding NaN or ±Inf is refused alone, the others of its batch
are answered as they would be on their own."""

from __future__ import annotations

import numpy as np
import pytest

from daemon_proc import REPO
from edge_agent.config import RuntimeConfig
from edge_agent.errors import InvalidInput
from edge_agent.runtime.session import LoadedModel
from edge_agent.types import InferRequest


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    m = LoadedModel("digits", "1", REPO / "models" / "digits" / "1", RuntimeConfig(providers=["cpu"]),
                    tmp_path_factory.mktemp("state"))
    m.warmup()
    yield m
    m.close()


def prepared(model, x):
    return model.prepare(InferRequest(model="digits", inputs={"input": np.asarray(x, np.float32)}))


def test_only_the_request_with_a_non_finite_value_is_refused(digits):
    rng = np.random.default_rng(3)
    good = [rng.uniform(0, 16, (1, 64)) for _ in range(3)]
    bad = rng.uniform(0, 16, (2, 64))
    bad[1, 7] = np.inf
    results = digits.run_batch([prepared(digits, good[0]), prepared(digits, bad), prepared(digits, good[1]),
                                prepared(digits, good[2])])
    assert isinstance(results[1], InvalidInput) and results[1].code == "invalid_input"
    assert "non-finite value inf at index [1, 7]" in results[1].message
    for x, got in zip(good, (results[0], results[2], results[3])):
        alone = digits.run_batch([prepared(digits, x)])[0]
        assert set(got) == set(alone) and all(np.array_equal(got[k], alone[k]) for k in got)


def test_a_batch_of_finite_values_runs_whole(digits):
    xs = [np.full((1, 64), v, np.float32) for v in (0.0, 8.0)]
    results = digits.run_batch([prepared(digits, x) for x in xs])
    assert all(isinstance(r, dict) for r in results)


def test_a_batch_of_only_refused_requests_runs_nothing(digits):
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = np.nan
    results = digits.run_batch([prepared(digits, x), prepared(digits, x)])
    assert all(isinstance(r, InvalidInput) for r in results)
