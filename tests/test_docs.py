"""Generated reference docs match the code they are generated from."""

from __future__ import annotations

import subprocess
import sys

from daemon_proc import REPO


def test_config_and_error_code_references_are_current():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_shipped_config_is_valid_and_documented_keys_exist():
    from edge_agent.config import load_config

    cfg = load_config(REPO / "config.yaml")
    assert cfg.server.socket_mode == 0o660
    text = (REPO / "docs" / "CONFIG.md").read_text()
    for key in ("server.socket", "batching.deadline_high_s", "mqtt.rate_limit.rate", "cache.disk_max_bytes", "ota.canary.share"):
        assert f"`{key}`" in text
