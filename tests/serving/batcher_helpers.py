"""What the batcher's tests share: the real digits model loaded with no batching delay, and
one-row requests prepared from fixed inputs ``X``."""

from __future__ import annotations

import numpy as np
from daemon_proc import copy_digits

from edge_agent.config import RuntimeConfig
from edge_agent.runtime.session import LoadedModel
from edge_agent.types import InferRequest

X = np.random.default_rng(7).uniform(0, 16, (8, 64)).astype(np.float32)


def digits_model(tmp_path) -> LoadedModel:
    """The digits model, whose batches start at once (``max_queue_delay_us: 0``)."""
    copy_digits(tmp_path / "models", batching__max_queue_delay_us=0)
    return LoadedModel("digits", "1", tmp_path / "models" / "digits" / "1", RuntimeConfig(), tmp_path / "state")


def prepared(model, i):
    """Row ``i`` of ``X`` as a request checked against the model."""
    return model.prepare(InferRequest(model="digits", inputs={"input": X[i : i + 1]}))
