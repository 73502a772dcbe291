"""The daemon's lifecycle: startup(), main_loop(), shutdown().

Signal handlers only set flags. SIGTERM/SIGINT: stop accepting, drain
in-flight work within ``server.drain_timeout_s``, exit 0; a second signal
forces exit. SIGHUP: re-read the config and the model repository (new
versions load and warm before they serve; removed ones drain first). With
$NOTIFY_SOCKET set, READY=1 goes out once every model is warm, and WATCHDOG=1
only while every batcher thread is alive and making progress.
"""

from __future__ import annotations

import asyncio
import gc
import grp
import logging
import os
import resource
import signal
import time
from pathlib import Path

from pydantic import ValidationError

from . import __version__
from .atomic import sweep_stale_temp_files
from .config import Config, load_config
from .errors import ConfigError, EdgeError, UnknownModel
from .ops.metrics import READY, register_process_collector
from .ops.sdnotify import Notifier
from .serving.repository import ModelRepository
from .serving.service import InferenceService
from .transports.http import HttpTransport

log = logging.getLogger("edge_agent.daemon")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 130

# The unit's UMask= (systemd/edge-agent.service), set by the daemon itself so
# that run by hand from a shell with umask 000 it still creates nothing other
# users may write (or read: the cache holds answers, the state dir the update
# history): directories 0750, files 0640.
DAEMON_UMASK = 0o027
DIR_MODE = 0o750


def make_private_dir(path: Path, group: str | None = None) -> None:
    """Create ``path`` and its missing parents with DIR_MODE, whatever the
    umask (mkdir's mode is filtered through it); ``group`` owns what is created.
    An existing directory is left as the operator made it, with a warning if
    every user may write to it."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not missing:
        mode = path.stat().st_mode
        if mode & 0o002 and not mode & 0o1000:
            log.warning("%s is writable by every user (mode %04o): chmod o-w it", path, mode & 0o7777)
        return
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.warning("group %s does not exist: %s keeps the daemon's group", group, path)
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        os.chmod(d, DIR_MODE)
        if gid != -1:
            try:
                os.chown(d, -1, gid)
            except PermissionError as e:
                log.warning("cannot give %s to group %s: %s", d, group, e)


# What a running daemon cannot change (sockets, threads, files and connections
# are built from it at start-up): a reload keeps the running values, says which
# changed (log, reload result, status: restart_needed) and applies the rest:
# runtime and batching for versions loaded from then on, the request deadlines
# (batching.deadline_*_s), and logging.level.
RESTART_ONLY = ("mode", "device_id", "paths", "server", "mqtt", "cache", "ota", "offload")


def restart_only_changes(running: Config, new: Config) -> list[str]:
    changed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(running, k)]
    if new.logging.json_format != running.logging.json_format:
        changed.append("logging.json_format")
    return changed


def apply_overrides(cfg: Config, overrides: dict) -> Config:
    """Command-line overrides win over the file (so the daemon runs unprivileged anywhere).

    Each is validated like the file (sections validate on assignment, their
    cross-field rules too: ``--tcp 0.0.0.0:PORT`` without TLS and a token is
    refused); a refusal is a ConfigError naming the override."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        obj = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            obj = getattr(obj, p)
        try:
            setattr(obj, last, value)
        except ValidationError as e:
            why = "; ".join(err["msg"].replace("Value error, ", "", 1) for err in e.errors())
            raise ConfigError(f"command-line override {dotted}={value}: {why}") from None
    return cfg


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (an unprivileged
    process may). The soft default (1,024) is what a thousand slow clients
    used to exhaust; the HTTP connection cap is set below whatever this
    leaves (server.limits), so models, SQLite and MQTT keep descriptors.
    Returns (soft, hard) as in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # RLIM_INFINITY cannot be a soft NOFILE limit (the kernel caps it at
    # fs.nr_open): ask for 2^20 then, the usual nr_open.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("descriptor limit raised from %d to %d (RLIMIT_NOFILE hard limit)", soft, target)
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, e)
    else:
        log.info("descriptor limit %d", soft)
    return soft, hard


