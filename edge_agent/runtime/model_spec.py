"""model.yaml: a model version's served signature, batching, warm-up and extras.

It sits beside model.onnx in ``{models}/{name}/{version}/`` and is checked
against the loaded graph (session.py). ``inputs``/``outputs`` describe what
clients see; for text models (``text:``) the graph's token inputs are produced
inside the daemon from a BYTES input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..config import Section, load_yaml_with_lines, validate_with_lines
from ..errors import ConfigError, ModelLoadError
from ..types import V2_TO_NP

V2Type = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


class TensorSpec(Section):
    name: str = Field(description="Tensor name as clients use it.")
    datatype: V2Type = Field(description="KServe v2 datatype.")
    dims: list[int] = Field(description="Shape without the batch axis when max_batch_size > 0; -1 marks a variable dimension.")

    @model_validator(mode="after")
    def _dims_ok(self):
        if any(d < -1 or d == 0 for d in self.dims):
            raise ValueError("dims must be positive or -1")
        return self


class ModelBatching(Section):
    max_queue_delay_us: int | None = Field(None, ge=0, description="How long a partial batch may wait; default from the daemon config.")
    max_queue_size: int | None = Field(None, gt=0, description="Queue bound; default from the daemon config.")
    preferred_batch_size: int | None = Field(None, gt=0, description="Rows per batch the batcher aims for (at most max_batch_size); a single larger request still runs alone. Default: max_batch_size.")
    instances: int = Field(1, ge=1, le=16, description="Batches run at once, each in its own worker thread on the one session. Unless intra_op_num_threads is set, each gets cores / instances threads. On the CPU, 2 instances of 1 thread beat 1 of 2 threads for MiniLM on 2 cores (docs/BENCHMARKS.md). A worker takes at most ceil(queued / instances) requests, so the queue is shared out.")


class WarmupSpec(Section):
    batch_sizes: list[int] = Field([1], description="Batch sizes to run once at load, before the model is ready.")
    fill: Literal["zeros", "ones", "random"] = Field("zeros", description="Values of the warm-up tensors.")
    text: str = Field("warm up", description="Text used for BYTES inputs of text models.")


class PostProcess(Section):
    op: Literal["softmax", "topk"] = Field(description="softmax over the last axis, or top-k indices/values (+ labels).")
    output: str = Field(description="Graph output it reads.")
    k: int = Field(1, ge=1, description="k for topk.")
    name: str | None = Field(None, description="Name of the produced output (softmax: default replaces the input; topk: prefix).")


class CacheSpec(Section):
    enabled: bool = Field(True, description="Cache this model's answers.")
    ttl_s: float | None = Field(None, gt=0, description="Entry lifetime; default from the daemon config.")


class TextSpec(Section):
    input: str = Field("text", description="The BYTES input clients send (one string per batch row).")
    tokenizer: str = Field("tokenizer.json", description="tokenizers JSON file in the version directory.")
    max_length: int = Field(128, gt=0, description="Maximum tokens per text, special tokens included.")
    on_overflow: Literal["truncate", "error"] = Field("truncate", description="Over-long text: truncate, or refuse with sequence_too_long.")
    pooling: Literal["mean", "cls"] = Field("mean", description="How token states become one vector.")
    normalize: bool = Field(True, description="L2-normalise the embedding.")
    graph_output: str = Field("last_hidden_state", description="Graph output holding token states.")
    output: str = Field("embedding", description="Name of the embedding output clients see.")


class SessionSpec(Section):
    disabled_optimizers: list[str] = Field(
        default_factory=list,
        description="ONNX Runtime graph optimizers not to run on this graph, by name (e.g. SkipLayerNormFusion, "
        "slower than plain Add + LayerNormalization on INT8 MiniLM on the CPU; see docs/QUANTIZATION.md). "
        "ONNX Runtime ignores names it does not know.",
    )
    intra_op_num_threads: int | None = Field(None, ge=0, description="Threads inside one operator for this model; default from runtime.intra_op_num_threads.")


class ModelSpec(Section):
    name: str | None = Field(None, description="Model name; must match the directory name when given.")
    platform: Literal["onnxruntime"] = Field("onnxruntime", description="Only ONNX Runtime is served.")
    max_batch_size: int = Field(0, ge=0, description="0: the graph has no batch axis and requests run one at a time.")
    inputs: list[TensorSpec] = Field(description="Served inputs.")
    outputs: list[TensorSpec] = Field(description="Served outputs.")
    batching: ModelBatching = Field(default_factory=ModelBatching, description="Batcher overrides.")
    warmup: WarmupSpec = Field(default_factory=WarmupSpec, description="Warm-up run before ready.")
    labels: list[str] | str | None = Field(None, description="Class labels, inline or a file name in the version directory.")
    postprocess: list[PostProcess] = Field(default_factory=list, description="Simple post-processing steps, in order.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Response cache settings.")
    session: SessionSpec = Field(default_factory=SessionSpec, description="ONNX Runtime session settings that belong to this graph.")
    text: TextSpec | None = Field(None, description="Text model: tokenize a BYTES input in the daemon and pool the token states.")
    non_finite_inputs: Literal["reject", "allow"] = Field(
        "reject",
        description="NaN or ±Inf in a floating-point input (FP16/FP32/FP64): `reject` refuses the request with "
        "invalid_input naming the input and the first bad index (a model given NaN answers with confidence all "
        "the same); `allow` passes them to the graph, for models that handle them (e.g. NaN as a missing-value mark).",
    )
    precision: Literal["fp32", "fp16", "int8-qdq", "int8-dynamic"] = Field("fp32", description="Numeric form of the graph (drives TensorRT int8/fp16 flags).")
    accuracy: dict | None = Field(None, description="Figures written by the accuracy gate of `edge-agent quantize`.")
    lineage: dict | None = Field(None, description="Source model digest and quantization recipe.")

    @model_validator(mode="after")
    def _unique_names(self):
        for kind, ts in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in ts]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique")
        return self

    def input(self, name: str) -> TensorSpec | None:
        for t in self.inputs:
            if t.name == name:
                return t
        return None

    def output(self, name: str) -> TensorSpec | None:
        for t in self.outputs:
            if t.name == name:
                return t
        return None

    def label_list(self, version_dir: Path) -> list[str] | None:
        if self.labels is None or isinstance(self.labels, list):
            return self.labels
        p = version_dir / self.labels
        try:
            return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        except OSError as e:
            raise ModelLoadError(f"{p}: cannot read labels: {e.strerror}") from None


def load_model_spec(path: Path) -> ModelSpec:
    try:
        text = path.read_text()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data, lines = load_yaml_with_lines(text, str(path))
        return validate_with_lines(ModelSpec, data, lines, str(path))
    except ConfigError as e:
        raise ModelLoadError(e.message) from None


def np_dtype(datatype: str):
    return V2_TO_NP[datatype]
