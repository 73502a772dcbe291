"""The daemon's OTA component: one ``Updater`` per followed model, driven from the event loop.

The updater's work (HTTP, hashing, ONNX Runtime) runs in worker threads; its
``DaemonHooks`` (implemented here) hop back onto the loop for every
repository operation, so the repository is only ever touched by the loop.

Per model one task loops: poll the channel every ``ota.poll_interval_s``,
run commands as they arrive (MQTT ``{prefix}/{device}/ota``,
``fleet/{group}/ota``), and while a canary runs re-judge it every
``CANARY_TICK_S``. Start-up order matters for power-cut safety: pointers are
made explicit, an active version that failed to load is abandoned, a version
not yet validated is unloaded (the repository loads every directory it finds),
and only then does the updater resume.

Test failpoint: ``EDGE_AGENT_OTA_HOLD=staged,verifying`` makes the worker sleep
right after such a state is persisted and before its work, so a test can
kill -9 the daemon in exactly that state. Unset in production.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, EdgeError, MalformedRequest, UnknownModel
from ..runtime.model_spec import ModelSpec
from ..runtime.session import LoadedModel
from ..types import InferRequest
from .canary import CanaryWindow
from .errors import InvalidTransition
from .manifest import safe_name
from .metrics import CANARY_REQUESTS, CANARY_VERDICTS, COMMANDS, POLL_ERRORS
from .statemachine import IN_FLIGHT, State, UpdateRecord
from .updater import Updater
from .versions import Pointers, read_pointers, write_pointers

log = logging.getLogger("edge_agent.ota")

CANARY_TICK_S = 0.5
HOOK_TIMEOUT_S = 300.0  # a load + warm-up of a big model on a slow unit
HOLD_ENV, HOLD_S = "EDGE_AGENT_OTA_HOLD", 120.0
PRE_CANARY = frozenset({State.DOWNLOADING, State.VERIFYING, State.STAGED})


def kept_versions(ptr: Pointers, rec: UpdateRecord) -> set[str]:
    """Active, previous, and the target of a running canary: routable whatever else holds."""
    kept = {ptr.active, ptr.previous}
    if rec.state is State.CANARY:
        kept.add(rec.target)
    return kept


def held_back(version: str, rec: UpdateRecord, kept: set[str]) -> bool:
    """A version on disk that must not be routable: refused before, or the target of an
    update not yet validated."""
    if version in kept:
        return False
    return version in rec.rejected or (rec.state in PRE_CANARY and version == rec.target)


def startup_admit(state_dir: Path, followed: list[str]) -> Callable[[str, str], bool]:
    """The repository's admit hook for the start-up scan, which runs before the agent does:
    the agent's own rule, read from the persisted update records and pointers. Without it a
    refused or unvalidated version would be loaded (and could take the start-up down with
    it) until the agent's first step unloaded it. A model with no readable record admits all.
    Each model's record and pointers are read once (the agent replaces this hook when it starts)."""

    @functools.cache
    def rule(model: str) -> tuple[UpdateRecord, set[str]] | None:
        path = Path(state_dir) / "ota" / f"{model}.json"
        try:
            rec = UpdateRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # the agent logs and resets it when it starts
            log.warning("ota: %s unreadable at start-up (%s); loading every version of %s", path, e, model)
            return None
        return rec, kept_versions(read_pointers(state_dir, model), rec)

    def admit(model: str, version: str) -> bool:
        if followed and model not in followed:
            return True
        found = rule(model)
        return found is None or not held_back(version, *found)

    return admit


