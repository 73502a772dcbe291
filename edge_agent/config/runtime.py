"""``runtime``, ``batching`` and ``admission``: ONNX Runtime sessions, the batcher's
defaults and load shedding in front of the models."""

from __future__ import annotations

from typing import Dict, List, Literal, Mapping, Optional  # noqa: F401 -- pydantic resolves field annotations here

from pydantic import Field

from .base import Section


class TensorRTConfig(Section):
    fp16: bool = Field(True, description="trt_fp16_enable: let TensorRT pick FP16 kernels.")
    int8: bool = Field(True, description="trt_int8_enable: use INT8 for QDQ (explicitly quantized) models.")
    workspace_mb: int = Field(1024, gt=0, description="trt_max_workspace_size in MiB.")
    engine_cache: bool = Field(True, description="Cache built engines under {state_dir}/trt/, keyed by model digest + GPU + TensorRT version.")
    timing_cache: bool = Field(True, description="Keep the TensorRT timing cache under {state_dir}/trt/.")
    dla_core: int | None = Field(None, ge=0, le=1, description="Run on this DLA core (Xavier has 0 and 1); None uses the GPU.")
    builder_optimization_level: int = Field(3, ge=0, le=5, description="trt_builder_optimization_level.")
    min_subgraph_size: int = Field(1, ge=1, description="trt_min_subgraph_size.")


class CudaConfig(Section):
    device_id: int = Field(0, ge=0, description="CUDA device ordinal.")
    gpu_mem_limit_mb: int | None = Field(None, gt=0, description="Arena limit for the CUDA EP; None is unlimited.")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field("HEURISTIC", description="cuDNN convolution algorithm search.")


class RuntimeConfig(Section):
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        ["tensorrt", "cuda", "cpu"],
        description="Execution providers in order of preference; unavailable ones are skipped, CPU is always the floor.",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field("all", description="ONNX Runtime graph optimization level.")
    intra_op_num_threads: int = Field(0, ge=0, description="Threads inside one operator; 0 lets ONNX Runtime choose.")
    inter_op_num_threads: int = Field(0, ge=0, description="Threads across operators; 0 lets ONNX Runtime choose.")
    allow_spinning: bool = Field(False, description="Let ONNX Runtime's idle worker threads spin-wait. Off: on a few shared cores, spinning threads take CPU from the transports.")
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig, description="TensorRT execution provider options.")
    cuda: CudaConfig = Field(default_factory=CudaConfig, description="CUDA execution provider options.")


class BatchingConfig(Section):
    max_queue_delay_us: int = Field(500, ge=0, description="Default: how long a partial batch may wait for more requests (model.yaml overrides).")
    max_queue_size: int = Field(1024, gt=0, description="Default bound of a model's queue; a full queue rejects at once with overloaded.")
    deadline_high_s: float = Field(10.0, gt=0, description="Default deadline of a high-priority request.")
    deadline_normal_s: float = Field(30.0, gt=0, description="Default deadline of a normal-priority request.")
    stuck_after_s: float = Field(60.0, gt=0, description="A batch running longer than this marks the batcher stuck: the systemd watchdog is no longer fed.")


class AdmissionConfig(Section):
    """Load shedding in front of the models (serving/admission.py). The
    daemon's event loop reads, decodes and answers every request; when it
    falls behind, every request waits longer before the daemon even sees it,
    so a full model queue is no longer the first sign of overload."""

    shed_loop_lag_ms: float = Field(
        50.0, ge=0,
        description="While a request read now may have waited longer than this for the event loop (its previous turn plus the current one so far, edge_agent_event_loop_lag_seconds), refuse new inference requests with overloaded (reason loop_lag), in proportion: at twice this lag every other one, at four times three in four. 0 never sheds on lag (the wait still counts against deadlines).",
    )
    loop_lag_interval_ms: float = Field(25.0, gt=0, le=1000, description="How often a timer checks an idle or lightly loaded event loop for lag (how late it fires); once it fires over 1 ms late, every turn of the loop is timed until the turns are short again.")
    shed_age_fraction: float = Field(
        0.5, gt=0, le=1,
        description="Refuse with overloaded (reason late) a request that reaches the service after more than this share of its deadline budget has gone since it arrived (read behind other requests): it would most likely miss its deadline, and refusing it at once leaves the time to requests that can still make theirs. 1 refuses only when the budget is spent.",
    )
