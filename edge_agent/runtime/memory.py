"""Memory admission: refuse a model load that would leave the host too little memory.

A 32 GB Jetson's CPU and GPU share one DRAM: a model that does not fit does
not fail cleanly, it pushes the unit into the OOM killer, which may pick the
daemon with every model it serves. So before a version is loaded (start-up,
SIGHUP, OTA staging, OTA canary) ``MemoryGate.admit`` estimates its need and
refuses with ``InsufficientMemory`` when

    available - need < memory.min_available_mb

What is read:

- *available*: ``psutil.virtual_memory().available``, the kernel's
  ``MemAvailable`` (free + reclaimable page cache). On a Jetson the GPU's
  buffers (NvMap, CUDA and TensorRT allocations) come out of the same RAM, so
  they already lower MemAvailable; there is no separate GPU pool to add. The
  ``lfb`` (largest free block) tegrastats prints matters for physically
  contiguous allocations only, which the GPU's IOMMU-mapped allocations on
  Xavier and Orin do not need: it is exported (edge_agent_jetson_ram_largest_free_block_bytes)
  but not used here.
- *need*: the digest of the file the device will serve (a pipeline: all its steps' graphs, one key), looked up in
  ``{state_dir}/memory-needs.json``: what its last load took (growth of the
  process's RSS, plus growth of ``NvMapMemUsed`` from /proc/meminfo where the
  Jetson kernel reports it, since GPU buffers are not in RSS) times
  ``memory.measured_factor``; never measured: the file's size times
  ``memory.load_factor``. When TensorRT is among the providers and no engine
  is cached for the digest, building one needs its workspace on top
  (``runtime.tensorrt.workspace_mb``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import List, Optional

import psutil
from prometheus_client import Counter, Gauge

from ..atomic import atomic_write
from ..digests import sha256_file
from ..errors import InsufficientMemory
from .artifacts import choose_artifact, serving_providers
from .cpu import this_cpu
from .model_spec import load_model_spec

log = logging.getLogger("edge_agent.memory")

NEEDS_FILE = "memory-needs.json"
_KEEP = 256  # digests remembered; the oldest go first
_MB = 1024 * 1024

NEED = Gauge("edge_agent_model_memory_need_bytes", "Estimated memory a model version needs to load, as last judged by memory admission.", ["model", "version"])
WATERMARK = Gauge("edge_agent_memory_min_available_bytes", "memory.min_available_mb: loads that would leave less available memory are refused.")
REFUSALS = Counter("edge_agent_memory_refusals_total", "Model loads refused with insufficient_memory, by when (load: start-up or reload or canary; ota_staging).", ["model", "during"])


def available_bytes() -> int:
    """MemAvailable: what the kernel can give without swapping (on a Jetson, to the CPU and the GPU alike)."""
    return psutil.virtual_memory().available


def nvmap_used_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``NvMapMemUsed`` (GPU buffers on a Jetson's L4T kernel) in bytes; 0 where the kernel has no such line."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("NvMapMemUsed:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def footprint() -> int:
    """What this process holds now, as a load's growth is measured: RSS plus NvMap's GPU buffers."""
    return psutil.Process().memory_info().rss + nvmap_used_bytes()


class MemoryNeeds:
    """What the last load of each file digest took, kept across restarts (atomic writes)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / NEEDS_FILE
        self._needs: Optional[dict] = None

    def _load(self) -> dict:
        if self._needs is None:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = None
            # A damaged entry (a string, null, 1e999, a negative size) is dropped, not fatal:
            # one bad number used to fail every later model load (OverflowError from int(inf)).
            self._needs = {k: int(v) for k, v in data.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 2 ** 62
                           } if isinstance(data, dict) else {}
        return self._needs

    def get(self, digest: str) -> Optional[int]:
        return self._load().get(digest)

    def put(self, digest: str, nbytes: int) -> None:
        needs = self._load()
        needs.pop(digest, None)
        needs[digest] = int(nbytes)
        while len(needs) > _KEEP:
            needs.pop(next(iter(needs)))
        try:
            atomic_write(self.path, json.dumps(needs, indent=0).encode(), mode=0o640)
        except OSError as e:
            log.warning("cannot remember model memory needs in %s: %s", self.path, e)


class Estimate:
    """One version's estimated need and how it was reached (for the message and status)."""

    __slots__ = ("need", "basis", "digest", "file")

    def __init__(self, need: int, basis: str, digest: str, file: str) -> None:
        self.need, self.basis, self.digest, self.file = need, basis, digest, file


