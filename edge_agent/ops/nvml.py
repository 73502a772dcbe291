"""NVIDIA dGPU state through NVML (``nvidia-ml-py``, imported as ``pynvml``): one poll of every GPU.

For companion hosts with discrete GPUs (a Jetson has no NVML: tegrastats.py
reads it). ``nvidia-ml-py`` is an optional extra (``pip install
edge-agent[nvml]``); without it, or without a driver, ``open_nvml`` says so
and no GPU gauge is exported. Each query is asked on its own: a GPU that does
not support one (power on some boards) leaves that value out, not the rest.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

from ..compat import slotted_dataclass

log = logging.getLogger("edge_agent.telemetry")

# nvmlDeviceGetCurrentClocksThrottleReasons bits (nvml.h), reported as
# edge_agent_gpu_throttled{reason}: the ones that mean "slowed down by heat or power".
THROTTLE_REASONS = (
    ("sw_power_cap", 0x0000000000000004),
    ("hw_slowdown", 0x0000000000000008),
    ("sw_thermal", 0x0000000000000020),
    ("hw_thermal", 0x0000000000000040),
    ("hw_power_brake", 0x0000000000000080),
)


@slotted_dataclass
class GpuSample:
    """One GPU's readings; None: NVML could not say."""

    index: str
    name: str
    utilization: Optional[float] = None  # ratio 0..1
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    temperature_c: Optional[float] = None
    power_w: Optional[float] = None
    throttled: Optional[List[Tuple[str, int]]] = None  # (reason, 0/1)


def open_nvml():
    """The initialised ``pynvml`` module, or None (not installed, no driver, no GPU) with the reason logged."""
    try:
        import pynvml
    except ImportError:
        log.info("NVML: nvidia-ml-py is not installed; no GPU gauges (pip install edge-agent[nvml] on dGPU hosts)")
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            pynvml.nvmlShutdown()
            log.info("NVML: no GPU; no GPU gauges")
            return None
    except pynvml.NVMLError as e:
        log.info("NVML: not available (%s); no GPU gauges", e)
        return None
    return pynvml


def _ask(nv, fn, *args):
    try:
        return fn(*args)
    except nv.NVMLError:
        return None


def poll(nv) -> List[GpuSample]:
    """Every GPU's state now (blocking: a few driver calls per GPU)."""
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        name = _ask(nv, nv.nvmlDeviceGetName, h)
        s = GpuSample(str(i), name.decode() if isinstance(name, bytes) else str(name or ""))
        util = _ask(nv, nv.nvmlDeviceGetUtilizationRates, h)
        if util is not None:
            s.utilization = util.gpu / 100.0
        mem = _ask(nv, nv.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            s.memory_used_bytes, s.memory_total_bytes = int(mem.used), int(mem.total)
        temp = _ask(nv, nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        if temp is not None:
            s.temperature_c = float(temp)
        mw = _ask(nv, nv.nvmlDeviceGetPowerUsage, h)
        if mw is not None:
            s.power_w = mw / 1000.0
        reasons = _ask(nv, nv.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        if reasons is not None:
            s.throttled = [(r, 1 if reasons & bit else 0) for r, bit in THROTTLE_REASONS]
        out.append(s)
    return out


def close_nvml(nv) -> None:
    try:
        nv.nvmlShutdown()
    except nv.NVMLError:
        pass

