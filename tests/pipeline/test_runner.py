"""PipelineRunner in-process, on the real OCR graphs: one deadline covers the whole chain (an
image whose deadline passes while it waits behind others is answered deadline_exceeded at
that deadline and never reaches the later steps), the others are answered as RapidOCR
answers, and a bad image fails alone."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from edge_agent.config import RuntimeConfig
from edge_agent.errors import DeadlineExceeded, InvalidImage
from edge_agent.ops.metrics import ModelMetrics
from edge_agent.pipeline.model import PipelineModel
from edge_agent.pipeline.runner import PipelineRunner
from edge_agent.runtime.session import Prepared
from edge_agent.types import PRIORITY_NORMAL
from ocr_daemon import differences, rendered_cases

import ocr_reference as ref

pytestmark = pytest.mark.slow


def _prepared(data: bytes) -> Prepared:
    return Prepared({"image": np.array([data], dtype=object)}, 1, None)


def test_one_deadline_for_the_chain_and_a_bad_image_fails_alone(ocr_build, tmp_path):
    ref.require_rapidocr()
    cases = rendered_cases(4, seed=404)
    model = PipelineModel("ocr", "1", ocr_build / "1", RuntimeConfig(), tmp_path)
    model.warmup()

    async def go():
        runner = PipelineRunner(model, asyncio.get_running_loop(), ModelMetrics("ocr", "t"), 0.002, 64)
        try:
            far = time.monotonic() + 300
            # Eight images fill both detection instances (4 each) for a while.
            futs = [runner.submit(_prepared(d), PRIORITY_NORMAL, far) for d, _ in cases * 2]
            bad = runner.submit(_prepared(cases[0][0][:100]), PRIORITY_NORMAL, far)
            await asyncio.sleep(0.3)
            # Queued behind them: its 50 ms run out while it waits.
            late_deadline = time.monotonic() + 0.05
            late = runner.submit(_prepared(cases[1][0] + b"\0"), PRIORITY_NORMAL, late_deadline)
            late_at = None
            try:
                await late
            except DeadlineExceeded:
                late_at = time.monotonic()
            outs = await asyncio.gather(*futs)
            with pytest.raises(InvalidImage):
                await bad
            det_items = runner.batchers[0].model.metrics.items._value.get()
            return late_deadline, late_at, outs, det_items
        finally:
            runner.close()

    late_deadline, late_at, outs, det_items = asyncio.run(go())
    assert late_at is not None, "the late image was answered"
    assert late_at - late_deadline < 0.5  # answered at its deadline, not when the chain got to it
    assert [differences([t.decode() for t in o["text"]], o["boxes"], want) for o, (_, want) in zip(outs, cases * 2)] == [None] * 8
    # The warm-up's image and the eight on time ran detection; the late one never ran a step.
    assert det_items == 1 + 8


def test_crops_that_do_not_fit_a_step_queue_refuse_the_image_and_none_of_them_runs(ocr_build, tmp_path):
    """All or none: an image whose crops do not all fit the next step's queue is refused
    (overloaded) before any is queued. Before, the crops submitted until the queue filled were
    left running for an answer nobody waited for (hostile review)."""
    from edge_agent.errors import Overloaded

    ref.require_rapidocr()
    cases = [c for c in rendered_cases(6, seed=77) if len(c[1].texts) >= 2]
    assert cases, "no rendered image with two lines"
    model = PipelineModel("ocr", "1", ocr_build / "1", RuntimeConfig(), tmp_path)
    model.warmup()

    async def go():
        runner = PipelineRunner(model, asyncio.get_running_loop(), ModelMetrics("ocr", "t"), 0.002, 64)
        try:
            cls = runner.batchers[1]
            before = cls.model.metrics.items._value.get()
            cls.max_queue = 1  # room for one crop: the image has more
            with pytest.raises(Overloaded):
                await runner.submit(_prepared(cases[0][0]), PRIORITY_NORMAL, time.monotonic() + 300)
            await asyncio.sleep(0.5)
            return cls.model.metrics.items._value.get() - before
        finally:
            runner.close()

    assert asyncio.run(go()) == 0
