"""One pipeline step: its graph in an ONNX Runtime session and its op, in
the shape a serving/batcher.py ``Batcher`` runs (``name``, ``version``,
``max_batch``, ``run_batch``), plus the step's own metrics.

A batch of a step is a list of ``Item``s (an image of several requests, or
crops of several images); ``run_batch`` collates them (op.collate: resize,
pad to the batch's width), runs the graph, and gives each item its result
(op.finish). It runs on the step's batcher thread(s).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Histogram

from ..digests import sha256_file
from ..errors import InferenceFailed
from ..ops.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from ..runtime.ortsession import intra_op_threads, open_session
from .ops import OPS
from .spec import PipelineStep

# Labels are bounded: model, version and step names come from model.yaml files.
STEP_QUEUE = Histogram("edge_agent_pipeline_step_queue_duration_seconds", "Time an item waited in a pipeline step's batcher queue.",
                       ["model", "version", "step"], buckets=LATENCY_BUCKETS)
STEP_COMPUTE = Histogram("edge_agent_pipeline_step_compute_duration_seconds", "Time of one batch of a pipeline step: collate, graph and op.",
                         ["model", "version", "step"], buckets=LATENCY_BUCKETS)
STEP_BATCH = Histogram("edge_agent_pipeline_step_batch_size", "Items (images or crops) per batch of a pipeline step.",
                       ["model", "version", "step"], buckets=BATCH_BUCKETS)
STEP_CPU = Counter("edge_agent_pipeline_step_seconds_total", "Time spent in a pipeline step by phase: pre (collate: resize, "
                   "normalise, pad; thread CPU), model (the graph's run; wall time, all its threads) and post (the op's "
                   "finish; thread CPU). Decoding and detection pre-processing are counted under step 'decode'.",
                   ["model", "version", "step", "phase"])
STEP_ITEMS = Counter("edge_agent_pipeline_step_items_total", "Items run by a pipeline step.", ["model", "version", "step"])


class Item:
    """One unit of work of a step: ``tensor`` (the step's input: a tensor for
    detection, a crop image for the crop steps) and ``ctx`` (what its op
    needs to finish it). ``rows`` is what the Batcher counts."""

    __slots__ = ("tensor", "ctx")
    rows = 1

    def __init__(self, tensor, ctx=None) -> None:
        self.tensor = tensor
        self.ctx = ctx


class StepMetrics:
    """The Batcher's metrics object for a step: the step families, labelled (model, version, step)."""

    def __init__(self, model: str, version: str, step: str) -> None:
        self.labels = (model, version, step)
        self.queue = STEP_QUEUE.labels(*self.labels)
        self.compute = STEP_COMPUTE.labels(*self.labels)
        self.batch = STEP_BATCH.labels(*self.labels)
        self.items = STEP_ITEMS.labels(*self.labels)
        self.pre, self.model, self.post = (STEP_CPU.labels(*self.labels, p) for p in ("pre", "model", "post"))

    def remove(self) -> None:
        for m in (STEP_QUEUE, STEP_COMPUTE, STEP_BATCH, STEP_ITEMS):
            try:
                m.remove(*self.labels)
            except KeyError:
                pass
        for p in ("pre", "model", "post"):
            try:
                STEP_CPU.remove(*self.labels, p)
            except KeyError:
                pass


class StepModel:
    def __init__(self, name: str, version: str, version_dir: Path, step: PipelineStep, spec, runtime, state_dir: Path) -> None:
        self.name = name
        self.version = version
        self.step = step
        self.max_batch = step.batching.max_batch_size
        path = version_dir / step.model
        self.digest = sha256_file(path)
        threads = intra_op_threads(spec, runtime, instances=step.batching.instances, threads=step.batching.intra_op_num_threads)
        self.session, self.provider, fallbacks = open_session(path, spec, runtime, state_dir, self.digest, spec.precision,
                                                              name, f"{version}/{step.name}", threads=threads)
        self.provider_fallback = [f.as_dict() for f in fallbacks]
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.op = OPS[step.op](step.params, self.session)
        self.metrics = StepMetrics(name, version, step.name)

    def run_batch(self, items: list) -> list:
        """Collate, run and finish ``items``; each item's result, in order."""
        m = self.metrics
        results: list = [None] * len(items)
        t0 = time.thread_time()
        groups = self.op.collate(items)
        m.pre.inc(time.thread_time() - t0)
        for idx, x in groups:
            w0 = time.perf_counter()
            try:
                out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
            except Exception as e:  # noqa: BLE001 - ORT raises untyped errors
                raise InferenceFailed(f"model '{self.name}' version {self.version} step {self.step.name}: {e}") from None
            m.model.inc(time.perf_counter() - w0)
            t0 = time.thread_time()
            for i, r in zip(idx, self.op.finish([items[i] for i in idx], out)):
                results[i] = r
            m.post.inc(time.thread_time() - t0)
        m.items.inc(len(items))
        return results

    def run_all(self, items: list) -> list:
        """Without a batcher (warm-up, golden checks): ``items`` in batches of max_batch."""
        out: list = []
        for i in range(0, len(items), self.max_batch):
            out += self.run_batch(items[i:i + self.max_batch])
        return out

    def close(self) -> None:
        self.session = None