class OtaAgent:
    name = "ota"

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.updaters: dict[str, Updater] = {}
        self.windows: dict[str, CanaryWindow] = {}
        self.errors: dict[str, dict] = {}  # last poll/command failure per model
        self._listeners: list[Callable[[str, dict], None]] = []
        self._commands: dict[str, deque[dict]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holds = {s.strip() for s in os.environ.get(HOLD_ENV, "").split(",") if s.strip()}
        self._last_state: dict[str, State] = {}

    @property
    def cfg(self):
        return self.daemon.cfg  # re-read: SIGHUP may replace it

    # -- component contract --------------------------------------------------------------

    def add_state_listener(self, fn: Callable[[str, dict], None]) -> None:
        """fn(model, state) on the loop after every transition (and download progress)."""
        self._listeners.append(fn)

    async def start(self) -> None:
        ota = self.cfg.ota
        if not ota.registry_url:
            raise ConfigError("ota.enabled needs ota.registry_url")
        if not ota.public_keys:
            raise ConfigError("ota.enabled needs at least one pinned key in ota.public_keys")
        self._loop = asyncio.get_running_loop()
        self.daemon.service.observers.append(self._observe)
        self.daemon.repo.admit = self._admits
        repo = self.daemon.repo
        models = ota.models or sorted({*repo.models, *(name for name, _ in repo.failed)})
        if not models:
            log.warning("ota: no model to follow (ota.models is empty and no model is served)")
        for model in models:
            await self._follow(model)
        log.info("ota: following %s on channel %s of %s every %gs", models, ota.channel, ota.registry_url,
                 ota.poll_interval_s)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._observe in self.daemon.service.observers:
            self.daemon.service.observers.remove(self._observe)
        if self.daemon.repo.admit == self._admits:
            self.daemon.repo.admit = None
        # A worker still downloading is a daemon thread: exiting under it is a power cut the
        # state machine already survives (the .part file resumes next start).

    def status(self) -> dict:
        ota = self.cfg.ota
        models = {}
        for model, upd in self.updaters.items():
            doc = _public(upd.record)
            ptr = read_pointers(self.cfg.paths.state_dir, model)
            doc["serving"] = {"active": ptr.active, "previous": ptr.previous}
            w = self.windows.get(model)
            if w is not None and upd.state is State.CANARY:
                doc["canary"] = w.summary()
            if model in self.errors:
                doc["last_error"] = self.errors[model]
            models[model] = doc
        return {"registry_url": ota.registry_url, "channel": ota.channel, "poll_interval_s": ota.poll_interval_s,
                "models": models}

    async def ctl(self, model: str, action: str, body: dict) -> dict | None:
        """``edge-agent ctl promote|rollback MODEL``: an operator decides a canary (or undoes a promotion)."""
        if action not in ("promote", "rollback"):
            return None
        upd = self.updaters.get(model)
        if upd is None:
            raise UnknownModel(f"model '{model}' is not followed by the OTA updater")
        want = (body or {}).get("version")
        if want is not None and str(want) != upd.record.target:
            raise InvalidTransition(f"{model}: the update in progress is version {upd.record.target}, not {want}")
        fn = upd.promote if action == "promote" else upd.rollback
        state = await self._thread(model, fn, f"operator: edge-agent ctl {action}")
        await self._unload_stale(model)
        log.info("ota: %s %s by operator -> %s", model, action, state.value)
        return {"model": model, "action": action, **_public(upd.record)}

    async def command(self, topic_or_payload: Any, payload: dict | None = None, *, source: str | None = None) -> dict:
        """An OTA command: ``command(payload)`` or ``command(topic, payload)`` (the MQTT transport's form).
        ``source`` names who sent it in the log (the MQTT transport: ``mqtt:{controller} on {topic}``).

        Payload: ``{"model": "digits", "version": "3", "force": false}`` or ``{"model": "digits",
        "channel": "canary"}``; without ``model`` it applies to every followed model (channel only).
        Queued for the model's task and acted on at once; the outcome shows in the state listeners.
        Never raises: a bad command is logged with its code and counted."""
        doc = payload if payload is not None else topic_or_payload
        if source is None:
            source = topic_or_payload if payload is not None else "local"
        try:
            models, cmd = self._parse_command(doc)
            for model in models:
                if model not in self.updaters:
                    # A typo must not start following a new model; list models to install in ota.models.
                    raise UnknownModel(f"OTA command for model '{model}', which this unit does not follow "
                                       f"(follows {sorted(self.updaters)})")
            for model in models:
                self._commands[model].append(cmd)
                self._wake[model].set()
        except EdgeError as e:
            COMMANDS.labels("rejected").inc()
            log.warning("ota: command from %s refused: [%s] %s", source, e.code, e.message)
            return e.to_dict()
        COMMANDS.labels("accepted").inc()
        log.info("ota: command from %s accepted: %s", source, doc)
        return {"accepted": models}

    # -- following one model -------------------------------------------------------------

    async def _follow(self, model: str) -> None:
        upd = Updater.from_config(self.cfg, model, hooks=self, runner_factory=self._pipeline_runner,
                                  on_progress=lambda rec, m=model: self._on_progress(m, rec))
        self.updaters[model] = upd
        self._commands[model] = deque()
        self._wake[model] = asyncio.Event()
        self._last_state[model] = upd.state
        try:
            await self._recover(model, upd)
        except (EdgeError, OSError) as e:
            # One model's broken update state must not keep the daemon (and its other models) down.
            code = getattr(e, "code", "io_error")
            POLL_ERRORS.labels(model, code).inc()
            self.errors[model] = {"during": "recover", "code": code, "message": str(e), "at": time.time()}
            log.error("ota: %s: recovering the update state failed: [%s] %s", model, code, e)
        self._publish(model, upd.record)
        self._tasks[model] = asyncio.create_task(self._run(model), name=f"ota-{model}")

    async def _recover(self, model: str, upd: Updater) -> None:
        """Make what is served consistent with the persisted update, then resume it."""
        repo, state_dir = self.daemon.repo, self.cfg.paths.state_dir
        rec, entry = upd.record, repo.models.get(model)
        ptr = read_pointers(state_dir, model)
        if ptr.active is None and entry is not None and entry.default is not None:
            # Without pointers the repository serves the highest version, which could be one
            # a crash left unvalidated; from here on the pointers decide.
            active = rec.fallback if rec.state in IN_FLIGHT and entry.default == rec.target else entry.default
            if active is not None:
                write_pointers(state_dir, model, Pointers(active=active, previous=ptr.previous))
                repo.refresh_default(model)
        ptr = read_pointers(state_dir, model)
        if ptr.active and (model, ptr.active) in repo.failed:
            reason = f"version {ptr.active} failed to load after restart: {repo.failed[(model, ptr.active)]}"
            log.error("ota: %s: %s; going back to %s", model, reason, ptr.previous)
            await self._thread(model, upd.abandon_active, reason)
            repo.refresh_default(model)
        state = await self._thread(model, upd.resume)
        repo.refresh_default(model)
        await self._unload_stale(model)  # the start-up scan loaded every directory, unvalidated ones too
        if state is not State.CANARY and model in repo.models:
            repo.set_canary(model, None)
        log.info("ota: %s: resumed in state %s (target %s, serving %s)", model, state.value, upd.record.target,
                 read_pointers(state_dir, model).active)

    async def _run(self, model: str) -> None:
        upd, wake, loop = self.updaters[model], self._wake[model], asyncio.get_running_loop()
        next_poll = 0.0
        await self._step(model, "resume", upd.advance)
        while True:
            if self._commands[model]:
                await self._execute(model, self._commands[model].popleft())
                continue
            now = loop.time()
            timeout = max(0.0, next_poll - now)
            if upd.state is State.CANARY:
                timeout = min(timeout, CANARY_TICK_S)
            if timeout > 0:
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            wake.clear()
            if self._commands[model]:
                continue
            if loop.time() >= next_poll:
                next_poll = loop.time() + self.cfg.ota.poll_interval_s
                if await self._step(model, "poll", upd.check) is not None or upd.state in IN_FLIGHT:
                    await self._step(model, "update", upd.advance)
            elif upd.state is State.CANARY:
                await self._step(model, "canary", upd.advance)

    async def _execute(self, model: str, cmd: dict) -> None:
        upd = self.updaters[model]
        if cmd.get("version") is not None:
            await self._step(model, "command", upd.begin, cmd["version"], channel=cmd.get("channel"),
                             force=cmd.get("force", False))
        else:
            await self._step(model, "command", upd.check, cmd.get("channel"))
        await self._step(model, "update", upd.advance)

    async def _step(self, model: str, what: str, fn, *args, **kwargs):
        """Run one updater call in a worker; a failure is logged with its code, never ends the loop."""
        try:
            result = await self._thread(model, fn, *args, **kwargs)
        except EdgeError as e:
            POLL_ERRORS.labels(model, e.code).inc()
            self.errors[model] = {"during": what, "code": e.code, "message": e.message, "at": time.time()}
            log.warning("ota: %s: %s failed: [%s] %s", model, what, e.code, e.message)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the loop must outlive any bug in one step
            POLL_ERRORS.labels(model, "internal").inc()
            self.errors[model] = {"during": what, "code": "internal", "message": f"{type(e).__name__}: {e}",
                                  "at": time.time()}
            log.exception("ota: %s: %s failed", model, what)
            return None
        if what in ("poll", "command"):
            self.errors.pop(model, None)
        await self._unload_stale(model)
        return result

    def _parse_command(self, doc) -> tuple[list[str], dict]:
        if not isinstance(doc, dict):
            raise MalformedRequest("an OTA command is a JSON object")
        unknown = set(doc) - {"model", "version", "channel", "force"}
        if unknown:
            raise MalformedRequest(f"OTA command: unknown keys {sorted(unknown)}")
        model, version, channel = doc.get("model"), doc.get("version"), doc.get("channel")
        cmd: dict = {"force": bool(doc.get("force", False))}
        try:
            if version is not None:
                if isinstance(version, bool) or not isinstance(version, (str, int)):
                    raise ValueError("version must be a string")
                cmd["version"] = safe_name(str(version))
            if channel is not None:
                cmd["channel"] = safe_name(str(channel))
            if model is not None:
                safe_name(str(model))
        except ValueError as e:
            raise MalformedRequest(f"OTA command: {e}") from None
        if version is None and channel is None:
            raise MalformedRequest("OTA command needs 'version' or 'channel'")
        if model is None:
            if version is not None:
                raise MalformedRequest("OTA command with 'version' needs 'model'")
            return list(self.updaters), cmd
        return [str(model)], cmd

    # -- DaemonHooks (called from the updater's worker thread) ---------------------------

    def start_canary(self, model: str, version: str, version_dir: Path) -> None:
        self._on_loop(self._start_canary(model, version, version_dir))

    def canary_verdict(self, model: str, version: str):
        return self._on_loop(self._verdict(model, version))

    def promote(self, model: str, version: str) -> None:
        self._on_loop(self._promote(model, version))

    def rollback(self, model: str, version: str) -> None:
        self._on_loop(self._rollback(model, version))

    async def _start_canary(self, model: str, version: str, vdir: Path) -> None:
        repo = self.daemon.repo
        entry = repo.models.get(model)
        if entry is None or version not in entry.versions:
            await repo.load(model, version, vdir)  # raises EdgeError: the updater rolls back
        entry = repo.models[model]
        if entry.default is None or entry.default == version:
            # First install of this model: nothing to compare with, validation was the gate.
            repo.refresh_default(model)
            self.windows.pop(model, None)
            log.info("ota: %s %s: first version of the model, serving it without a canary", model, version)
            return
        share = self.cfg.ota.canary.share
        self.windows[model] = CanaryWindow(model, version, entry.default, self.cfg.ota.canary)
        repo.set_canary(model, version, share)
        log.info("ota: %s %s: canary started with %.0f%% of traffic against %s", model, version, share * 100,
                 entry.default)

    async def _verdict(self, model: str, version: str):
        w = self.windows.get(model)
        if w is None or w.version != version:
            return "promote", "no version to compare with"
        verdict, why = w.verdict()
        if verdict is not None:
            CANARY_VERDICTS.labels(model, verdict).inc()
            (log.info if verdict == "promote" else log.warning)("ota: %s %s: canary verdict %s: %s",
                                                                model, version, verdict, why)
        return verdict, why

    async def _promote(self, model: str, version: str) -> None:
        repo = self.daemon.repo
        await self._ensure_loaded(model, version)
        if model in repo.models:
            repo.set_canary(model, None)
            repo.refresh_default(model)  # the pointers already say `version`; requests move over now
        self.windows.pop(model, None)

    async def _rollback(self, model: str, version: str) -> None:
        repo = self.daemon.repo
        ptr = read_pointers(self.cfg.paths.state_dir, model)
        if ptr.active:
            await self._ensure_loaded(model, ptr.active)
        if model in repo.models:
            repo.set_canary(model, None)
            repo.refresh_default(model)
        self.windows.pop(model, None)
        if version != ptr.active:
            await self._unload(model, version)  # drains: requests already on it still finish

    async def _ensure_loaded(self, model: str, version: str) -> None:
        repo = self.daemon.repo
        entry = repo.models.get(model)
        vdir = self.cfg.paths.models_dir / model / version
        if (entry is None or version not in entry.versions) and (vdir / "model.onnx").is_file():
            await repo.load(model, version, vdir)

    async def _unload(self, model: str, version: str) -> None:
        entry = self.daemon.repo.models.get(model)
        if entry is not None and version in entry.versions and len(entry.versions) > 1:
            await self.daemon.repo.unload(model, version)

    def _kept(self, model: str) -> set[str]:
        return kept_versions(read_pointers(self.cfg.paths.state_dir, model), self.updaters[model].record)

    def _held_back(self, model: str, version: str, kept: set[str]) -> bool:
        return held_back(version, self.updaters[model].record, kept)

    def _admits(self, model: str, version: str) -> bool:
        """The repository's admit hook: a SIGHUP rescan skips held-back versions."""
        return model not in self.updaters or not self._held_back(model, version, self._kept(model))

    async def _unload_stale(self, model: str) -> None:
        """Unload what must not be routable: versions deleted by keep-K cleanup, refused versions,
        and a target not yet validated. The start-up scan (startup_admit) and SIGHUP rescans
        (_admits) skip the last two already; this runs after every step."""
        entry = self.daemon.repo.models.get(model)
        if entry is None or model not in self.updaters:
            return
        kept = self._kept(model)
        for v in list(entry.versions):
            gone = not (self.cfg.paths.models_dir / model / v / "model.onnx").is_file()
            if v not in kept and (gone or self._held_back(model, v, kept)):
                await self._unload(model, v)

    # -- plumbing ------------------------------------------------------------------------

    def _observe(self, mv, ok: bool, seconds: float) -> None:
        w = self.windows.get(mv.name)
        if w is None:
            return
        role = w.observe(mv.version, ok, seconds)
        CANARY_REQUESTS.labels(mv.name, role, "ok" if ok else "error").inc()

    def _pipeline_runner(self, version_dir: Path, spec: ModelSpec):
        """Golden cases of text models run through the daemon's own pipeline (tokenizer + pooling)."""
        model = LoadedModel(spec.name or version_dir.parent.name, version_dir.name, version_dir,
                            self.cfg.runtime, self.cfg.paths.state_dir)

        def run(inputs):
            return model.run_batch([model.prepare(InferRequest(model=model.name, inputs=inputs))])[0]
        return run

    def _on_progress(self, model: str, rec: UpdateRecord) -> None:
        """Called by the state machine in the worker thread, after the state is on disk."""
        changed = rec.state is not self._last_state.get(model)
        self._last_state[model] = rec.state
        if changed and rec.state in (State.FAILED, State.ROLLED_BACK):
            log.error("ota: %s %s: %s [%s] %s", model, rec.target, rec.state.value, rec.code, rec.reason)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._publish, model, rec.model_copy(deep=True))
            except RuntimeError:  # loop closed while shutting down
                pass
        if changed and rec.state.value in self._holds and threading.current_thread() is not threading.main_thread():
            log.warning("ota: %s: holding in %s (%s is set)", model, rec.state.value, HOLD_ENV)
            time.sleep(HOLD_S)

    def _publish(self, model: str, rec: UpdateRecord) -> None:
        doc = _public(rec)
        for fn in self._listeners:
            try:
                fn(model, doc)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the update
                log.exception("ota: state listener failed")

    async def _thread(self, model: str, fn, *args, **kwargs):
        """Run blocking updater work in a daemon thread (so shutdown never waits on a download)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(ok: bool, value) -> None:
            if not fut.done():
                fut.set_result(value) if ok else fut.set_exception(value)

        def work() -> None:
            try:
                res, ok = fn(*args, **kwargs), True
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                res, ok = e, False
            try:
                loop.call_soon_threadsafe(settle, ok, res)
            except RuntimeError:
                pass

        threading.Thread(target=work, name=f"ota-{model}", daemon=True).start()
        return await fut

    def _on_loop(self, coro):
        """From a worker thread: run ``coro`` on the daemon's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(HOOK_TIMEOUT_S)


def _public(rec: UpdateRecord) -> dict:
    """The record as shown in status and on the state topic: recent history only."""
    doc = rec.model_dump(mode="json")
    doc["history"] = doc["history"][-8:]
    return doc
