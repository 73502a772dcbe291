"""A simulated fleet of real daemons for the fleet tests: one mosquitto, a signed registry
served by nginx, N ``edge-agent run`` processes (the demo digits model, each its own state
dir and socket, MQTT on, light config), and an audit subscriber on ``#`` that counts what
the broker carries -- OTA commands per unit above all.

Daemons start in parallel but bounded (the machine has 2 shared cores).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import paho.mqtt.client as paho

from brokers import Mosquitto
from daemon_proc import REPO, AgentProcess, copy_digits
from edge_agent.ota.publish import publish
from edge_agent.ota.signing import keygen
from nginx_server import NginxServer

MODEL, GROUP, CONTROLLER = "digits", "lab", "fleet-controller"  # the CLI's default identity


def wrong_golden(version_dir, spec):
    """Golden outputs the model does not reproduce: every unit refuses the version (golden_mismatch)."""
    return lambda inputs: {"label": np.zeros(len(inputs["input"]), np.int64),
                           "probabilities": np.full((len(inputs["input"]), 10), 0.1, np.float32)}


class Audit:
    """Subscribes to everything (but $SYS) and counts messages by kind and OTA commands by unit."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.by_kind: collections.Counter = collections.Counter()
        self.commands: List[tuple] = []  # (device, version, force)
        self.bytes = 0
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fleet-audit")
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.subscribe("#", qos=1)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        if parts[0] == "fleet":
            kind = "rollout_control" if parts[-1] == "control" else "rollout_record"
        else:
            kind = "/".join(parts[2:]) if len(parts) > 2 else msg.topic
        with self.lock:
            self.by_kind[kind] += 1
            self.bytes += len(msg.payload)
            if kind == "ota" and not msg.retain:
                doc = json.loads(msg.payload)
                self.commands.append((parts[1], str(doc.get("version")), bool(doc.get("force"))))

    def snapshot(self) -> dict:
        with self.lock:
            return {"by_kind": dict(self.by_kind), "bytes": self.bytes, "commands": len(self.commands)}

    def commands_for(self, version: str) -> collections.Counter:
        with self.lock:
            return collections.Counter(d for d, v, _ in self.commands if v == version)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Fleet:
    def __init__(self, root: Path, units: int) -> None:
        self.root = root
        self.registry = root / "registry"
        self.registry.mkdir(parents=True)
        self.src = root / "src"
        self.priv, self.pub = keygen(root / "keys")
        self.broker = Mosquitto(root / "broker")
        self.nginx = NginxServer(self.registry, root / "nginx", worker_connections=256)
        self.n = units
        self.agents: Dict[str, AgentProcess] = {}
        self.state_dir = root / "controller"
        self.audit: Optional[Audit] = None

    def publish(self, version: str, bad_golden: bool = False) -> None:
        src = copy_digits(self.src, version)
        publish(src, self.registry, self.priv, runner_factory=wrong_golden if bad_golden else None)

    def unit_config(self, i: int) -> dict:
        return {
            "device_id": f"u{i:03d}",
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": self.broker.port, "group": GROUP,
                     "controllers": [CONTROLLER], "telemetry_interval_s": 3600,
                     "labels": {"site": "lab", "ring": "a" if i % 2 == 0 else "b"}},
            "ota": {"enabled": True, "registry_url": self.nginx.url, "public_keys": [str(self.pub)],
                    "models": [MODEL], "poll_interval_s": 3600,
                    "canary": {"min_requests": 1, "max_seconds": 1.0}},
            "cache": {"enabled": False},
            "runtime": {"intra_op_num_threads": 1, "inter_op_num_threads": 1},
        }

    def start(self, parallel: int = 4) -> None:
        self.broker.start()
        self.nginx.start()
        self.publish("1")
        self.audit = Audit(self.broker.port)
        root = self.root / "units"
        root.mkdir()

        def one(i: int) -> AgentProcess:
            d = Path(os.path.join("/tmp", f"fl{os.getpid()}-{i:03d}"))  # short: AF_UNIX path limit
            d.mkdir()
            a = AgentProcess(config=self.unit_config(i), root=d)
            copy_digits(a.models_dir, "1")
            return a.start(timeout=240)

        with ThreadPoolExecutor(parallel) as pool:
            for a in pool.map(one, range(self.n)):
                self.agents[a.config["device_id"]] = a

    def stop(self) -> None:
        def one(a: AgentProcess) -> None:
            try:
                a.stop(timeout=15)
            finally:
                a.cleanup()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, self.agents.values()))
        if self.audit:
            self.audit.close()
        self.nginx.stop()
        self.broker.kill()

    # --- the controller, as an operator runs it ---------------------------------------

    def argv(self, *args: str) -> List[str]:
        return [sys.executable, "-m", "edge_agent.cli", "fleet", *args, "--mqtt", f"127.0.0.1:{self.broker.port}",
                "--group", GROUP, "--state-dir", str(self.state_dir), "--settle", "0.5"]

    def popen(self, *args: str) -> subprocess.Popen:
        log = open(self.root / "controller.log", "ab")
        try:
            return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=log, cwd=REPO)
        finally:
            log.close()

    @contextlib.contextmanager
    def controller(self, *args: str) -> Iterator[subprocess.Popen]:
        """A controller running in the background; killed on the way out if it still runs."""
        proc = self.popen(*args)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    @staticmethod
    def outcome(proc: subprocess.Popen, timeout: float = 300) -> tuple:
        """(exit code, the --json summary) of a background controller, once it ends."""
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, json.loads(out.decode().strip().splitlines()[-1])

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO)

    # --- what a unit has on disk ---------------------------------------------------------

    def ota_record(self, device: str) -> dict:
        try:
            return json.loads((self.agents[device].state_dir / "ota" / f"{MODEL}.json").read_text())
        except FileNotFoundError:
            return {}

    def active(self, device: str) -> Optional[str]:
        try:
            return json.loads((self.agents[device].state_dir / "models" / f"{MODEL}.json").read_text()).get("active")
        except FileNotFoundError:
            return None

    def registry_bytes(self) -> tuple:
        """(requests, body bytes) nginx has served so far (its access log, combined format)."""
        path = self.nginx.prefix / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        total = 0
        for line in lines:
            try:
                total += int(line.split('"')[2].split()[1])
            except (IndexError, ValueError):
                pass
        return len(lines), total


def wait_for(pred, timeout: float, what: str, every: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
