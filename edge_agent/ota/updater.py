"""Drives one model's update through the state machine, step by step.

Blocking (HTTP, disk, ONNX Runtime): the daemon runs ``step``/``advance`` in a
worker thread. Daemon-side actions are injected through ``DaemonHooks``; they
are called from that thread. Without hooks the updater works standalone and
promotes right after validation (no canary).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Literal, Protocol
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from ..atomic import atomic_write, fsync_dir
from ..digests import sha256_file
from ..errors import EdgeError, ModelLoadError
from ..runtime.artifacts import serving_providers
from . import download as dl
from .errors import (AgentTooOld, ArtifactDigestMismatch, ArtifactSizeMismatch, InvalidTransition, ManifestInvalid,
                     OtaError, UnknownChannel)
from .golden import RunnerFactory
from .manifest import MANIFEST, SIGNATURE, IOSignature, Manifest, RegistryIndex, parse_agent_version, safe_name, version_key
from .metrics import REJECTIONS
from .signing import load_public_keys, verify
from .statemachine import IN_FLIGHT, Event, State, UpdateRecord, UpdateStateMachine
from .validate import served_signature, validate_version
from .versions import STAGING_SUFFIX, Pointers, cleanup, read_pointers, remove_dir, served_version, write_pointers

log = logging.getLogger(__name__)
Verdict = Literal["promote", "rollback"] | None
Validator = Callable[[Path, Manifest, IOSignature | None], None]


class DaemonHooks(Protocol):
    def start_canary(self, model: str, version: str, version_dir: Path) -> None:
        """Load ``version_dir`` and route the configured share of traffic to it. Raise to refuse."""

    def canary_verdict(self, model: str, version: str) -> Verdict | tuple[Verdict, str]:
        """None while the window is open; then 'promote' or 'rollback', optionally with a reason."""

    def promote(self, model: str, version: str) -> None:
        """Serve ``version`` for all traffic (pointers are already written)."""

    def rollback(self, model: str, version: str) -> None:
        """Stop routing to ``version`` and unload it (pointers are already written)."""


class StandaloneHooks:
    """No daemon: no canary, validation is the whole gate."""

    def start_canary(self, model, version, version_dir): pass
    def canary_verdict(self, model, version): return "promote"
    def promote(self, model, version): pass
    def rollback(self, model, version): pass


def _serialized(method):
    """Methods that move the state machine run one at a time per Updater."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


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
        self.registry_url = registry_url.rstrip("/")
        self.models_dir, self.state_dir = Path(models_dir), Path(state_dir)
        self.keys = [k if isinstance(k, Ed25519PublicKey) else None for k in public_keys]
        if None in self.keys:
            self.keys = load_public_keys([Path(k) for k in public_keys])
        self.channel = channel
        self.hooks = hooks or StandaloneHooks()
        self.runner_factory = runner_factory
        # providers: the daemon's (configured and available), so validation picks the file it will serve.
        self.validator = validator or (lambda d, m, s: validate_version(d, m, s, self.runner_factory, providers=providers))
        self.keep_versions = keep_versions
        self.bandwidth_limit_bps = bandwidth_limit_bps
        self.download_attempts, self.backoff_s = download_attempts, backoff_s
        self.agent_version = agent_version
        self.session = session or requests.Session()
        self.sm = UpdateStateMachine(self.state_dir, model, max_attempts=max_attempts,
                                     max_canary_attempts=max_canary_attempts, on_change=on_progress)
        self._canary_started = False
        self._last_progress = 0.0
        # step() runs in a worker thread while ctl promote/rollback arrive from the event loop.
        self._lock = threading.RLock()

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

    def version_dir(self, version: str) -> Path:
        return self.models_dir / self.model / version

    def served(self) -> str | None:
        return served_version(self.models_dir, self.state_dir, self.model)

    def _url(self, *parts: str) -> str:
        return "/".join([self.registry_url, quote(self.model)] + [quote(p) for p in parts])

    def fetch_index(self) -> RegistryIndex:
        data = dl.fetch_bytes(self._url("index.json"), attempts=self.download_attempts, backoff_s=self.backoff_s,
                              session=self.session)
        index = RegistryIndex.parse(data, self._url("index.json"))
        if index.model != self.model:
            raise ManifestInvalid(f"index.json is for model {index.model!r}, not {self.model!r}")
        return index

    # -- starting an update --------------------------------------------------------------

    @_serialized
    def check(self, channel: str | None = None) -> str | None:
        """Poll: start an update if the channel points at a version worth installing. Returns it or None."""
        channel = channel or self.channel
        index = self.fetch_index()
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

    @_serialized
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

    @_serialized
    def advance(self) -> State:
        """Step until the update rests or waits for a canary verdict."""
        while True:
            before = (self.state, len(self.record.history))
            state = self.step()
            if state not in IN_FLIGHT or (state is State.CANARY and (state, len(self.record.history)) == before):
                return state

    @_serialized
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

    @_serialized
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

    @_serialized
    def promote(self, reason: str = "operator") -> State:
        if self.state is not State.CANARY:
            raise InvalidTransition(f"{self.model}: nothing in canary to promote (state {self.state.value})")
        self.sm.fire(Event.PROMOTE, reason=reason)
        self._finish_active()
        return self.state

    @_serialized
    def rollback(self, reason: str = "operator") -> State:
        if self.state not in (State.CANARY, State.ACTIVE):
            raise InvalidTransition(f"{self.model}: nothing to roll back (state {self.state.value})")
        if self.state is State.ACTIVE and not self.record.fallback:
            raise InvalidTransition(f"{self.model}: no previous version to roll back to")
        self.sm.fire(Event.ROLLBACK, reason=reason)
        self._finish_rolled_back()
        return self.state

    @_serialized
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

    # -- the work of each state ----------------------------------------------------------

    def _staging(self) -> Path:
        return self.models_dir / self.model / f"{self.record.target}{STAGING_SUFFIX}"

    def _download(self) -> None:
        target = self.record.target
        final, staging = self.version_dir(target), self._staging()
        if final.is_dir():
            log.info("%s: %s already on disk; verifying it", self.model, final)
            self.sm.fire(Event.DOWNLOADED, reason="already on disk")
            return
        staging.mkdir(parents=True, exist_ok=True)
        body = dl.fetch_bytes(self._url(target, MANIFEST), attempts=self.download_attempts,
                              backoff_s=self.backoff_s, session=self.session)
        sig = dl.fetch_bytes(self._url(target, SIGNATURE), attempts=self.download_attempts,
                             backoff_s=self.backoff_s, session=self.session)
        manifest = self._check_manifest(body, sig)
        atomic_write(staging / MANIFEST, body)
        atomic_write(staging / SIGNATURE, sig)
        total, done_before = manifest.total_size, 0
        for a in manifest.artifacts:
            dest = staging / a.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            base = done_before
            dl.download(self._url(target, *a.path.split("/")), dest, a.size, a.sha256,
                        bandwidth_limit_bps=self.bandwidth_limit_bps, attempts=self.download_attempts,
                        backoff_s=self.backoff_s, session=self.session,
                        progress=lambda done, _size, base=base: self._progress(base + done, total))
            done_before += a.size
        self.sm.fire(Event.DOWNLOADED, reason=f"{len(manifest.artifacts)} artifacts, {total} bytes")

    def _check_manifest(self, body: bytes, sig: bytes) -> Manifest:
        signer = verify(body, sig, self.keys)
        manifest = Manifest.parse(body)
        if (manifest.model, manifest.version) != (self.model, self.record.target):
            raise ManifestInvalid(f"manifest is for {manifest.model} {manifest.version}, expected "
                                  f"{self.model} {self.record.target}")
        if parse_agent_version(self.agent_version) < parse_agent_version(manifest.min_agent_version):
            raise AgentTooOld(f"needs edge-agent >= {manifest.min_agent_version}, this is {self.agent_version}")
        log.debug("%s %s: manifest signed by %s", self.model, manifest.version, signer.key_id)
        return manifest

    def _verify(self) -> None:
        final, staging = self.version_dir(self.record.target), self._staging()
        vdir = final if final.is_dir() else staging
        manifest = self._check_manifest((vdir / MANIFEST).read_bytes(), (vdir / SIGNATURE).read_bytes())
        try:
            for a in manifest.artifacts:
                p = vdir / a.path
                size = p.stat().st_size if p.is_file() else -1
                if size != a.size:
                    raise ArtifactSizeMismatch(f"{a.path}: {size} bytes on disk, manifest says {a.size}")
                digest = sha256_file(p)
                if digest != a.sha256:
                    raise ArtifactDigestMismatch(f"{a.path}: sha256 on disk {digest} != manifest {a.sha256}")
        except (ArtifactSizeMismatch, ArtifactDigestMismatch) as e:
            # The registry's bytes were checked while streaming, so this is local damage: fetch again.
            if vdir == final and self.record.target in self._protected():
                raise
            remove_dir(vdir)
            if self.sm.fire(Event.RETRY, reason=f"{e.message}; downloading again", code=e.code) not in IN_FLIGHT:
                self._gave_up()
            return
        for leftover in vdir.rglob("*.part"):
            leftover.unlink()
        if vdir == staging:
            staging.rename(final)
            fsync_dir(final.parent)
        self.sm.fire(Event.VERIFIED, reason="signature and digests verified")

    def _validate(self) -> None:
        vdir = self.version_dir(self.record.target)
        manifest = Manifest.parse((vdir / MANIFEST).read_bytes())
        fallback = self.record.fallback
        served = served_signature(self.version_dir(fallback) if fallback else None)
        checked = self.validator(vdir, manifest, served)
        on = f" by {checked.file}, the file this device serves" if getattr(checked, "file", "model.onnx") != "model.onnx" else ""
        self.sm.fire(Event.VALIDATED, reason=f"loads, IO signature matches, golden outputs reproduced{on}")

    def _canary(self) -> None:
        target = self.record.target
        if not self._canary_started:
            try:
                self.hooks.start_canary(self.model, target, self.version_dir(target))
            except EdgeError as e:
                self._reject(e)
                return
            except Exception as e:  # the daemon's loader: report, roll back
                self._reject(OtaError(f"canary could not start: {type(e).__name__}: {e}"))
                return
            self._canary_started = True
        verdict = self.hooks.canary_verdict(self.model, target)
        verdict, why = verdict if isinstance(verdict, tuple) else (verdict, None)
        if verdict == "promote":
            self.sm.fire(Event.PROMOTE, reason="canary verdict: promote" + (f" ({why})" if why else ""))
            self._finish_active()
        elif verdict == "rollback":
            self.sm.fire(Event.ROLLBACK, reason="canary verdict: rollback" + (f" ({why})" if why else ""),
                         code="canary_rollback")
            self._finish_rolled_back()

    def _finish_active(self) -> None:
        self._settle_active()
        self.hooks.promote(self.model, self.record.target)
        self.cleanup()

    def _finish_rolled_back(self) -> None:
        self._settle_rolled_back()
        self.hooks.rollback(self.model, self.record.target)
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


