"""The daemon's OTA component: one ``Updater`` per followed model, driven from the event loop.

Per model, one task does everything, in order: poll the channel every
``ota.poll_interval_s``, run commands (MQTT ``{prefix}/{device}/ota``,
``fleet/{group}/ota``) and operator actions (``edge-agent ctl``) as they
arrive, and while a canary runs re-judge it every ``CANARY_TICK_S``. The
updater's blocking work (HTTP, hashing, ONNX Runtime) runs on that model's
single worker thread (``worker.py``), so it is serial by construction; it
never calls back into the loop but returns intents (``intents.py``: start a
canary, promote, roll back), which this task carries out on the loop. The
repository is only ever touched by the loop.

Which versions may be routed is not decided here: the routing rule
(``routing.py``), installed on the repository by the daemon, says it; after
every step ``repo.retire`` unloads what it no longer admits.

Start-up order matters for power-cut safety: pointers are made explicit, an
active version that failed to load is abandoned, the update is resumed, and
only then does polling start.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict

from ..errors import EdgeError, UnknownModel
from ..runtime.memory import admitting
from .canary import CanaryWindow
from .commands import parse_command
from .errors import InvalidTransition
from .golden import pipeline_runner_factory
from .intents import Intent, Promote, StartCanary
from .metrics import CANARY_REQUESTS, CANARY_VERDICTS, COMMANDS, POLL_ERRORS
from .routing import RoutingRule
from .statemachine import IN_FLIGHT, State, UpdateRecord
from .updater import Updater
from .versions import Pointers, read_pointers, write_pointers
from .worker import SerialWorker

log = logging.getLogger("edge_agent.ota")

CANARY_TICK_S = 0.5
Job = Callable[[], Any]  # a coroutine function: one thing to do for a model, run by its task


class OtaAgent:
    name = "ota"

    def __init__(self, daemon, routing: RoutingRule) -> None:
        self.daemon = daemon
        self.routing = routing  # installed on daemon.repo by the daemon; fed our records once we follow
        self.updaters: Dict[str, Updater] = {}
        self.windows: Dict[str, CanaryWindow] = {}
        self.errors: Dict[str, dict] = {}  # last poll/command failure per model
        self._listeners: list = []
        self._jobs: Dict[str, Deque[Job]] = {}
        self._wake: Dict[str, asyncio.Event] = {}
        self._tasks: Dict[str, asyncio.Task] = {}
        self._workers: Dict[str, SerialWorker] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_state: Dict[str, State] = {}

    @property
    def cfg(self):
        return self.daemon.cfg  # re-read: SIGHUP may replace it

    # -- component contract --------------------------------------------------------------

    def add_state_listener(self, fn: Callable[[str, dict], None]) -> None:
        """fn(model, state) on the loop after every transition (and download progress)."""
        self._listeners.append(fn)

    async def start(self) -> None:
        ota = self.cfg.ota  # registry_url and public_keys are there: the config model requires them
        self._loop = asyncio.get_running_loop()
        self.daemon.service.observers.append(self._observe)
        repo = self.daemon.repo
        models = ota.models or sorted({*repo.models, *(name for name, _ in repo.failed)})
        if not models:
            log.warning("ota: no model to follow (ota.models is empty and no model is served)")
        for model in models:
            self._add(model)
        self.routing.follow(models, lambda m: self.updaters[m].record)
        for model in models:
            await self._recover_logged(model)
            self._tasks[model] = asyncio.create_task(self._run(model), name=f"ota-{model}")
        log.info("ota: following %s on channel %s of %s every %gs", models, ota.channel, ota.registry_url,
                 ota.poll_interval_s)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for w in self._workers.values():
            w.close()  # a job still running (a download) is on a daemon thread: exiting under it is a power cut
        if self._observe in self.daemon.service.observers:
            self.daemon.service.observers.remove(self._observe)

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
        """``edge-agent ctl promote|rollback MODEL``: an operator decides a canary (or undoes a promotion).
        Queued for the model's task like any command; answers once it is done."""
        if action not in ("promote", "rollback"):
            return None
        upd = self.updaters.get(model)
        if upd is None:
            raise UnknownModel(f"model '{model}' is not followed by the OTA updater")
        want = (body or {}).get("version")
        if want is not None and str(want) != upd.record.target:
            raise InvalidTransition(f"{model}: the update in progress is version {upd.record.target}, not {want}")
        fn = upd.promote if action == "promote" else upd.rollback
        done = asyncio.get_running_loop().create_future()

        async def job() -> None:
            try:
                state = await self._act(model, fn, f"operator: edge-agent ctl {action}")
                await self.daemon.repo.retire(model)
            except asyncio.CancelledError:
                done.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - the operator gets it (invalid_transition: 409)
                done.set_exception(e)
            else:
                done.set_result(state)

        self._queue(model, job)
        state = await done
        log.info("ota: %s %s by operator -> %s", model, action, state.value)
        return {"model": model, "action": action, **_public(upd.record)}

    async def command(self, topic_or_payload: Any, payload: dict | None = None, *, source: str | None = None) -> dict:
        """An OTA command: ``command(payload)`` or ``command(topic, payload)`` (the MQTT transport's form).
        ``source`` names who sent it in the log (the MQTT transport: ``mqtt:{controller} on {topic}``).

        Payload: see ``commands.py``. Queued for the model's task and acted on at once; the outcome
        shows in the state listeners. Never raises: a bad command is logged with its code and counted."""
        doc = payload if payload is not None else topic_or_payload
        if source is None:
            source = topic_or_payload if payload is not None else "local"
        try:
            models, cmd = parse_command(doc, self.updaters)
        except EdgeError as e:
            COMMANDS.labels("rejected").inc()
            log.warning("ota: command from %s refused: [%s] %s", source, e.code, e.message)
            return e.to_dict()
        for model in models:
            self._queue(model, functools.partial(self._execute, model, cmd))
        COMMANDS.labels("accepted").inc()
        log.info("ota: command from %s accepted: %s", source, doc)
        return {"accepted": models}

    # -- following one model -------------------------------------------------------------

    def _add(self, model: str) -> None:
        self.updaters[model] = upd = Updater.from_config(
            self.cfg, model, runner_factory=pipeline_runner_factory(lambda: self.cfg),
            on_progress=lambda rec, m=model: self._on_progress(m, rec))
        upd.validator = admitting(upd.validator, self.daemon.repo.memory, lambda: self.cfg, model)
        self._workers[model] = SerialWorker(f"ota-{model}")
        self._jobs[model] = deque()
        self._wake[model] = asyncio.Event()
        self._last_state[model] = upd.state

    async def _recover_logged(self, model: str) -> None:
        try:
            await self._recover(model, self.updaters[model])
        except (EdgeError, OSError) as e:
            # One model's broken update state must not keep the daemon (and its other models) down.
            code = getattr(e, "code", "io_error")
            POLL_ERRORS.labels(model, code).inc()
            self.errors[model] = {"during": "recover", "code": code, "message": str(e), "at": time.time()}
            log.error("ota: %s: recovering the update state failed: [%s] %s", model, code, e)
        self._publish(model, self.updaters[model].record)

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
            await self._act(model, upd.abandon_active, reason)
            repo.refresh_default(model)
        state = await self._act(model, upd.resume)
        repo.refresh_default(model)
        await repo.retire(model)
        if state is not State.CANARY and model in repo.models:
            repo.set_canary(model, None)
        log.info("ota: %s: resumed in state %s (target %s, serving %s)", model, state.value, upd.record.target,
                 read_pointers(state_dir, model).active)

    async def _run(self, model: str) -> None:
        upd, wake, jobs, loop = self.updaters[model], self._wake[model], self._jobs[model], asyncio.get_running_loop()
        next_poll = 0.0
        await self._advance(model, "resume")
        while True:
            if jobs:
                await jobs.popleft()()
                continue
            timeout = max(0.0, next_poll - loop.time())
            if upd.state is State.CANARY:
                timeout = min(timeout, CANARY_TICK_S)
            if timeout > 0:
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
            wake.clear()
            if jobs:
                continue
            if loop.time() >= next_poll:
                next_poll = loop.time() + self.cfg.ota.poll_interval_s
                if await self._step(model, "poll", upd.check) is not None or upd.state in IN_FLIGHT:
                    await self._advance(model, "update")
            elif upd.state is State.CANARY:
                await self._advance(model, "canary")

    def _queue(self, model: str, job: Job) -> None:
        self._jobs[model].append(job)
        self._wake[model].set()

    async def _execute(self, model: str, cmd: dict) -> None:
        upd = self.updaters[model]
        if cmd.get("version") is not None:
            await self._step(model, "command", upd.begin, cmd["version"], channel=cmd.get("channel"),
                             force=cmd.get("force", False))
        else:
            await self._step(model, "command", upd.check, cmd.get("channel"))
        await self._advance(model, "update")

    async def _advance(self, model: str, what: str) -> None:
        """Move the update on as far as it goes now; while its canary routes traffic, judge it."""
        upd = self.updaters[model]
        await self._step(model, what, upd.proceed)
        if upd.state is State.CANARY and upd.canary_routed:
            verdict, why = self._verdict(model, upd.record.target)
            if verdict is not None:
                await self._step(model, "canary", upd.decide, verdict, why)

    async def _step(self, model: str, what: str, fn, *args, **kwargs):
        """One updater call and its intents; a failure is logged with its code, never ends the loop."""
        try:
            result = await self._act(model, fn, *args, **kwargs)
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
        await self.daemon.repo.retire(model)
        return result

    async def _act(self, model: str, fn, *args, **kwargs):
        """Run ``fn`` on the model's worker, then carry out the intents it left; returns its result."""
        upd = self.updaters[model]

        def job():
            return fn(*args, **kwargs), upd.take_intents()

        result, intents = await asyncio.wrap_future(self._workers[model].submit(job))
        await self._carry_out(model, intents)
        return result

    # -- carrying out the updater's intents (on the loop) --------------------------------

    async def _carry_out(self, model: str, intents: list[Intent]) -> None:
        for intent in intents:
            if isinstance(intent, StartCanary):
                try:
                    await self._start_canary(model, intent.version, intent.version_dir)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - refused by the loader: the updater rolls back
                    await self._act(model, self.updaters[model].canary_started, e)
                else:
                    await self._act(model, self.updaters[model].canary_started, None)
            elif isinstance(intent, Promote):
                await self._route_all(model, intent.version)
            else:  # RollBack: the pointers name the fallback; the routing rule refuses the version now
                await self._route_all(model, read_pointers(self.cfg.paths.state_dir, model).active)

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

    def _verdict(self, model: str, version: str):
        w = self.windows.get(model)
        if w is None or w.version != version:
            return "promote", "no version to compare with"
        verdict, why = w.verdict()
        if verdict is not None:
            CANARY_VERDICTS.labels(model, verdict).inc()
            (log.info if verdict == "promote" else log.warning)("ota: %s %s: canary verdict %s: %s",
                                                                model, version, verdict, why)
        return verdict, why

    async def _route_all(self, model: str, version: str | None) -> None:
        """Every request to ``version`` (loaded if it is not), none to a canary. The pointers
        already name it, so the repository's default follows them."""
        repo = self.daemon.repo
        if version:
            entry = repo.models.get(model)
            vdir = self.cfg.paths.models_dir / model / version
            if (entry is None or version not in entry.versions) and (vdir / "model.onnx").is_file():
                await repo.load(model, version, vdir)
        if model in repo.models:
            repo.set_canary(model, None)
            repo.refresh_default(model)
        self.windows.pop(model, None)

    # -- plumbing ------------------------------------------------------------------------

    def _observe(self, mv, ok: bool, seconds: float) -> None:
        w = self.windows.get(mv.name)
        if w is None:
            return
        role = w.observe(mv.version, ok, seconds)
        CANARY_REQUESTS.labels(mv.name, role, "ok" if ok else "error").inc()

    def _on_progress(self, model: str, rec: UpdateRecord) -> None:
        """Called by the state machine on the model's worker, after the state is on disk."""
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

    def _publish(self, model: str, rec: UpdateRecord) -> None:
        doc = _public(rec)
        for fn in self._listeners:
            try:
                fn(model, doc)
            except Exception:  # noqa: BLE001 - a broken listener must not stop the update
                log.exception("ota: state listener failed")


def _public(rec: UpdateRecord) -> dict:
    """The record as shown in status and on the state topic: recent history only."""
    doc = rec.model_dump(mode="json")
    doc["history"] = doc["history"][-8:]
    return doc