def _engine_cached(state_dir: Path, digest: str) -> bool:
    """A TensorRT engine for this digest is in the cache (runtime/providers.py trt_dirs: {digest[:16]}-{gpu}-{trt})."""
    root = Path(state_dir) / "trt"
    return any(d.is_dir() and any(d.iterdir()) for d in root.glob(f"{digest[:16]}-*"))


def estimate(cfg, vdir: Path, needs: MemoryNeeds, providers: Optional[List[str]] = None) -> Estimate:
    """The need of the version in ``vdir`` under config ``cfg`` (the file this device would serve).
    ``providers``: short names, default the configured ones this ONNX Runtime has (as the loader picks)."""
    mem, runtime = cfg.memory, cfg.runtime
    spec = load_model_spec(vdir / "model.yaml")
    if providers is None:
        providers = serving_providers(runtime)
    if spec.pipeline is not None:  # a pipeline loads every step's graph (pipeline/model.py)
        files = [step.model for step in spec.pipeline]
    else:
        files = [choose_artifact(spec, this_cpu(), providers).file]
    digests = [sha256_file(vdir / f) for f in files]
    # One key per set of graphs: a pipeline's need is remembered for the whole of it.
    digest = digests[0] if len(digests) == 1 else hashlib.sha256(" ".join(digests).encode()).hexdigest()
    measured = needs.get(digest)
    if measured is not None:
        need, basis = int(measured * mem.measured_factor), f"measured {measured / _MB:.1f} MiB on its last load x {mem.measured_factor:g}"
    else:
        size = sum((vdir / f).stat().st_size for f in files)
        need, basis = int(size * mem.load_factor), f"file {size / _MB:.1f} MiB x memory.load_factor {mem.load_factor:g}"
        if "tensorrt" in providers and not all(_engine_cached(cfg.paths.state_dir, d) for d in digests):
            need += runtime.tensorrt.workspace_mb * _MB
            basis += f" + TensorRT build workspace {runtime.tensorrt.workspace_mb} MiB"
    return Estimate(need, basis, digest, ", ".join(files))


class MemoryGate:
    """Admits or refuses loads (``admit``) and learns what they took (``measured``)."""

    def __init__(self, state_dir: Path) -> None:
        self.needs = MemoryNeeds(state_dir)

    def admit(self, cfg, name: str, version: str, vdir: Path, during: str = "load") -> Optional[Estimate]:
        """Raise InsufficientMemory if loading ``vdir`` would leave less than the watermark; else the
        estimate (None with memory.enabled false). Blocking (hashes the file): not on the event loop."""
        mem = cfg.memory
        WATERMARK.set(mem.min_available_mb * _MB)
        if not mem.enabled:
            return None
        est = estimate(cfg, vdir, self.needs)
        NEED.labels(name, version).set(est.need)
        avail = available_bytes()
        floor = mem.min_available_mb * _MB
        if avail - est.need < floor:
            REFUSALS.labels(name, during).inc()
            raise InsufficientMemory(
                f"model {name}/{version} ({est.file}) needs about {est.need / _MB:.0f} MiB ({est.basis}); "
                f"{avail / _MB:.0f} MiB are available and memory.min_available_mb keeps {mem.min_available_mb} MiB free: "
                f"not loaded", model=name, version=version, need_bytes=est.need, available_bytes=avail,
                min_available_bytes=floor, during=during)
        log.info("model %s/%s: needs about %.0f MiB (%s), %.0f MiB available: admitted", name, version,
                 est.need / _MB, est.basis, avail / _MB)
        return est

    def measured(self, cfg, est: Optional[Estimate], before: int) -> None:
        """Remember what a load took: ``footprint()`` now minus ``before`` (taken just before the load)."""
        if est is None or not cfg.memory.remember:
            return
        grew = footprint() - before
        if grew > 0:
            self.needs.put(est.digest, grew)

    def forget(self, name: str, version: str) -> None:
        try:
            NEED.remove(name, version)
        except KeyError:
            pass


def admitting(validate, gate: MemoryGate, cfg_of, model: str):
    """OTA: ``validate(vdir, manifest, served)`` (ota/validate.py, which loads the staged version in ONNX
    Runtime) preceded by the gate's check, so an update that does not fit ends failed with
    insufficient_memory before anything is loaded."""

    def run(vdir: Path, manifest, served):
        gate.admit(cfg_of(), model, manifest.version, vdir, during="ota_staging")
        return validate(vdir, manifest, served)

    return run
