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
import logging
import os
import signal
import time
from pathlib import Path

from . import __version__
from .atomic import sweep_stale_temp_files
from .config import Config, load_config
from .errors import ConfigError, EdgeError, UnknownModel
from .ops.host import DAEMON_UMASK, make_private_dir, raise_nofile_limit
from .ops.metrics import READY, register_process_collector
from .ops.sdnotify import Notifier
from .serving.repository import ModelRepository
from .serving.service import InferenceService
from .transports.http import HttpTransport

log = logging.getLogger("edge_agent.daemon")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 130

# What a running daemon cannot change (sockets, threads, files and connections
# are built from it at start-up): a reload keeps the running values, says which
# changed (log, reload result, status: restart_needed) and applies the rest:
# runtime and batching for versions loaded from then on, the request deadlines
# (batching.deadline_*_s), and logging.level.
RESTART_ONLY = ("mode", "device_id", "paths", "server", "mqtt", "cache", "ota", "offload", "telemetry")


def restart_only_changes(running: Config, new: Config) -> list[str]:
    changed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(running, k)]
    if new.logging.json_format != running.logging.json_format:
        changed.append("logging.json_format")
    return changed


class Daemon:
    def __init__(self, cfg: Config, config_path: Path | None = None, overrides: dict | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}  # the command line's, nested like the file: laid over it on reload
        self.notifier = Notifier()
        self.should_exit = False
        self.force_exit = False
        self.reload_requested = False
        self.ready = False
        self.restart_needed: list[str] = []
        self.repo: ModelRepository | None = None
        self.routing = None  # with OTA: the routing rule installed on repo (ota/routing.py)
        self.control = None  # the operator's load/unload (serving/model_control.py)
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
            from .ota.routing import RoutingRule

            # Installed once, before the first scan: refused and unvalidated versions
            # are never loaded, and the OTA agent feeds it its records when it starts.
            self.routing = RoutingRule(cfg.paths.state_dir, cfg.paths.models_dir, cfg.ota.models)
            self.repo.admit = self.routing
        self.service = InferenceService(cfg, self.repo, cache=self._make_cache())
        from .serving.model_control import ModelControl

        # Before the first scan: a model the operator unloaded stays unloaded (persisted).
        self.control = ModelControl(self.repo, cfg.paths.state_dir, cfg.server.drain_timeout_s, self.routing)
        self.notifier.status("loading models")
        await self.repo.sync()
        if not self.repo.models:
            log.warning("no model loaded from %s", cfg.paths.models_dir)
        self.http = HttpTransport(self, cfg.server.socket, cfg.server.socket_mode, cfg.server.socket_group, tcp,
                                  cfg.server.max_body_bytes, *control, limits=cfg.server.limits,
                                  metrics=(cfg.server.metrics.host, cfg.server.metrics.port) if cfg.server.metrics.enabled else None)
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
        if self.cfg.ota.enabled:
            from .ota.agent import OtaAgent

            ota = OtaAgent(self, self.routing)
            if mqtt is not None:
                mqtt.on_ota_command(lambda topic, command, source: ota.command(command, source=source))
                ota.add_state_listener(mqtt.publish_ota_state)
            extras.append(ota)
        if self.cfg.telemetry.enabled:
            from .ops.hwtelemetry import HardwareTelemetry

            extras.append(HardwareTelemetry(self.cfg.telemetry))
        return extras

    def _wire_offload(self, mqtt) -> None:
        """Companion: take offloaded requests for the served models. Edge: offload to companions
        (the config model guarantees MQTT 5 for both)."""
        o = self.cfg.offload
        if self.cfg.mode == "companion":
            mqtt.serve_offload(o.group, o.prefix, lambda: list(self.repo.models))
        elif o.enabled:
            from .transports.mqtt.offload import Offloader

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
                    new = load_config(self.config_path, self.overrides)
                    running = self.cfg
                    self.restart_needed = restart_only_changes(running, new)
                    if self.restart_needed:
                        log.warning("reload: %s changed; kept as running until the next restart",
                                    ", ".join(self.restart_needed))
                    # Not one by one (setattr): the rules between sections would judge a mix
                    # of both. Running's sections together are valid, and no rule spans them
                    # and the rest.
                    new = new.model_copy(update={key: getattr(running, key) for key in RESTART_ONLY})
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
        """Operator actions on a model over the socket: load/unload (model_control.py); OTA adds promote/rollback."""
        for comp in self.extras:
            handler = getattr(comp, "ctl", None)
            if handler is not None:
                res = await handler(model, action, body)
                if res is not None:
                    return res
        res = await self.control.act(model, action, body)
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
        if self.service is not None and self.service.offloader is not None:
            doc["offload"] = self.service.offloader.status()
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
