"""model.yaml: a model version's served signature, batching, warm-up and extras.

It sits beside model.onnx in ``{models}/{name}/{version}/`` and is checked
against the loaded graph (session.py). ``inputs``/``outputs`` describe what
clients see; for text models (``text:``) the graph's token inputs are produced
inside the daemon from a BYTES input.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import List, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..config import Section, load_yaml_with_lines, validate_with_lines
from ..errors import ConfigError, ModelLoadError
from ..types import V2_TO_NP
from .cpu import KNOWN_FEATURES

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


class ModelLimits(Section):
    """Request admission by size (runtime/input_limits.py): a request over any of these is refused with
    input_too_large before it is queued. The graph's shape check bounds fixed dimensions already;
    these bound what variable (-1) dimensions and text let a client ask of the model."""

    max_elements: Optional[int] = Field(None, gt=0, description="Most tensor elements one request may carry, summed over its inputs, batch rows included.")
    max_pixels: Optional[int] = Field(None, gt=0, description="Most values of an input's variable (-1) dimensions multiplied, per batch row: H x W for an image input with dims [3, -1, -1].")
    max_text_bytes: Optional[int] = Field(None, gt=0, description="Text models: most UTF-8 bytes of one request's texts, summed over its rows; checked before tokenizing.")
    max_tokens: Optional[int] = Field(None, gt=0, description="Text models: most tokens of one request, summed over its rows after tokenizing (each row at most text.max_length): the work a request may ask for.")


DEFAULT_ARTIFACT = "model.onnx"


class ArtifactSpec(Section):
    """One ONNX file of a model version and the CPUs / providers it is built for.

    INT8 speed and even accuracy depend on the CPU's integer instructions
    (runtime/cpu.py), so one version may ship several builds of the same
    graph; the daemon serves the first whose requirements this machine meets.
    """

    file: str = Field(description="ONNX file in the version directory (a plain file name ending in .onnx). Several entries may name the same file.")
    requires: List[str] = Field(
        default_factory=list,
        description="CPU features that must all be present, named as in /proc/cpuinfo (x86 'flags', aarch64 'Features'), "
        "e.g. [avx512_vnni] or [asimddp]. Unknown names are refused (a typo would never match).",
    )
    provider: Optional[Literal["tensorrt", "cuda"]] = Field(
        None, description="Execution provider this file is for (e.g. tensorrt for a QDQ graph): chosen only when it is in "
        "runtime.providers and this ONNX Runtime has it; if it then does not bind, the next artifact is loaded instead.",
    )
    target: Optional[str] = Field(None, description="Name of the build target (e.g. avx512vnni, avx2), shown in status and metrics.")
    precision: Optional[Literal["fp32", "fp16", "int8-qdq", "int8-dynamic"]] = Field(
        None, description="This file's numeric form when it differs from the version's precision (e.g. int8-qdq for a TensorRT file).")
    accuracy: Optional[dict] = Field(None, description="This file's accuracy gate report, written by `edge-agent quantize`.")
    recipe: Optional[dict] = Field(None, description="How this file was built (quantization recipe), written by `edge-agent quantize`.")

    @field_validator("file")
    @classmethod
    def _plain_onnx_name(cls, v: str) -> str:
        p = PurePosixPath(v)
        if len(p.parts) != 1 or v.startswith(".") or "\\" in v or not v.endswith(".onnx"):
            raise ValueError("must be a plain file name in the version directory ending in .onnx")
        return v

    @field_validator("requires")
    @classmethod
    def _known_features(cls, v: List[str]) -> List[str]:
        unknown = [f for f in v if f not in KNOWN_FEATURES]
        if unknown:
            raise ValueError(f"unknown CPU features {unknown} (known: {', '.join(sorted(KNOWN_FEATURES))})")
        return v

    @property
    def is_default(self) -> bool:
        return not self.requires and self.provider is None

    def condition(self) -> str:
        """What this entry needs, for messages: 'avx512_vnni', 'tensorrt', 'always'."""
        parts = list(self.requires) + ([f"provider {self.provider}"] if self.provider else [])
        return " + ".join(parts) or "always"


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
    limits: ModelLimits = Field(default_factory=ModelLimits, description="Per-request size limits (elements, pixels, text bytes, tokens), checked before queueing; none by default.")
    non_finite_inputs: Literal["reject", "allow"] = Field(
        "reject",
        description="NaN or ±Inf in a floating-point input (FP16/FP32/FP64): `reject` refuses the request with "
        "invalid_input naming the input and the first bad index (a model given NaN answers with confidence all "
        "the same); `allow` passes them to the graph, for models that handle them (e.g. NaN as a missing-value mark).",
    )
    precision: Literal["fp32", "fp16", "int8-qdq", "int8-dynamic"] = Field("fp32", description="Numeric form of the graph (drives TensorRT int8/fp16 flags).")
    accuracy: dict | None = Field(None, description="Figures written by the accuracy gate of `edge-agent quantize`.")
    lineage: dict | None = Field(None, description="Source model digest and quantization recipe.")
    artifacts: Optional[List[ArtifactSpec]] = Field(
        None,
        description="Several builds of this version for different CPUs / providers, in order of preference; the daemon "
        "serves the first whose requirements this machine meets. The last entry is the default: model.onnx without "
        "requires or provider. Absent: model.onnx alone, as before. Every file must have the same inputs and outputs.",
    )

    @model_validator(mode="after")
    def _unique_names(self):
        for kind, ts in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in ts]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique")
        return self

    @model_validator(mode="after")
    def _artifacts_ordered(self):
        arts = self.artifacts
        if arts is None:
            return self
        if not arts or not arts[-1].is_default or arts[-1].file != DEFAULT_ARTIFACT:
            raise ValueError(f"artifacts: the last entry must be the default {{file: {DEFAULT_ARTIFACT}}} without requires or provider")
        for i, later in enumerate(arts):
            for j, earlier in enumerate(arts[:i]):
                # An earlier entry that matches whenever this one does hides it for good.
                if set(earlier.requires) <= set(later.requires) and earlier.provider in (None, later.provider):
                    raise ValueError(f"artifacts: entry {i + 1} ({later.file}, needs {later.condition()}) can never be chosen: "
                                     f"entry {j + 1} ({earlier.file}, needs {earlier.condition()}) comes first and matches whenever it does")
        return self

    def artifact_files(self) -> list[str]:
        """The distinct ONNX files of this version, in order of first mention."""
        if self.artifacts is None:
            return [DEFAULT_ARTIFACT]
        return list(dict.fromkeys(a.file for a in self.artifacts))

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
