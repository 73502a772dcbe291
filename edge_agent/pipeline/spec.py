"""model.yaml ``pipeline:``: the steps of a multi-model pipeline.

Each step is one ONNX file in the same version folder, run through its own
batcher (serving/batcher.py) with its own batching and threads, so crops of
many images batch together in a later step while earlier steps already work
on the next images. What a step does with its input and output is an op
(ops.py, chosen by ``op``); the pipeline as a whole is one model with the
version's ``inputs``/``outputs`` (runner.py, model.py).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import List, Literal, Optional

from pydantic import Field, field_validator

from ..config import Section


def plain_onnx_name(v: str) -> str:
    """A graph file named in model.yaml (a step's ``model``, an ``artifacts`` entry's ``file``):
    a plain file name in the version directory ending in .onnx, never a path out of it."""
    p = PurePosixPath(v)
    if len(p.parts) != 1 or v.startswith(".") or "\\" in v or not v.endswith(".onnx"):
        raise ValueError("must be a plain file name in the version directory ending in .onnx")
    return v


class StepBatching(Section):
    max_batch_size: int = Field(8, ge=1, le=256, description="Items (images or crops) per run of this step's graph.")
    max_queue_delay_us: Optional[int] = Field(None, ge=0, description="How long a partial batch of this step may wait; default: the daemon's batching.max_queue_delay_us.")
    instances: int = Field(1, ge=1, le=16, description="Batches of this step run at once, each in its own worker thread on the step's one session.")
    intra_op_num_threads: Optional[int] = Field(None, ge=0, description="ONNX Runtime threads per operator of this step; default: the rule of runtime.intra_op_num_threads shared out over instances.")


class DetectLimits(Section):
    """RapidOCR's frame rules before detection (its Global section): sides scaled into
    [min_side, max_side] (rounded to multiples of 32), and thin images (height <=
    min_height, or wider than max_ratio times their height) padded top and bottom with black."""

    max_side: int = Field(2000, gt=0, description="Longer side at most this (scaled down, rounded to 32).")
    min_side: int = Field(30, gt=0, description="Shorter side at least this (scaled up, rounded to 32).")
    min_height: int = Field(30, ge=0, description="Images this high or lower get black bands top and bottom.")
    max_ratio: float = Field(8, description="Images wider than this times their height get black bands (-1: never).")


class PipelineStep(Section):
    name: str = Field(description="Step name: metrics label `step`, log lines, status.")
    model: str = Field(description="ONNX file in the version directory (a plain file name ending in .onnx).")
    input: Literal["image", "crops"] = Field(description="image: one item per request (the decoded image); crops: one item per region found by an earlier step.")
    op: Literal["db", "angle", "ctc"] = Field(description="What the step does around its graph (pipeline/ops.py): db = text detection "
                                             "(probability map -> boxes -> crops), angle = turn crops the classifier finds upside down, "
                                             "ctc = text recognition (greedy CTC with the graph's character list).")
    params: dict = Field(default_factory=dict, description="The op's settings, e.g. db: thresh, box_thresh, unclip_ratio, limit_side_len; "
                                                            "angle: threshold, width; ctc: height, min_width, text_score.")
    batching: StepBatching = Field(default_factory=StepBatching, description="This step's batcher.")

    _plain_name = field_validator("model")(classmethod(lambda cls, v: plain_onnx_name(v)))


def check_steps(steps: List[PipelineStep]) -> List[PipelineStep]:
    """The order rules of a pipeline: the first step reads the image, every later one crops."""
    if not steps:
        raise ValueError("pipeline: needs at least one step")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError("pipeline: step names must be unique")
    if steps[0].input != "image" or any(s.input != "crops" for s in steps[1:]):
        raise ValueError("pipeline: the first step reads the image, every later step its crops")
    if steps[0].op != "db" or any(s.op == "db" for s in steps[1:]):
        raise ValueError("pipeline: the first step must be the detector (op db), and only the first")
    if steps[-1].op != "ctc":
        raise ValueError("pipeline: the last step must give the answer (op ctc)")
    return steps


def check_pipeline(spec) -> None:
    """ModelSpec's rule for a pipeline: one BYTES input (the encoded image), no batch axis."""
    check_steps(spec.pipeline)
    if len(spec.inputs) != 1 or spec.inputs[0].datatype != "BYTES":
        raise ValueError("pipeline: takes exactly one BYTES input (the encoded image)")
    if spec.max_batch_size != 0:
        raise ValueError("pipeline: max_batch_size must be 0 (one image per request; the steps batch inside)")
    if spec.artifacts is not None:
        raise ValueError("pipeline: builds per CPU (artifacts) are not supported for pipelines yet")
    if spec.image is not None and spec.image.detect is not None:
        raise ValueError("pipeline: image.detect is for single-graph models (a pipeline's steps post-process with their op)")
