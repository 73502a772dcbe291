"""Model repository: every version on disk loaded side by side, each with its batcher.

Layout: ``{models_dir}/{name}/{version}/model.onnx + model.yaml``. Directories
whose names start with '.' or end in '.staging' are ignored (the OTA updater
downloads there and renames into place, so a half-written version is never
seen). The default version of a model is the OTA ``active`` pointer
(``{state_dir}/models/{name}.json``) when that version loaded, else the
``previous`` one, else the highest version. Loading runs in a thread so the
event loop keeps serving during a SIGHUP reload.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import EdgeError, ModelNotReady, UnknownModel, UnknownVersion
from ..ops.metrics import MODEL_ARTIFACT, MODEL_INFO, MODEL_LOAD_FAILURES, PROVIDER_FALLBACK, WARMUP_SECONDS, ModelMetrics
# The OTA updater owns the on-disk layout: which directories are versions,
# their order, and the active/previous pointers. The repository reads them
# with the updater's own functions so the two can never disagree.
from ..ota.manifest import version_key
from ..ota.versions import list_versions, read_pointers
from ..runtime.memory import MemoryGate, footprint
from ..pipeline.model import open_version
from ..runtime.session import LoadedModel
from .batcher import Batcher

log = logging.getLogger("edge_agent.repository")


@dataclass
class ModelVersion:
    model: LoadedModel
    batcher: Batcher
    metrics: ModelMetrics
    state: str = "READY"

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version


@dataclass
class Canary:
    version: str
    share: float


@dataclass
class ModelEntry:
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    default: str | None = None
    canary: Canary | None = None


class ModelRepository:
    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.models: dict[str, ModelEntry] = {}
        self.failed: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()
        # admit(name, version) -> False: that version may not be routed. sync()
        # never loads it and retire() unloads it. With OTA on, the daemon installs
        # the updater's routing rule here once (ota/routing.py), so a refused or
        # not yet validated version is never routable, not even briefly.
        self.admit: Callable[[str, str], bool] | None = None
        # fn(name) when a model's last version goes (the service drops its per-model state).
        self.on_model_removed: list[Callable[[str], None]] = []
        # The operator's load/unload choices (serving/model_control.py Holds, set by
        # ModelControl): a version they do not admit is not loaded by a scan.
        self.holds = None
        self._rand = random.Random()
        # Refuses a load that would leave too little memory (insufficient_memory), learns what loads take.
        self.memory = MemoryGate(cfg.paths.state_dir)

    # --- discovery and loading -------------------------------------------------

    def scan(self) -> dict[str, dict[str, Path]]:
        root = self.cfg.paths.models_dir
        found: dict[str, dict[str, Path]] = {}
        if not root.is_dir():
            log.warning("models directory %s does not exist", root)
            return found
        for mdir in sorted(root.iterdir()):
            if not mdir.is_dir() or mdir.name.startswith("."):
                continue
            versions = {v: mdir / v for v in list_versions(root, mdir.name)}
            if versions:
                found[mdir.name] = versions
        return found

    def _load_one(self, name: str, version: str, vdir: Path) -> LoadedModel:
        est = self.memory.admit(self.cfg, name, version, vdir)
        before = footprint()
        model = open_version(name, version, vdir, self.cfg.runtime, self.cfg.paths.state_dir)
        secs = model.warmup()
        self.memory.measured(self.cfg, est, before)
        WARMUP_SECONDS.labels(name, version).set(secs)
        log.info("model %s/%s loaded and warm in %.3fs on %s", name, version, secs, model.provider)
        return model

    def _start(self, model: LoadedModel) -> ModelVersion:
        b = self.cfg.batching
        spec = model.spec.batching
        delay_us = spec.max_queue_delay_us if spec.max_queue_delay_us is not None else b.max_queue_delay_us
        qsize = spec.max_queue_size if spec.max_queue_size is not None else b.max_queue_size
        metrics = ModelMetrics(model.name, model.version)
        if model.spec.pipeline is not None:  # one batcher per step, behind one runner (pipeline/runner.py)
            from ..pipeline.runner import PipelineRunner

            return ModelVersion(model, PipelineRunner(model, self.loop, metrics, delay_us / 1e6, qsize), metrics)
        batcher = Batcher(model, self.loop, metrics, delay_us / 1e6, qsize, spec.preferred_batch_size, spec.instances)
        return ModelVersion(model, batcher, metrics)

    async def load(self, name: str, version: str, vdir: Path) -> ModelVersion:
        """Load, warm and start one version, and publish it (raises EdgeError)."""
        try:
            model = await self.loop.run_in_executor(None, self._load_one, name, version, vdir)
        except EdgeError as e:
            self._load_failed(name, version, e.message)
            raise
        except Exception as e:  # noqa: BLE001 - a broken model must not take the daemon down
            self._load_failed(name, version, str(e))
            raise EdgeError(f"model {name}/{version}: {e}") from None
        mv = self._start(model)
        MODEL_ARTIFACT.labels(name, version, model.artifact.file, model.artifact.target).set(1)
        for fb in model.provider_fallback:
            PROVIDER_FALLBACK.labels(name, version, fb["wanted"], fb["bound"]).set(1)
        self.failed.pop((name, version), None)
        self.models.setdefault(name, ModelEntry()).versions[version] = mv
        return mv

    def _load_failed(self, name: str, version: str, reason: str) -> None:
        log.error("model %s/%s failed to load: %s", name, version, reason)
        MODEL_LOAD_FAILURES.labels(name).inc()
        self.failed[(name, version)] = reason

    async def sync(self) -> dict[str, list[str]]:
        """Bring loaded versions in line with the disk: load new, unload removed.

        New versions load and warm before they are published; removed ones are
        unpublished first, then drained, so no request in flight fails."""
        async with self._lock:
            on_disk = self.scan()
            added, removed = [], []
            for name, versions in on_disk.items():
                added += await self._load_new(name, versions)
            for name, entry in list(self.models.items()):
                for version in list(entry.versions):
                    if version not in on_disk.get(name, {}):
                        removed.append(f"{name}/{version}")
                        await self.unload(name, version)
            for name in list(self.models):
                self.refresh_default(name)
            for k in list(self.failed):
                if k[1] not in on_disk.get(k[0], {}):
                    del self.failed[k]
            return {"added": added, "removed": removed}

    async def _load_new(self, name: str, versions: dict[str, Path]) -> list[str]:
        """Load the versions of ``name`` not loaded yet that may be (oldest first); the ones loaded."""
        added = []
        for version, vdir in versions.items():
            entry = self.models.get(name)
            if entry and version in entry.versions:
                continue
            if self.admit is not None and not self.admit(name, version):
                log.info("model %s version %s: on disk but held back by the updater; not loaded", name, version)
                continue
            if self.holds is not None and not self.holds.admits(name, version):
                # The updater's pointers win over an older hold: a version it made active (or
                # keeps as the fallback) after the operator unloaded it must come back after a
                # restart, else the unit serves another version while reporting this one active.
                ptr = read_pointers(self.cfg.paths.state_dir, name)
                if version not in (ptr.active, ptr.previous):
                    log.info("model %s version %s: on disk but unloaded by the operator; not loaded", name, version)
                    continue
                log.info("model %s version %s: unloaded by the operator earlier, but the updater's %s; loaded",
                         name, version, "active version" if version == ptr.active else "fallback")
            try:
                await self.load(name, version, vdir)
                added.append(f"{name}/{version}")
            except EdgeError:
                pass
        return added

    async def load_model(self, name: str) -> list[str]:
        """Load what ``sync`` would load of one model (the operator's ``load``); the versions loaded."""
        async with self._lock:
            root = self.cfg.paths.models_dir
            added = await self._load_new(name, {v: root / name / v for v in list_versions(root, name)})
            self.refresh_default(name)
            return added

    async def retire(self, name: str) -> list[str]:
        """Unload the loaded versions of ``name`` that ``admit`` no longer admits
        (refused, rolled back, deleted from disk), draining each; never the last
        one, which keeps answering until something replaces it. Returns them."""
        entry = self.models.get(name)
        if entry is None or self.admit is None:
            return []
        gone = []
        for version in list(entry.versions):
            if len(entry.versions) > 1 and not self.admit(name, version):
                await self.unload(name, version)
                gone.append(version)
        return gone

    async def unload(self, name: str, version: str, drain_timeout: float = 30.0) -> None:
        entry = self.models.get(name)
        if entry is None or version not in entry.versions:
            return
        mv = entry.versions.pop(version)
        mv.state = "UNLOADING"
        if entry.canary and entry.canary.version == version:
            entry.canary = None
        self.refresh_default(name)
        await mv.batcher.drain(drain_timeout)
        mv.batcher.close()
        self._remove_info(mv)
        try:
            MODEL_ARTIFACT.remove(name, version, mv.model.artifact.file, mv.model.artifact.target)
        except KeyError:
            pass
        for fb in mv.model.provider_fallback:
            try:
                PROVIDER_FALLBACK.remove(name, version, fb["wanted"], fb["bound"])
            except KeyError:
                pass
        mv.model.close()
        self.memory.forget(name, version)
        if not entry.versions:
            del self.models[name]
            for fn in self.on_model_removed:
                fn(name)
        if gc.get_freeze_count():
            # The daemon froze what start-up made (daemon.startup); reference
            # cycles of a version loaded then (batcher <-> its threads) would
            # never be collected. A full collection here is rare and short.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        log.info("model %s/%s unloaded", name, version)

    def refresh_default(self, name: str) -> None:
        """Pick the default version: active pointer, else previous, else highest."""
        entry = self.models.get(name)
        if entry is None:
            return
        ptr = read_pointers(self.cfg.paths.state_dir, name)
        active, previous = (None if v is None else str(v) for v in (ptr.active, ptr.previous))
        choice = None
        if active in entry.versions:
            choice = active
        elif previous in entry.versions:
            choice = previous
            log.warning("model %s: active version %s is not loaded; serving previous %s", name, active, previous)
        if choice is None and entry.versions:
            choice = max(entry.versions, key=version_key)
        entry.default = choice
        for v, mv in entry.versions.items():
            self._remove_info(mv)
            MODEL_INFO.labels(name, v, mv.model.provider, mv.model.artifact.precision, "true" if v == choice else "false").set(1)

    def _remove_info(self, mv: ModelVersion) -> None:
        for d in ("true", "false"):
            try:
                MODEL_INFO.remove(mv.name, mv.version, mv.model.provider, mv.model.artifact.precision, d)
            except KeyError:
                pass

    # --- routing ---------------------------------------------------------------

    def route(self, name: str, version: str | None) -> ModelVersion:
        entry = self.models.get(name)
        if entry is None:
            if any(k[0] == name for k in self.failed):
                raise ModelNotReady(f"model '{name}' failed to load")
            if self.holds is not None and name in self.holds.models:  # none loaded: the operator's doing
                raise ModelNotReady(f"model '{name}' was unloaded by the operator")
            raise UnknownModel(f"unknown model '{name}'")
        if version is not None:
            mv = entry.versions.get(version)
            if mv is None:
                if (name, version) in self.failed:
                    raise ModelNotReady(f"model '{name}' version {version} failed to load: {self.failed[(name, version)]}")
                if self.holds is not None and not self.holds.admits(name, version):
                    raise ModelNotReady(f"model '{name}' version {version} was unloaded by the operator")
                raise UnknownVersion(f"model '{name}' has no version '{version}' (has {self.version_names(name)})")
            return mv
        c = entry.canary
        if c is not None and self._rand.random() < c.share:
            mv = entry.versions.get(c.version)
            if mv is not None:
                return mv
        mv = entry.versions.get(entry.default) if entry.default is not None else None
        if mv is None:  # its last version is being unloaded (drained): gone for new requests
            raise ModelNotReady(f"model '{name}' has no version ready (unloading)")
        return mv

    def set_canary(self, name: str, version: str | None, share: float = 0.0) -> None:
        entry = self.models[name]
        entry.canary = Canary(version, share) if version is not None else None

    def version_names(self, name: str) -> list[str]:
        """Loaded versions of a model, oldest first."""
        return sorted(self.models[name].versions, key=version_key)

    def all_versions(self) -> list[ModelVersion]:
        return [mv for e in self.models.values() for mv in e.versions.values()]

    def index(self) -> list[dict]:
        out = []
        for name, entry in sorted(self.models.items()):
            for v in self.version_names(name):
                mv = entry.versions[v]
                out.append({
                    "name": name,
                    "version": v,
                    "state": mv.state,
                    "default": v == entry.default,
                    "canary": bool(entry.canary and entry.canary.version == v),
                    "provider": mv.model.provider,
                    "provider_fallback": mv.model.provider_fallback,
                    "precision": mv.model.artifact.precision,
                    "artifact": mv.model.artifact.file,
                    "artifact_target": mv.model.artifact.target,
                    "artifact_reason": mv.model.artifact.reason,
                    "queue_depth": mv.batcher.queued,
                })
        for (name, v), reason in sorted(self.failed.items()):
            out.append({"name": name, "version": v, "state": "UNAVAILABLE", "reason": reason})
        for name in sorted(self.holds.models if self.holds is not None else ()):
            loaded = self.models[name].versions if name in self.models else {}
            for v in list_versions(self.cfg.paths.models_dir, name):
                if v not in loaded and (name, v) not in self.failed and not self.holds.admits(name, v):
                    out.append({"name": name, "version": v, "state": "UNAVAILABLE", "reason": "unloaded by the operator"})
        return out

    async def close(self, drain_timeout: float) -> None:
        for mv in self.all_versions():
            await mv.batcher.drain(drain_timeout)
        for mv in self.all_versions():
            mv.batcher.close()
