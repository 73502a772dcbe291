"""``memory``: admission of model loads against the memory the host has left (runtime/memory.py)."""

from __future__ import annotations

from pydantic import Field

from .base import Section


class MemoryConfig(Section):
    """Before a model version is loaded (start-up, SIGHUP, OTA staging and
    canary) its need is estimated and compared with the memory available; a
    load that would leave less than ``min_available_mb`` is refused with
    insufficient_memory instead of letting the OOM killer choose a victim.
    On a Jetson the CPU and GPU share this memory."""

    enabled: bool = Field(True, description="Check each model load against the available memory; off: load whatever is asked.")
    min_available_mb: int = Field(
        256, ge=0,
        description="Watermark: a load is refused when the host's available memory (MemAvailable, psutil) minus the version's estimated need would fall below this many MiB.",
    )
    load_factor: float = Field(
        3.0, gt=0,
        description="Estimated need of a version never measured: its ONNX file's size times this (ONNX Runtime holds the weights, optimised copies and arenas).",
    )
    measured_factor: float = Field(
        1.25, gt=0,
        description="Estimated need of a version loaded before (same file digest): the memory its last load took (process RSS growth, plus NvMap growth on a Jetson) times this.",
    )
    remember: bool = Field(True, description="Remember what each load took, by file digest, in {state_dir}/memory-needs.json, for the next load of that file.")
