"""What the Prometheus/Grafana tests share: the promtool and prometheus
binaries (Debian package `prometheus`), the shipped rule and dashboard files,
the metric names they use, and a real Prometheus server on a free port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from brokers import free_port

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "ops" / "prometheus" / "edge-agent.rules.yml"
RULE_TESTS = sorted((REPO / "ops" / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = REPO / "ops" / "grafana" / "edge-agent.json"

_NAME = re.compile(r"\b(edge_agent_[a-z0-9_]+|up)\b")


def binary(name: str) -> str:
    """A Prometheus tool; the suite fails (never skips) without it: scripts/test.sh installs it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install prometheus (scripts/test.sh does)")
    return path


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (edge_agent_* and up)."""
    return set(_NAME.findall(expr))


def rule_names() -> dict[str, set[str]]:
    """alert -> the metric names its expression reads."""
    return {r["alert"]: names_in(r["expr"]) for r in rules()}


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", ())]
    for v in doc["templating"]["list"]:
        q = v.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q or "")
    return exprs


class Prometheus:
    """A real Prometheus server (the Debian package's binary) on a free loopback port,
    its storage in a temporary directory, scraping ``targets`` every ``interval``."""

    def __init__(self, targets: list[str], rule_file: Path, interval: str = "1s", labels: dict | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ea-prom-"))
        self.port = free_port()
        cfg = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(rule_file)],
            "scrape_configs": [{"job_name": "edge-agent", "static_configs": [{"targets": targets, "labels": labels or {}}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log_path = self.dir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def api(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def wait_up(self, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            try:
                targets = self.api("/api/v1/targets")["data"]["activeTargets"]
                if targets and all(t["health"] == "up" for t in targets):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus targets not up after {timeout}s:\n{self.log()[-3000:]}")

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
