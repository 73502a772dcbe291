"""Run the real daemon as a subprocess, the way systemd or a user does.

``AgentProcess`` writes a config file, starts ``python -m edge_agent.cli run``
with it, waits for /v2/health/ready on the real socket, and stops it with real
signals. Socket paths stay short (AF_UNIX paths are limited to 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from edge_agent.client import AgentClient

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits" / "1"


def proc_status(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/status (VmRSS, VmHWM = peak RSS, Threads...)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def paths_config(root: Path):
    """A Config whose paths (models, state, cache, outbox) all lie under ``root``: for tests
    that run a ModelRepository in-process."""
    from edge_agent.config import Config

    return Config.model_validate({"paths": {"models_dir": str(root / "models"), "state_dir": str(root / "state"),
                                            "cache_dir": str(root / "cache"), "outbox_dir": str(root / "outbox")}})


def copy_digits(models_dir: Path, version: str = "1", **yaml_changes) -> Path:
    """Copy the shipped digits model as {models_dir}/digits/{version}, editing model.yaml."""
    dest = models_dir / "digits" / version
    shutil.copytree(DIGITS, dest)
    if yaml_changes:
        spec = yaml.safe_load((dest / "model.yaml").read_text())
        for dotted, value in yaml_changes.items():
            obj = spec
            *parents, last = dotted.split("__")
            for p in parents:
                obj = obj.setdefault(p, {})
            obj[last] = value
        (dest / "model.yaml").write_text(yaml.safe_dump(spec))
    return dest


class AgentProcess:
    def __init__(self, config: dict | None = None, models_dir: Path | None = None, env: dict | None = None, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="ea-"))
        self.socket = self.root / "agent.sock"
        self.state_dir = self.root / "state"
        self.models_dir = models_dir or (self.root / "models")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "config.yaml"
        self.config = config or {}
        self.env = env or {}
        self.log_path = self.root / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        cfg = {
            "device_id": "test-unit",
            "paths": {
                "models_dir": str(self.models_dir),
                "state_dir": str(self.state_dir),
                "cache_dir": str(self.root / "cache"),
                "outbox_dir": str(self.root / "outbox"),
            },
            "server": {"socket": str(self.socket), "drain_timeout_s": 10},
            "runtime": {"intra_op_num_threads": 1},
        }
        for section, values in self.config.items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        self.config_path.write_text(yaml.safe_dump(cfg))

    def start(self, wait: bool = True, timeout: float = 60.0) -> "AgentProcess":
        self.write_config()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    status, _ = self.client().json("GET", "/v2/health/ready")
                    if status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def client(self, timeout: float = 30.0) -> AgentClient:
        return AgentClient(str(self.socket), timeout=timeout)

    def infer_once(self, model: str, body: dict, version: str | None = None) -> tuple[int, dict]:
        """One request on its own connection: safe to call from many threads at once."""
        c = self.client()
        try:
            return c.infer(model, body, version)
        finally:
            c.close()

    def metrics(self) -> str:
        """One scrape of /metrics over the socket (Prometheus text)."""
        c = self.client()
        try:
            status, _, raw = c.request("GET", "/metrics")
        finally:
            c.close()
        assert status == 200, status
        return raw.decode()

    def status(self) -> dict:
        """``/edge/status`` over the socket."""
        c = self.client()
        try:
            return c.json("GET", "/edge/status")[1]
        finally:
            c.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def digits_body(x) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """The sum of the samples of ``name`` in a /metrics scrape whose line holds ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(pred, timeout: float = 30.0, every: float = 0.05) -> None:
    """Poll ``pred`` every ``every`` seconds until it holds; TimeoutError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(every)
    raise TimeoutError("condition not met")


def make_slow_model(models_dir: Path, name: str = "slow", version: str = "1", layers: int = 60, width: int = 1024, max_batch: int = 1) -> Path:
    """A real ONNX model that takes a few milliseconds per row: a chain of
    width x width MatMuls. Lets tests build a queue without sleeping in the server."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, prev = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d = models_dir / name / version
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, d / "model.onnx")
    (d / "model.yaml").write_text(
        f"max_batch_size: {max_batch}\n"
        f"inputs: [{{name: x, datatype: FP32, dims: [{width}]}}]\n"
        f"outputs: [{{name: y, datatype: FP32, dims: [{width}]}}]\n"
        "batching: {max_queue_delay_us: 0}\n"
        "cache: {enabled: false}\n"
    )
    return d
