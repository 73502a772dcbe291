"""Drives one model's update through the state machine, step by step.

Here are the decisions: which event each step fires, when to retry, reject or
give up, how the pointers settle after a verdict, and the public calls (poll,
commands, the canary's answers). The blocking work of the states before a canary
(download, verify, validate: HTTP, disk, ONNX Runtime) is ``install.py``'s.

Never touching the daemon: what the serving side must do (start a canary,
promote, roll back) is queued as an intent (``intents.py``) for the caller to
take and carry out. In the daemon the OTA agent calls it from the model's
single worker thread (``worker.py``), so its calls never overlap, and carries
the intents out on the event loop.

Standalone (no daemon), ``advance()`` carries the intents out itself through
``DaemonHooks``; the default hooks have no canary, so an update is promoted
right after validation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, List

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from ..errors import EdgeError, ModelLoadError
from ..runtime.artifacts import serving_providers
from .errors import InvalidTransition, OtaError, UnknownChannel
from .golden import RunnerFactory
from .install import Installer, Validator
from .intents import DaemonHooks, Intent, Promote, RollBack, StandaloneHooks, StartCanary, Verdict, carry_out
from .manifest import safe_name, version_key
from .metrics import REJECTIONS
from .registry import RegistryClient
from .statemachine import IN_FLIGHT, Event, State, UpdateRecord, UpdateStateMachine
from .validate import validate_version
from .versions import Pointers, cleanup, read_pointers, remove_dir, served_version, write_pointers

log = logging.getLogger(__name__)


class Updater:
    def __init__(
        self,
        model: str,
        *,
        registry_url: str,
        models_dir: Path,
        state_dir: Path,
        public_keys: list[Path] | list[Ed25519PublicKey],
        channel: str = "stable",
        hooks: DaemonHooks | None = None,
        validator: Validator | None = None,
        runner_factory: RunnerFactory | None = None,
        providers: list[str] | None = None,
        on_progress: Callable[[UpdateRecord], None] | None = None,
        max_attempts: int = 5,
        max_canary_attempts: int = 2,
        keep_versions: int = 3,
        bandwidth_limit_bps: int | None = None,
        download_attempts: int = 3,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        agent_version: str = __version__,
        session: requests.Session | None = None,
    ) -> None:
        self.model = safe_name(model)
        self.registry = RegistryClient(registry_url, self.model, public_keys, download_attempts=download_attempts,
                                       backoff_s=backoff_s, bandwidth_limit_bps=bandwidth_limit_bps,
                                       agent_version=agent_version, session=session)
        self.models_dir, self.state_dir = Path(models_dir), Path(state_dir)
        self.channel = channel
        self.hooks = hooks or StandaloneHooks()
        self.runner_factory = runner_factory
        # providers: the daemon's (configured and available), so validation picks the file it will serve.
        self.installer = Installer(self.model, self.models_dir, self.registry,
                                   validator or (lambda d, m, s: validate_version(d, m, s, self.runner_factory,
                                                                                  providers=providers)))
        self.keep_versions = keep_versions
        self.sm = UpdateStateMachine(self.state_dir, model, max_attempts=max_attempts,
                                     max_canary_attempts=max_canary_attempts, on_change=on_progress)
        self._canary_started = False
        self._last_progress = 0.0
        self._intents: List[Intent] = []  # for the caller to carry out, in order (take_intents)

    @property
    def validator(self) -> Validator:
        """What checks a staged version; the installer runs it. Set after construction to wrap it
        (the OTA agent puts memory admission in front: runtime/memory.py ``admitting``)."""
        return self.installer.validator

    @validator.setter
    def validator(self, v: Validator) -> None:
        self.installer.validator = v

    @classmethod
    def from_config(cls, cfg, model: str, **kw) -> Updater:
        """Build from edge_agent.config.Config (paths + ota sections); ``kw`` overrides/adds hooks etc."""
        ota = cfg.ota
        args = dict(registry_url=ota.registry_url, models_dir=cfg.paths.models_dir, state_dir=cfg.paths.state_dir,
                    public_keys=ota.public_keys, channel=ota.channel, max_attempts=ota.max_attempts,
                    keep_versions=ota.keep_versions, bandwidth_limit_bps=ota.bandwidth_limit_bps,
                    providers=serving_providers(cfg.runtime))
        args.update(kw)
        return cls(model, **args)

    # -- queries -------------------------------------------------------------------------

    @property
    def record(self) -> UpdateRecord:
        return self.sm.record

    @property
    def state(self) -> State:
        return self.sm.state

    @property
    def canary_routed(self) -> bool:
        """In canary, and the serving side routes its share: waiting for ``decide``."""
        return self.state is State.CANARY and self._canary_started

    def version_dir(self, version: str) -> Path:
        return self.installer.version_dir(version)

    def served(self) -> str | None:
        return served_version(self.models_dir, self.state_dir, self.model)

    # -- starting an update --------------------------------------------------------------

    def check(self, channel: str | None = None) -> str | None:
        """Poll: start an update if the channel points at a version worth installing. Returns it or None."""
        channel = channel or self.channel
        index = self.registry.index()
        target = index.channels.get(channel)
        if target is None:
            raise UnknownChannel(f"{self.model}: channel {channel!r} not in index", channel=channel)
        served = self.served()
        if self.state in IN_FLIGHT:
            return None
        if target == served or target in self.record.rejected:
            return None
        if served is not None and version_key(target) < version_key(served):
            # A replayed old index must not downgrade a device; a command can (force).
            log.info("%s: channel %s points at %s, older than served %s; ignoring", self.model, channel, target, served)
            return None
        self.begin(target, channel=channel)
        return target

    def begin(self, version: str, *, channel: str | None = None, force: bool = False) -> None:
        """Command: install ``version``. ``force`` allows downgrades and previously rejected versions."""
        safe_name(version)
        if self.state is State.CANARY:
            raise InvalidTransition(f"{self.model}: canary of {self.record.target} in progress; promote or roll back first")
        if not force and version in self.record.rejected:
            raise InvalidTransition(f"{self.model}: version {version} was rejected before; use force", version=version)
        if version == self.served():
            log.info("%s: version %s already served", self.model, version)
            return
        rejected = [v for v in self.record.rejected if v != version] if force else self.record.rejected
        self._canary_started = False
        self.sm.fire(Event.START, target=version, fallback=self.served(), channel=channel, rejected=rejected,
                     reason=f"update to {version}" + (f" from channel {channel}" if channel else ""), code=None)

    # -- running -------------------------------------------------------------------------

    def take_intents(self) -> list[Intent]:
        """What the serving side must do now, in order (``intents.py``); the caller carries it out.
        Any call that moves the machine may queue some (``proceed``, ``canary_started``, ``decide``,
        ``resume``, ``promote``, ``rollback``, ``abandon_active``); none calls the daemon."""
        intents, self._intents = self._intents, []
        return intents

    def proceed(self) -> State:
        """Step until the update rests, waits for a canary verdict, or has intents the
        caller must carry out before it can go on."""
        while True:
            before = (self.state, len(self.record.history))
            state = self.step()
            if self._intents or state not in IN_FLIGHT or (state, len(self.record.history)) == before:
                return state

    def advance(self) -> State:
        """Standalone: step until the update rests or waits for a canary verdict, carrying
        the intents out through ``self.hooks`` and asking them for the verdict."""
        while True:
            before = (self.state, len(self.record.history))
            self.step()
            carry_out(self, self.hooks)
            if self.canary_routed:
                verdict = self.hooks.canary_verdict(self.model, self.record.target)
                self.decide(*(verdict if isinstance(verdict, tuple) else (verdict, None)))
                carry_out(self, self.hooks)
            state = self.state
            if state not in IN_FLIGHT or (state is State.CANARY and (state, len(self.record.history)) == before):
                return state

    def canary_started(self, error: BaseException | None = None) -> State:
        """The serving side's answer to ``StartCanary``: routing a share of traffic to the
        target, or ``error`` saying why it could not (the update is then rolled back)."""
        if self.state is not State.CANARY:
            return self.state  # decided meanwhile (operator)
        if error is None:
            self._canary_started = True
        elif isinstance(error, EdgeError):
            self._reject(error)
        else:  # the daemon's loader: report, roll back
            self._reject(OtaError(f"canary could not start: {type(error).__name__}: {error}"))
        return self.state

    def decide(self, verdict: Verdict, why: str | None = None) -> State:
        """The canary's verdict from live traffic: None (window still open), 'promote' or 'rollback'."""
        if self.state is not State.CANARY or not self._canary_started:
            return self.state  # decided meanwhile (operator), or no canary routing yet
        if verdict == "promote":
            self.sm.fire(Event.PROMOTE, reason="canary verdict: promote" + (f" ({why})" if why else ""))
            self._finish_active()
        elif verdict == "rollback":
            self.sm.fire(Event.ROLLBACK, reason="canary verdict: rollback" + (f" ({why})" if why else ""),
                         code="canary_rollback")
            self._finish_rolled_back()
        return self.state

    def step(self) -> State:
        """Do the current state's work once and fire the resulting event."""
        work = {State.DOWNLOADING: self._download, State.VERIFYING: self._verify,
                State.STAGED: self._validate, State.CANARY: self._canary}.get(self.state)
        if work is None:
            return self.state
        try:
            work()
        except OtaError as e:
            self._failed(e, retry=e.retryable)
        except ModelLoadError as e:
            self._failed(e, retry=False)
        except OSError as e:  # disk full, permission: maybe transient, bounded by attempts
            self._failed(OtaError(f"{type(e).__name__}: {e}"), retry=True)
        return self.state

    def resume(self) -> State:
        """After a restart: redo or revert whatever was interrupted (docs/OTA.md has the table)."""
        state = self.state
        if state in IN_FLIGHT:
            if self.sm.fire(Event.RESUME, reason=f"restarted during {state.value}") not in IN_FLIGHT:
                self._gave_up()
        elif state is State.ACTIVE:
            self._settle_active()
        elif state is State.ROLLED_BACK:
            self._settle_rolled_back()
        elif state is State.FAILED:
            self._discard_target()
        return self.state

    def promote(self, reason: str = "operator") -> State:
        if self.state is not State.CANARY:
            raise InvalidTransition(f"{self.model}: nothing in canary to promote (state {self.state.value})")
        self.sm.fire(Event.PROMOTE, reason=reason)
        self._finish_active()
        return self.state

    def rollback(self, reason: str = "operator") -> State:
        if self.state not in (State.CANARY, State.ACTIVE):
            raise InvalidTransition(f"{self.model}: nothing to roll back (state {self.state.value})")
        if self.state is State.ACTIVE and not self.record.fallback:
            raise InvalidTransition(f"{self.model}: no previous version to roll back to")
        self.sm.fire(Event.ROLLBACK, reason=reason)
        self._finish_rolled_back()
        return self.state

    def abandon_active(self, reason: str) -> State:
        """The promoted version fails to load after a restart: go back to the previous one."""
        ptr = read_pointers(self.state_dir, self.model)
        if self.state is State.ACTIVE and ptr.active == self.record.target and self.record.fallback:
            self.sm.fire(Event.LOAD_FAILED, reason=reason, code="model_load_failed")
            self._finish_rolled_back()
        elif ptr.previous:
            # Not our update (or history lost): still fall back by the pointers alone.
            write_pointers(self.state_dir, self.model, Pointers(active=ptr.previous, previous=None))
        return self.state

    def cleanup(self) -> list[str]:
        protect = (self.record.target,) if self.state in IN_FLIGHT else ()
        return cleanup(self.models_dir, self.state_dir, self.model, self.keep_versions, protect)

    # -- each state's step: the work is install.py's, the event fired is decided here --------

    def _staging(self) -> Path:
        return self.installer.staging(self.record.target)

    def _download(self) -> None:
        self.sm.fire(Event.DOWNLOADED, reason=self.installer.download(self.record.target, self._progress))

    def _verify(self) -> None:
        damage = self.installer.verify(self.record.target, self._protected)
        if damage is None:
            self.sm.fire(Event.VERIFIED, reason="signature and digests verified")
        elif self.sm.fire(Event.RETRY, reason=f"{damage.message}; downloading again", code=damage.code) not in IN_FLIGHT:
            self._gave_up()

    def _validate(self) -> None:
        self.sm.fire(Event.VALIDATED, reason=self.installer.validate(self.record.target, self.record.fallback))

    def _canary(self) -> None:
        """Until the serving side routes traffic to it, ask for that; then wait for ``decide``."""
        if not self._canary_started:
            target = self.record.target
            self._intents.append(StartCanary(target, self.version_dir(target)))

    def _finish_active(self) -> None:
        self._settle_active()
        self._intents.append(Promote(self.record.target))
        self.cleanup()

    def _finish_rolled_back(self) -> None:
        self._settle_rolled_back()
        self._intents.append(RollBack(self.record.target))
        self._canary_started = False

    def _settle_active(self) -> None:
        """Idempotent: pointers say target is active and the old active is previous."""
        target, ptr = self.record.target, read_pointers(self.state_dir, self.model)
        if target and ptr.active != target:
            write_pointers(self.state_dir, self.model, Pointers(active=target, previous=ptr.active or self.record.fallback))

    def _settle_rolled_back(self) -> None:
        """Idempotent: the fallback is active again; the rejected version is never 'previous'."""
        target, fallback = self.record.target, self.record.fallback
        ptr = read_pointers(self.state_dir, self.model)
        if ptr.active == target or ptr.previous == target:
            write_pointers(self.state_dir, self.model, Pointers(active=fallback, previous=None))
        remove_dir(self._staging())

    def _discard_target(self) -> None:
        """After failure: drop partial or refused files unless they are served."""
        target = self.record.target
        if not target:
            return
        remove_dir(self._staging())
        if target not in self._protected():
            remove_dir(self.version_dir(target))

    def _protected(self) -> set[str]:
        ptr = read_pointers(self.state_dir, self.model)
        return {v for v in (ptr.active, ptr.previous, self.record.fallback) if v}

    def _failed(self, e: EdgeError, retry: bool) -> None:
        log.warning("%s %s: %s failed: [%s] %s", self.model, self.record.target, self.state.value, e.code, e.message)
        if retry:
            if self.sm.fire(Event.RETRY, reason=e.message, code=e.code) not in IN_FLIGHT:
                self._gave_up()
            return
        self._reject(e)

    def _gave_up(self) -> None:
        REJECTIONS.labels(self.model, "retries_exhausted").inc()
        if self.state is State.ROLLED_BACK:
            self._finish_rolled_back()
        else:
            self._discard_target()

    def _reject(self, e: EdgeError) -> None:
        REJECTIONS.labels(self.model, e.code).inc()
        state = self.sm.fire(Event.REJECT, reason=e.message, code=e.code)
        if state is State.FAILED:
            self._discard_target()
        elif state is State.ROLLED_BACK:
            self._finish_rolled_back()

    def _progress(self, done: int, total: int) -> None:
        self.sm.record.progress = {"done": done, "total": total}
        now = time.monotonic()
        if done >= total or now - self._last_progress >= 0.5:
            self._last_progress = now
            self.sm.notify()


