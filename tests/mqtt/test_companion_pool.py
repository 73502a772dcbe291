"""The companion pool: systemd/edge-agent-companion@.service run as systemd would run two instances.

The instances' command lines come from the unit's own ExecStart (specifiers
expanded, the install paths moved into a temporary tree): one config file for
both, the instance id in the device id, socket and state. They share the
offload subscription: an edge unit's requests are split between them, each
answered once.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_digits

from daemon_proc import REPO, copy_digits, wait_for
from edge_agent.client import AgentClient
from offload_procs import (assert_each_answered_once, make_edge, mqtt_section, offload_digits_stream, outputs,
                           wait_online)

UNIT = REPO / "systemd" / "edge-agent-companion@.service"
X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)


def unit_value(key: str) -> str:
    return next(ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith(f"{key}="))


def exec_start(instance: str, host: str, root: Path, config: Path) -> list[str]:
    """The unit's ExecStart for ``instance`` on host ``host``, its paths moved under ``root``."""
    argv = shlex.split(unit_value("ExecStart"))
    assert argv[0] == "/opt/edge-agent/.venv/bin/edge-agent"
    out = []
    for arg in argv[1:]:
        arg = arg.replace("%i", instance).replace("%H", host)
        arg = arg.replace("/etc/edge-agent/companion.yaml", str(config))
        arg = arg.replace("/run/edge-agent/", f"{root}/run/").replace("/var/lib/edge-agent/", f"{root}/lib/")
        assert "%" not in arg, arg
        out.append(arg)
    return [sys.executable, "-m", "edge_agent.cli", *out]


class Instance:
    def __init__(self, argv: list[str], root: Path, instance: str) -> None:
        self.socket = Path(argv[argv.index("--socket") + 1])
        self.log_path = root / f"companion-{instance}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def client(self) -> AgentClient:
        return AgentClient(str(self.socket), timeout=30)

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return self.socket.exists() and self.client().json("GET", "/v2/health/ready")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port_pair() -> int:
    """A port p with p and p + 1 both free: the pool's metrics base and its instance 1."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p < 65535:
                with socket.socket() as b:
                    try:
                        b.bind(("127.0.0.1", p + 1))
                        return p
                    except OSError:
                        pass
    raise AssertionError("no two adjacent free ports")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.fixture
def pool_root():
    root = Path(tempfile.mkdtemp(prefix="ea-pool-"))  # short: AF_UNIX paths are capped at 108 bytes
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_two_instances_of_the_template_split_the_offloaded_requests(agent_factory, broker, prefix, pool_root):
    host = f"h{uuid.uuid4().hex[:6]}"
    models = pool_root / "lib" / "models"
    copy_digits(models)
    config = pool_root / "companion.yaml"  # one config for every instance, as /etc/edge-agent/companion.yaml
    metrics_port = free_port_pair()
    config.write_text(yaml.safe_dump({
        "mode": "companion", "device_id": "set-by-the-unit",
        "server": {"metrics": {"enabled": True, "port": metrics_port}},  # as systemd/companion.yaml
        "paths": {"models_dir": str(models)}, "runtime": {"intra_op_num_threads": 1},
        "mqtt": mqtt_section(broker, prefix, "", client_id=False), "offload": {"prefix": prefix},
    }))
    edge = make_edge(agent_factory, broker, prefix, timeout_s=10.0)  # no model here: every request offloaded
    edge.start(wait=False)
    pool = [Instance(exec_start(i, host, pool_root, config), pool_root, i) for i in ("0", "1")]
    try:
        edge.wait_ready()
        for inst in pool:
            wait_for(inst.ready, timeout=60)
        wait_online(broker, prefix, f"{host}-0", f"{host}-1", "edge-unit")
        for i, inst in enumerate(pool):
            status = inst.client().json("GET", "/edge/status")[1]
            assert status["device_id"] == f"{host}-{i}" and status["mode"] == "companion"
            assert (pool_root / "lib" / f"companion-{i}" / "outbox").is_dir()  # its own state, cache and outbox
            # its own metrics port (one config file names one port): base + instance number
            assert "edge_agent_requests_total" in scrape(metrics_port + i), inst.log_path.read_text()

        n = 40
        for doc in offload_digits_stream(edge, X, n, workers=4):
            assert outputs(doc)["label"] == [int(np.argmax(outputs(doc)["probabilities"]))]
        assert_each_answered_once(pool, n)
    finally:
        for inst in pool:
            inst.stop()


def test_the_template_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    text = UNIT.read_text().replace("/opt/edge-agent/.venv/bin/edge-agent", shutil.which("true"))
    (tmp_path / UNIT.name).write_text(text)
    for name in (UNIT.name, "edge-agent-companion@0.service"):
        v = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert v.returncode == 0 and v.stdout + v.stderr == "", v.stdout + v.stderr
    assert unit_value("EnvironmentFile") == "-/etc/edge-agent/companion@%i.env"  # CUDA_VISIBLE_DEVICES per instance
