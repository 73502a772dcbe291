"""Execution-provider choice, option mapping (config.runtime -> ONNX Runtime) and binding check.

TensorRT first, CUDA next, CPU always last: a provider ONNX Runtime does not
offer on this machine is skipped with a log line, never an error. TensorRT
engines are cached under the state directory keyed by model digest + GPU +
TensorRT version, because an engine is only valid for exactly that triple.

The option dictionaries only carry keys the running ONNX Runtime knows
(``TRT_OPTION_KEYS``): an unknown key makes ORT refuse the TensorRT provider.
A GPU provider that ORT offers but that does not end up bound to the session
is an operator-visible error (log, ``edge_agent_provider_fallbacks_total``,
``provider_fallback`` in the model index), never a silent CPU run:
``create_session`` turns off the fallback of ORT's Python wrapper, which
otherwise rebuilds a failed session on CUDA/CPU without options and only
prints the cause to stdout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnxruntime as ort
from prometheus_client import Counter

from ..config import RuntimeConfig

log = logging.getLogger(__name__)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {"tensorrt": TRT, "cuda": CUDA, "cpu": CPU}
SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items()}

PROVIDER_FALLBACKS = Counter(
    "edge_agent_provider_fallbacks_total",
    "Model version loads where ONNX Runtime offered a GPU provider (wanted) that did not bind; "
    "bound is the provider the session runs on, reason invalid_option, ep_error or not_bound.",
    ["model", "wanted", "bound", "reason"],
)

# --- provider options per ONNX Runtime version --------------------------------------
#
# ORT's Python binding refuses a TensorRT option key it does not know
# ("Invalid TensorRT EP option: <key>", onnxruntime_pybind_state.cc
# CreateExecutionProviderInstance; microsoft/onnxruntime#21484 shows it for
# trt_timing_cache_path), and its wrapper then silently retries on CUDA + CPU.
# So each ORT minor version gets only the keys it accepts. When each key we
# pass appeared (microsoft/onnxruntime pull requests and issues):
#
#   key                              first ORT   evidence
#   device_id, trt_fp16_enable,      <= 1.14     OrtTensorRTProviderOptions fields (#7179, 2021),
#   trt_int8_enable, trt_dla_*,                  provider-option names in
#   trt_max_workspace_size,                      tensorrt_execution_provider_info.cc
#   trt_min_subgraph_size,
#   trt_engine_cache_enable/_path
#   trt_timing_cache_enable          1.15        #14767 "TensorRT EP - timing cache" (2023-02, patched by #15113 2023-03)
#   trt_builder_optimization_level   1.15        #15897 (label release:1.15) sets its default to TRT 8.6's 3;
#                                                ORT 1.16's option dump has it (#18272). TensorRT < 8.6 has no
#                                                IBuilderConfig::setBuilderOptimizationLevel: a no-op there.
#   trt_timing_cache_path            1.17        #17865 "Enable global TRT timing cache" (opened 2023-10-10,
#                                                after 1.16.0); absent from ORT 1.16's option dump (#18272).
#                                                Before it the timing cache lives beside the engine cache.
#
# NVIDIA's JetPack 5 wheels are 1.15.1, 1.16.0, 1.17.0 and 1.18.0; 1.18's set
# serves every later version (no key we pass was added after 1.17).
_TRT_BASE = frozenset({
    "device_id", "trt_fp16_enable", "trt_int8_enable", "trt_max_workspace_size", "trt_min_subgraph_size",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_dla_enable", "trt_dla_core",
})
_TRT_115 = _TRT_BASE | {"trt_timing_cache_enable", "trt_builder_optimization_level"}
_TRT_117 = _TRT_115 | {"trt_timing_cache_path"}
TRT_OPTION_KEYS = {
    (1, 14): _TRT_BASE,
    (1, 15): _TRT_115,
    (1, 16): _TRT_115,
    (1, 17): _TRT_117,
    (1, 18): _TRT_117,
}
# CUDA provider keys: all three in every ORT since 1.9 (CUDA-ExecutionProvider.md).
CUDA_OPTION_KEYS = {(1, 9): frozenset({"device_id", "cudnn_conv_algo_search", "gpu_mem_limit"})}


def ort_version(text: Optional[str] = None) -> tuple[int, int]:
    """(major, minor) of ONNX Runtime, from ``text`` or the running module ("1.16.0+cu114" -> (1, 16))."""
    m = re.match(r"(\d+)\.(\d+)", text if text is not None else ort.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def option_keys(table: dict, version: tuple[int, int]) -> frozenset:
    """The row for the newest table version <= ``version``; older than the table: its first row."""
    rows = sorted(table)
    best = rows[0]
    for row in rows:
        if row <= version:
            best = row
    return table[best]


_logged_once: set = set()


def _log_once(key, level: int, msg: str, *args) -> None:
    """Per-process once: every model load would otherwise repeat the same remark."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, msg, *args)