class Daemon:
    def __init__(self, cfg: Config, config_path: Path | None = None, overrides: dict | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}
        self.notifier = Notifier()
        self.should_exit = False
        self.force_exit = False
        self.reload_requested = False
        self.ready = False
        self.restart_needed: list[str] = []
        self.repo: ModelRepository | None = None
        self.service: InferenceService | None = None
        self.http: HttpTransport | None = None
        self.extras: list = []  # optional components with start()/stop()/status()
        self._last_watchdog = 0.0
        self._reload_lock = asyncio.Lock()
        self._reload_task: asyncio.Task | None = None

    # --- signals -------------------------------------------------------------

    def _on_exit_signal(self, sig: signal.Signals) -> None:
        if self.should_exit:
            log.warning("second %s: forcing exit", sig.name)
            self.force_exit = True
        else:
            log.info("%s received: draining and stopping", sig.name)
        self.should_exit = True

    def _on_hup(self) -> None:
        log.info("SIGHUP received: reloading configuration and models")
        self.reload_requested = True

    # --- lifecycle -----------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_exit_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        try:
            try:
                await self.startup()
            except (EdgeError, OSError) as e:
                log.error("start-up failed: %s", e)
                await self.shutdown()
                return EXIT_STARTUP_FAILED
            await self.main_loop()
            await self.shutdown()
            return EXIT_FORCED if self.force_exit else EXIT_OK
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def startup(self) -> None:
        cfg = self.cfg
        raise_nofile_limit()
        register_process_collector()
        for d in (cfg.paths.state_dir, cfg.paths.cache_dir):
            make_private_dir(d)
        if cfg.mqtt.enabled:
            make_private_dir(cfg.paths.outbox_dir)
        # The socket's directory is as reachable as the socket itself: its group too.
        make_private_dir(cfg.server.socket.parent, cfg.server.socket_group)
        tcp = (cfg.server.tcp.host, cfg.server.tcp.port) if cfg.server.tcp.enabled else None
        # Before loading models (minutes, with a TensorRT build): a bad token or certificate fails fast.
        control = self._control_security(tcp is not None)
        for d in (cfg.paths.state_dir, cfg.paths.models_dir):
            if d.is_dir():
                sweep_stale_temp_files(d)
        loop = asyncio.get_running_loop()
        self.repo = ModelRepository(cfg, loop)
        if cfg.ota.enabled:
            from .ota.agent import startup_admit

            # Refused and unvalidated versions stay unloaded from the first scan on
            # (the agent installs its own hook when it starts).
            self.repo.admit = startup_admit(cfg.paths.state_dir, cfg.ota.models)
        self.service = InferenceService(cfg, self.repo, cache=self._make_cache())
        self.notifier.status("loading models")
        await self.repo.sync()
        if not self.repo.models:
            log.warning("no model loaded from %s", cfg.paths.models_dir)
        self.http = HttpTransport(self, cfg.server.socket, cfg.server.socket_mode, cfg.server.socket_group, tcp,
                                  cfg.server.max_body_bytes, *control, limits=cfg.server.limits)
        await self.http.start()
        for comp in self._make_extras():
            await comp.start()
            self.extras.append(comp)
        # What start-up made (modules, sessions, loaded models: ~50k objects)
        # lives as long as the process. Out of the collector's sight, a full
        # collection scans only what requests left behind: ~17 ms -> ~3 ms per
        # collection, and the p99 under load with it (BENCHMARKS.md).
        gc.collect()
        gc.freeze()
        self.ready = True
        READY.set(1)
        models = ", ".join(f"{m['name']}/{m['version']}" for m in self.repo.index() if m["state"] == "READY")
        self.notifier.ready(f"serving {models or 'no models'}")
        log.info("edge-agent %s ready (%s mode): %s", __version__, cfg.mode, models or "no models")

    def _control_security(self, tcp: bool) -> tuple:
        """Who may use control endpoints (ControlAuthority) and the TCP
        listener's TLS context; ConfigError (exit 3) for an unreadable or
        short token file, unloadable certificates."""
        from .transports.authority import ControlAuthority, load_token, tls_context

        t = self.cfg.server.tcp
        token = load_token(t) if tcp else None
        ssl_ctx = tls_context(t.tls) if tcp and t.tls is not None else None
        return ControlAuthority(self.cfg.server.admin_group, token), ssl_ctx

    def _make_cache(self):
        c = self.cfg.cache
        if not c.enabled:
            return None
        from .cache import ResponseCache

        return ResponseCache(self.cfg.paths.cache_dir, c.memory_max_bytes, c.disk_max_bytes, c.default_ttl_s)

    def _make_extras(self) -> list:
        """Optional components, each with name, start(), stop(), status() and
        optionally ctl(model, action, body). MQTT first, so the OTA agent can
        take commands from it and report progress through it."""
        extras: list = []
        mqtt = None
        if self.cfg.mqtt.enabled:
            from .transports.mqtt import MqttTransport

            mqtt = MqttTransport(self.cfg.mqtt, self.cfg.device_id, self.service, self.cfg.paths.outbox_dir, self.status, __version__)
            extras.append(mqtt)
            self._wire_offload(mqtt)
        elif self.cfg.offload.enabled:
            log.warning("offload.enabled needs mqtt.enabled: requests are not offloaded")
        if self.cfg.ota.enabled:
            from .ota.agent import OtaAgent

            ota = OtaAgent(self)
            if mqtt is not None:
                mqtt.on_ota_command(lambda topic, command: ota.command(command))
                ota.add_state_listener(mqtt.publish_ota_state)
            extras.append(ota)
        return extras

    def _wire_offload(self, mqtt) -> None:
        """Companion: take offloaded requests for the served models. Edge: offload to companions."""
        o = self.cfg.offload
        if self.cfg.mode == "companion":
            mqtt.serve_offload(o.group, o.prefix, lambda: list(self.repo.models))
        elif o.enabled:
            if self.cfg.mqtt.protocol != "5":
                log.warning("offload needs mqtt.protocol 5 (ResponseTopic + CorrelationData): requests are not offloaded")
                return
            from .transports.offload import Offloader

            self.service.offloader = Offloader(o, mqtt)

    async def main_loop(self) -> None:
        tick = 0.05
        while not self.should_exit:
            await asyncio.sleep(tick)
            for mv in self.repo.all_versions():
                mv.batcher.sweep_expired()
            self._feed_watchdog()
            if self.reload_requested and (self._reload_task is None or self._reload_task.done()):
                self.reload_requested = False
                # In the background: loading a model (a TensorRT engine build)
                # can take minutes, and the watchdog must be fed meanwhile.
                self._reload_task = asyncio.create_task(self._reload_logged())

    def healthy(self) -> bool:
        stuck = self.cfg.batching.stuck_after_s
        return all(mv.batcher.alive(stuck) for mv in self.repo.all_versions())

    def _feed_watchdog(self) -> None:
        wd = self.notifier.watchdog_s
        if not wd:
            return
        now = time.monotonic()
        if now - self._last_watchdog < wd / 3:
            return
        if self.healthy():
            self.notifier.watchdog()
            self._last_watchdog = now
        else:
            log.error("a batcher is dead or stuck; withholding the systemd watchdog ping")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # noqa: BLE001 - a failed reload must not end the daemon
            log.exception("reload failed; serving what was loaded")

    async def reload(self) -> dict:
        async with self._reload_lock:
            self.notifier.reloading()
            result: dict = {}
            if self.config_path is not None:
                try:
                    new = apply_overrides(load_config(self.config_path), self.overrides)
                    running = self.cfg
                    self.restart_needed = restart_only_changes(running, new)
                    if self.restart_needed:
                        log.warning("reload: %s changed; kept as running until the next restart",
                                    ", ".join(self.restart_needed))
                    for key in RESTART_ONLY:
                        setattr(new, key, getattr(running, key))
                    new.logging.json_format = running.logging.json_format
                    if new.logging.level != running.logging.level:
                        logging.getLogger().setLevel(new.logging.level)
                        log.info("reload: log level %s", new.logging.level)
                    self.cfg = new
                    self.repo.cfg = new
                    self.service.configure(new)
                    result["restart_needed"] = self.restart_needed
                except ConfigError as e:
                    log.error("reload: keeping the running configuration: %s", e.message)
                    result["config_error"] = e.message
            result.update(await self.repo.sync())
            log.info("reload done: added %s, removed %s", result.get("added"), result.get("removed"))
            self.notifier.ready()
            return result

    async def ctl(self, model: str, action: str, body: dict) -> dict:
        """Operator actions on a model over the socket (OTA adds promote/rollback)."""
        for comp in self.extras:
            handler = getattr(comp, "ctl", None)
            if handler is not None:
                res = await handler(model, action, body)
                if res is not None:
                    return res
        if model not in self.repo.models:
            raise UnknownModel(f"unknown model '{model}'")
        raise EdgeError(f"action '{action}' is not available (is OTA enabled?)")

    def status(self) -> dict:
        doc = {
            "device_id": self.cfg.device_id,
            "agent_version": __version__,
            "mode": self.cfg.mode,
            "ready": self.ready,
            "pid": os.getpid(),
            "models": self.repo.index() if self.repo else [],
            # Config sections changed on disk that only a restart applies (see reload).
            "restart_needed": self.restart_needed,
            "stats": self.service.stats() if self.service else {},
        }
        for comp in self.extras:
            st = getattr(comp, "status", None)
            if st is not None:
                doc[comp.name] = st()
        return doc

    async def shutdown(self) -> None:
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_task.cancel()
        self.ready = False
        READY.set(0)
        self.notifier.stopping()
        timeout = self.cfg.server.drain_timeout_s
        if self.service is not None:
            self.service.accepting = False
        if self.http is not None:
            self.http.stop_listening()
        t0 = time.monotonic()
        if self.repo is not None and not self.force_exit:
            await self.repo.close(timeout)
        if self.http is not None:
            await self.http.shutdown(max(0.1, timeout - (time.monotonic() - t0)))
        for comp in reversed(self.extras):
            try:
                await comp.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                log.exception("stopping %s failed", getattr(comp, "name", comp))
        if self.service is not None and self.service.cache is not None:
            self.service.cache.close()
        if self.repo is not None:
            for mv in self.repo.all_versions():
                mv.batcher.close()
        log.info("stopped")


def run_daemon(cfg: Config, config_path: Path | None, overrides: dict) -> int:
    os.umask(DAEMON_UMASK)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is optional; asyncio's loop works, slower
        runner = asyncio.run
    return runner(Daemon(cfg, config_path, overrides).serve())
