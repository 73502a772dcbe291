"""Execution-provider choice and option mapping (config.runtime -> ONNX Runtime).

TensorRT first, CUDA next, CPU always last: a provider ONNX Runtime does not
offer on this machine is skipped with a log line, never an error. TensorRT
engines are cached under the state directory keyed by model digest + GPU +
TensorRT version, because an engine is only valid for exactly that triple.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from ..config import RuntimeConfig

log = logging.getLogger(__name__)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {"tensorrt": TRT, "cuda": CUDA, "cpu": CPU}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", s.strip()).strip("_") or "unknown"


@functools.cache
def gpu_name(device_id: int = 0) -> str:
    """A filesystem-safe GPU name, or 'nogpu'. Jetsons have no NVML: read the device tree."""
    try:
        import pynvml  # optional

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(device_id))
        return _slug(name.decode() if isinstance(name, bytes) else name)
    except Exception:
        pass
    try:
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
        if "jetson" in model.lower():
            return _slug(model)
    except OSError:
        pass
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text().splitlines():
            if line.startswith("Model:"):
                return _slug(line.split(":", 1)[1])
    return "nogpu"


@functools.cache
def tensorrt_version() -> str:
    """TensorRT's version from its Python module or libnvinfer, or 'notrt'."""
    try:
        import tensorrt  # optional

        return _slug(tensorrt.__version__)
    except Exception:
        pass
    lib = ctypes.util.find_library("nvinfer")
    if lib:
        try:
            return f"lib{int(ctypes.CDLL(lib).getInferLibVersion())}"
        except (OSError, AttributeError):
            pass
    return "notrt"


def trt_dirs(state_dir: Path, model_digest: str, gpu: str, trt_version: str) -> tuple[Path, Path]:
    """(engine cache dir, timing cache dir). Timing caches are per GPU + TensorRT, not per model."""
    root = Path(state_dir) / "trt"
    return root / f"{model_digest[:16]}-{gpu}-{trt_version}", root / f"timing-{gpu}-{trt_version}"


def tensorrt_options(cfg: RuntimeConfig, state_dir: Path, model_digest: str, precision: str, gpu: str, trt_version: str) -> dict:
    t = cfg.tensorrt
    opts: dict = {
        "device_id": cfg.cuda.device_id,
        "trt_fp16_enable": t.fp16,
        # INT8 needs scales: only explicitly quantized (QDQ) graphs carry them.
        "trt_int8_enable": t.int8 and precision == "int8-qdq",
        "trt_max_workspace_size": t.workspace_mb * 1024 * 1024,
        "trt_builder_optimization_level": t.builder_optimization_level,
        "trt_min_subgraph_size": t.min_subgraph_size,
    }
    engine_dir, timing_dir = trt_dirs(state_dir, model_digest, gpu, trt_version)
    if t.engine_cache:
        opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_dir))
    if t.timing_cache:
        opts.update(trt_timing_cache_enable=True, trt_timing_cache_path=str(timing_dir))
    if t.dla_core is not None:
        opts.update(trt_dla_enable=True, trt_dla_core=t.dla_core)
    return opts


def cuda_options(cfg: RuntimeConfig) -> dict:
    c = cfg.cuda
    opts: dict = {"device_id": c.device_id, "cudnn_conv_algo_search": c.cudnn_conv_algo_search}
    if c.gpu_mem_limit_mb is not None:
        opts["gpu_mem_limit"] = c.gpu_mem_limit_mb * 1024 * 1024
    return opts


def build_providers(cfg: RuntimeConfig, available: Sequence[str], state_dir: Path, model_digest: str, precision: str,
                    *, gpu: str | None = None, trt_version: str | None = None) -> list[tuple[str, dict]]:
    """Providers + options for InferenceSession(providers=...), best first, CPU last.

    Creates the TensorRT cache directories when TensorRT is selected (ORT
    does not create them on every version). ``gpu``/``trt_version`` default
    to what this machine reports.
    """
    out: list[tuple[str, dict]] = []
    for key in cfg.providers:
        name = PROVIDER_NAMES[key]
        if name == CPU:
            continue
        if name not in available:
            log.info("execution provider %s not available here; skipped", name)
            continue
        if name == TRT:
            g, v = gpu or gpu_name(cfg.cuda.device_id), trt_version or tensorrt_version()
            opts = tensorrt_options(cfg, state_dir, model_digest, precision, g, v)
            if precision == "int8-dynamic":
                log.warning("TensorRT cannot run dynamic INT8 ops; those nodes fall back to the next provider")
            for k in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if k in opts:
                    Path(opts[k]).mkdir(parents=True, exist_ok=True)
            out.append((TRT, opts))
        else:
            out.append((CUDA, cuda_options(cfg)))
    out.append((CPU, {}))
    return out
