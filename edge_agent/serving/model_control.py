"""Operator model control: load and unload a model or one version without a restart.

``edge-agent ctl load|unload MODEL [VERSION]`` and ``POST
/v2/repository/models/{name}/load|unload`` (the KServe/Triton repository
extension) land in ``ModelControl.act``. Unload drains first: the version
stops being routed, the requests it holds finish, then its session closes
(``ModelRepository.unload``).

The operator's choice is persisted (``Holds``, ``{state_dir}/model_control.json``,
written atomically) and the repository asks it before loading a version it finds
on disk: an unloaded model stays unloaded across SIGHUP and restarts until it is
loaded again. Restarts too, on purpose: a unit restarts unattended (watchdog,
power cut), and a model unloaded to free memory that came back with the restart
would bring back the pressure the operator removed. Loading it again clears the
hold. The hold is written before the drain starts, so a power cut mid-drain
leaves the model unloaded, as asked.

A model the OTA updater follows is the updater's: unloading its active or
previous version (the fallback) or the target of an update in progress, or
loading a version the routing rule refuses (rejected, not yet validated), is
refused with ``invalid_transition``. The updater's own later actions (a canary
of a version the operator had unloaded) win over an earlier hold, across restarts
too: a version the updater's pointers name active or previous is loaded at every
scan whatever an older hold says (serving/repository.py ``_load_new``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional

import orjson

from ..atomic import atomic_write_json
from ..errors import MalformedRequest, ModelLoadError, UnknownModel, UnknownVersion
from ..ota.errors import InvalidTransition
from ..ota.statemachine import IN_FLIGHT
from ..ota.versions import list_versions, read_pointers

log = logging.getLogger("edge_agent.repository")

ACTIONS = ("load", "unload")


class Holds:
    """What the operator unloaded, per model: the whole model (``all``, except
    the versions ``loaded`` again one by one since) and single versions
    (``unloaded``). ``admits`` is the rule the repository asks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.models: Dict[str, dict] = self._read()

    def _read(self) -> Dict[str, dict]:
        try:
            doc = orjson.loads(self.path.read_bytes())
            return {name: {"all": bool(h.get("all")), "loaded": [str(v) for v in h.get("loaded", [])],
                           "unloaded": [str(v) for v in h.get("unloaded", [])]}
                    for name, h in doc["models"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # atomic_write never leaves a torn file: outside damage. Serving every model is the safe side.
            log.error("%s unreadable (%s); no model is held unloaded", self.path, e)
            return {}

    def admits(self, name: str, version: str) -> bool:
        h = self.models.get(name)
        if h is None:
            return True
        if version in h["unloaded"]:
            return False
        return not h["all"] or version in h["loaded"]

    def unload(self, name: str, version: Optional[str]) -> None:
        if version is None:
            self.models[name] = {"all": True, "loaded": [], "unloaded": []}
        else:
            h = self.models.setdefault(name, {"all": False, "loaded": [], "unloaded": []})
            if version in h["loaded"]:
                h["loaded"].remove(version)
            if version not in h["unloaded"]:
                h["unloaded"].append(version)
        self._save()

    def load(self, name: str, version: Optional[str]) -> None:
        h = self.models.get(name)
        if h is None:
            return
        if version is None:
            del self.models[name]
        else:
            if version in h["unloaded"]:
                h["unloaded"].remove(version)
            if h["all"] and version not in h["loaded"]:
                h["loaded"].append(version)
            if not h["all"] and not h["unloaded"]:
                del self.models[name]
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, {"models": self.models})


def _version_of(body: dict) -> Optional[str]:
    """``{"version": V}``, or Triton's ``{"parameters": {"version": V}}``; None: every version."""
    if not isinstance(body, dict):
        raise MalformedRequest("the body must be a JSON object")
    params = body.get("parameters")
    v = body.get("version", params.get("version") if isinstance(params, dict) else None)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise MalformedRequest("'version' must be a string or an integer")
    return str(v)


def _check_name(kind: str, value: str) -> None:
    # Names become paths under models_dir: only what the repository's scan could have found.
    if not value or "/" in value or value.startswith(".") or value.endswith(".staging") or len(value) > 255:
        raise (UnknownModel if kind == "model" else UnknownVersion)(f"no {kind} {value[:64]!r} in the repository")


class ModelControl:
    """Carries out load and unload on the daemon's repository (``repo.holds`` is ours)."""

    def __init__(self, repo, state_dir: Path, drain_timeout_s: float, routing=None) -> None:
        self.repo = repo
        self.state_dir = Path(state_dir)
        self.drain_timeout_s = drain_timeout_s
        self.routing = routing  # with OTA: ota/routing.RoutingRule, which knows the followed models
        self.holds = Holds(self.state_dir / "model_control.json")
        repo.holds = self.holds

    async def act(self, model: str, action: str, body: dict) -> Optional[dict]:
        """The answer to ``load``/``unload``; None for another action (not ours)."""
        if action not in ACTIONS:
            return None
        version = _version_of(body)
        _check_name("model", model)
        if version is not None:
            _check_name("version", version)
        return await (self.load(model, version) if action == "load" else self.unload(model, version))

    def _versions(self, model: str, version: Optional[str]) -> tuple:
        on_disk = list_versions(self.repo.cfg.paths.models_dir, model)
        entry = self.repo.models.get(model)
        loaded = sorted(entry.versions) if entry is not None else []
        if not on_disk and not loaded:
            raise UnknownModel(f"no model '{model}' in {self.repo.cfg.paths.models_dir}")
        if version is not None and version not in on_disk and version not in loaded:
            raise UnknownVersion(f"model '{model}' has no version '{version}' (on disk: {on_disk})")
        return on_disk, loaded

    def _followed(self, model: str) -> bool:
        return self.routing is not None and self.routing.follows(model)

    def _owned(self, model: str) -> Dict[str, str]:
        """The versions the updater needs loaded, with why."""
        ptr = read_pointers(self.state_dir, model)
        owned = {str(v): why for v, why in ((ptr.active, "active"), (ptr.previous, "the fallback (previous)")) if v is not None}
        rec = self.routing.record(model)
        if rec is not None and rec.state in IN_FLIGHT and rec.target is not None:
            owned.setdefault(str(rec.target), f"the target of the update in progress ({rec.state.value})")
        return owned

    async def unload(self, model: str, version: Optional[str]) -> dict:
        on_disk, loaded = self._versions(model, version)
        if self._followed(model):
            owned = self._owned(model)
            clash = [f"{v} is {why}" for v, why in owned.items() if version is None or v == version]
            if clash:
                raise InvalidTransition(f"{model}: the OTA updater manages it and version {'; '.join(clash)}; "
                                        "unload another version, or roll back / wait for the update first")
        self.holds.unload(model, version)
        gone = [v for v in loaded if version is None or v == version]
        for v in gone:
            await self.repo.unload(model, v, self.drain_timeout_s)
        log.info("model %s%s unloaded by the operator (drained %s)", model, f"/{version}" if version else "", gone)
        return {"model": model, "action": "unload", "version": version, "unloaded": gone, "serving": self._serving(model)}

    async def load(self, model: str, version: Optional[str]) -> dict:
        self._versions(model, version)
        if version is not None and self._followed(model) and not self.routing(model, version):
            raise InvalidTransition(f"{model}: the OTA updater manages it and does not admit version {version} "
                                    "(refused before, or not yet validated)")
        self.holds.load(model, version)
        added = await self.repo.load_model(model)
        failed = self.repo.failed.get((model, version)) if version is not None else None
        if failed is not None:
            raise ModelLoadError(f"model {model}/{version} failed to load: {failed}")
        if version is not None and version not in self._serving(model):
            raise InvalidTransition(f"{model}: version {version} was not loaded (held back by the updater's routing rule)")
        log.info("model %s%s loaded by the operator: %s", model, f"/{version}" if version else "", added or "already loaded")
        return {"model": model, "action": "load", "version": version, "loaded": added, "serving": self._serving(model)}

    def _serving(self, model: str) -> List[str]:
        return self.repo.version_names(model) if model in self.repo.models else []
