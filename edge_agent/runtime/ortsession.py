"""Opening one ONNX file in an ONNX Runtime session, as the daemon serves it.

Split out of session.py so that every graph the daemon runs (a model version,
each step of a pipeline) gets the same session options, thread rule and
provider chain with its fallbacks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

from ..config import RuntimeConfig
from ..errors import ModelLoadError
from .model_spec import ModelSpec
from .providers import build_providers, create_session

log = logging.getLogger("edge_agent.runtime")

ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PROVIDER_SHORT = {
    "TensorrtExecutionProvider": "tensorrt",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}


def intra_op_threads(spec: ModelSpec, runtime: RuntimeConfig, instances: int | None = None,
                     threads: int | None = None) -> int:
    """Threads per operator: model.yaml's session setting, else the daemon's; when both leave
    it to ONNX Runtime (0) and the model runs several batcher instances, the cores are shared
    out between them instead of every instance's pool claiming all of them. A pipeline step
    passes its own ``instances`` and ``threads``."""
    if threads is None:
        threads = spec.session.intra_op_num_threads
    if threads is None:
        threads = runtime.intra_op_num_threads
    if instances is None:
        instances = spec.batching.instances
    if threads == 0 and instances > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // instances)
    return threads


def open_session(path: Path, spec: ModelSpec, runtime: RuntimeConfig, state_dir: Path, digest: str, precision: str,
                 name: str, version: str, threads: int | None = None, disabled: list | None = None):
    """``(session, provider short name, fallbacks)`` for ``path``; raises ModelLoadError.

    TensorRT -> CUDA -> CPU: create_session drops a GPU provider ORT refuses, and reports
    (log, metric, fallbacks) every offered GPU provider that did not bind."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _OPT_LEVELS[runtime.graph_optimization_level]
    so.intra_op_num_threads = intra_op_threads(spec, runtime) if threads is None else threads
    so.inter_op_num_threads = runtime.inter_op_num_threads
    so.log_severity_level = 3
    if not runtime.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = build_providers(runtime, available, state_dir, digest, precision)
    disabled = list(spec.session.disabled_optimizers if disabled is None else disabled)
    try:
        sess, fallbacks = create_session(path, so, providers, disabled_optimizers=disabled, model=name, version=version)
    except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {e}") from None
    bound = sess.get_providers()
    provider = _PROVIDER_SHORT.get(bound[0], bound[0])
    wanted = list(runtime.providers)
    if wanted and wanted[0] != provider and not fallbacks:
        log.warning("model %s/%s: preferred provider %s unavailable (have %s); running on %s",
                    name, version, wanted[0], available, provider)
    log.info("model %s/%s bound to %s (providers %s)%s", name, version, provider, bound,
             f", optimizers disabled: {disabled}" if disabled else "")
    return sess, provider, fallbacks