def _keep_known(opts: dict, table: dict, version: tuple[int, int], provider: str) -> dict:
    known = option_keys(table, version)
    dropped = sorted(k for k in opts if k not in known)
    for k in dropped:
        _log_once((provider, k, version), logging.INFO,
                  "ONNX Runtime %d.%d does not know %s option %s; not passed", version[0], version[1], provider, k)
    return {k: v for k, v in opts.items() if k in known}


def trt_major_minor(trt_version: str) -> Optional[tuple[int, int]]:
    """(major, minor) from tensorrt_version()'s text: "8.5.2.2", or "lib8502" / "lib100300" from libnvinfer."""
    m = re.match(r"lib(\d+)$", trt_version)
    if m:
        n = int(m.group(1))
        # NV_TENSORRT_VERSION: MAJOR*1000+MINOR*100+PATCH up to 8.x, MAJOR*10000+MINOR*100+PATCH from 10.
        return (n // 10000, n // 100 % 100) if n >= 10000 else (n // 1000, n // 100 % 10)
    m = re.match(r"(\d+)[._](\d+)", trt_version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", s.strip()).strip("_") or "unknown"


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=None)
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


def tensorrt_options(cfg: RuntimeConfig, state_dir: Path, model_digest: str, precision: str, gpu: str, trt_version: str,
                     ort_ver: Optional[tuple[int, int]] = None) -> dict:
    """TensorRT provider options from the config, restricted to the keys ONNX Runtime ``ort_ver`` (default: the
    running one) accepts."""
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
    trt = trt_major_minor(trt_version)
    if trt is not None and trt < (8, 6):
        _log_once(("trt_builder_optimization_level", trt), logging.INFO,
                  "TensorRT %s has no builder optimization levels (8.6+): trt_builder_optimization_level=%d has no effect",
                  trt_version, t.builder_optimization_level)
    return _keep_known(opts, TRT_OPTION_KEYS, ort_ver or ort_version(), "TensorRT")


def cuda_options(cfg: RuntimeConfig, ort_ver: Optional[tuple[int, int]] = None) -> dict:
    c = cfg.cuda
    opts: dict = {"device_id": c.device_id, "cudnn_conv_algo_search": c.cudnn_conv_algo_search}
    if c.gpu_mem_limit_mb is not None:
        opts["gpu_mem_limit"] = c.gpu_mem_limit_mb * 1024 * 1024
    return _keep_known(opts, CUDA_OPTION_KEYS, ort_ver or ort_version(), "CUDA")


def build_providers(cfg: RuntimeConfig, available: Sequence[str], state_dir: Path, model_digest: str, precision: str,
                    *, gpu: str | None = None, trt_version: str | None = None,
                    ort_version_text: str | None = None) -> list[tuple[str, dict]]:
    """Providers + options for InferenceSession(providers=...), best first, CPU last.

    Creates the TensorRT cache directories when TensorRT is selected (ORT
    does not create them on every version). ``gpu``/``trt_version`` default
    to what this machine reports, ``ort_version_text`` to the running ONNX
    Runtime (it picks the option keys passed).
    """
    version = ort_version(ort_version_text)
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
            opts = tensorrt_options(cfg, state_dir, model_digest, precision, g, v, version)
            if precision == "int8-dynamic":
                log.warning("TensorRT cannot run dynamic INT8 ops; those nodes fall back to the next provider")
            for k in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if k in opts:
                    Path(opts[k]).mkdir(parents=True, exist_ok=True)
            out.append((TRT, opts))
        else:
            out.append((CUDA, cuda_options(cfg, version)))
    out.append((CPU, {}))
    return out


# --- creating the session and checking what bound -----------------------------------------


class NoFallbackSession(ort.InferenceSession):
    """An InferenceSession whose Python wrapper never falls back on its own.

    ORT's wrapper (onnxruntime_inference_collection.py) catches an error of
    session creation (e.g. "Invalid TensorRT EP option") or of ``run`` and
    rebuilds the session on ``_fallback_providers`` (CUDA + CPU, or CPU) with
    no provider options, printing the cause to stdout only. It reads the
    switch from ``self._enable_fallback``; ORT 1.16 has no way to turn it off
    at construction (later releases take an ``enable_fallback=0`` keyword), so
    the attribute is pinned to False here for every version: the error reaches
    ``create_session``, which reports it and chooses the next providers.
    """

    @property
    def _enable_fallback(self) -> bool:
        return False

    @_enable_fallback.setter
    def _enable_fallback(self, value: bool) -> None:
        pass


@dataclass(frozen=True)
class ProviderFallback:
    """A GPU provider ORT offered that the session did not bind, and why."""

    wanted: str  # short name: tensorrt / cuda
    bound: str  # what the session runs on instead (first bound provider, short name)
    reason: str  # invalid_option | ep_error | not_bound
    detail: str  # ORT's message, or what is known when ORT raised nothing

    def as_dict(self) -> dict:
        return {"wanted": self.wanted, "bound": self.bound, "reason": self.reason, "detail": self.detail}


def _reason(err: BaseException) -> str:
    text = str(err)
    return "invalid_option" if re.search(r"Invalid \w+ EP option|Unknown provider option", text) else "ep_error"


def _short(name: str) -> str:
    return SHORT_NAMES.get(name, name)


def _culprit(err: BaseException, names: list[str]) -> str:
    """The provider an ORT creation error is about: the one its message names ("Invalid TensorRT EP
    option", "CUDA failure"), else the first GPU provider tried. CPU is never the culprit here."""
    text = str(err).lower()
    for name, words in ((TRT, ("tensorrt",)), (CUDA, ("cuda", "cudnn", "cublas"))):
        if name in names and any(w in text for w in words):
            return name
    return next(n for n in names if n != CPU)


def create_session(path: Path, so: ort.SessionOptions, providers: list[tuple[str, dict]], *,
                   disabled_optimizers: Sequence[str] = (), model: str = "", version: str = "",
                   ) -> tuple[ort.InferenceSession, list[ProviderFallback]]:
    """Create the session with ``providers`` (best first, CPU last) and report every GPU provider that did not bind.

    When ORT raises while a GPU provider is in the list, that provider (the
    one the message names, else the first) is dropped and the rest tried
    (TensorRT -> CUDA -> CPU), each failure logged as an ERROR with ORT's
    message. After creation the bound providers are compared with the
    requested ones: a requested provider that ORT offered (``providers`` holds
    only available ones) but that is not bound is an error too, although ORT
    raised nothing (it logs the cause itself, e.g. a CUDA library that failed
    to load). Every such provider is counted in
    ``edge_agent_provider_fallbacks_total``. With only the CPU provider left,
    an error is the model's own: it is raised.
    """
    attempt = list(providers)
    raised: dict[str, tuple[str, str]] = {}
    while True:
        try:
            sess = NoFallbackSession(str(path), so, providers=[p for p, _ in attempt],
                                     provider_options=[o for _, o in attempt], disabled_optimizers=list(disabled_optimizers))
            break
        except Exception as e:  # noqa: BLE001 - ORT raises untyped errors
            names = [p for p, _ in attempt]
            if all(n == CPU for n in names):
                raise
            failed = _culprit(e, names)
            detail = " ".join(str(e).split())[:500]
            raised[failed] = (_reason(e), detail)
            attempt = [(p, o) for p, o in attempt if p != failed]
            log.error("model %s/%s: ONNX Runtime could not create the session with %s (%s); retrying with %s",
                      model, version, failed, detail, [p for p, _ in attempt])
    bound = sess.get_providers()
    on = _short(bound[0]) if bound else "none"
    out = []
    for name, _ in providers:
        if name == CPU or name in bound:
            continue
        reason, detail = raised.get(name, ("not_bound", "ONNX Runtime created the session without it and raised nothing; "
                                                        "its own warning (stderr / journal) says why"))
        fb = ProviderFallback(_short(name), on, reason, detail)
        if name not in raised:
            log.error("model %s/%s: %s is available but did not bind (session runs on %s): %s", model, version, name, bound, detail)
        PROVIDER_FALLBACKS.labels(model, fb.wanted, fb.bound, fb.reason).inc()
        out.append(fb)
    return sess, out
