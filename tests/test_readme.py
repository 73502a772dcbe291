"""The README's two commands, run as a new user would on a fresh checkout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from daemon_proc import REPO

README = (REPO / "README.md").read_text()


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    assert "./scripts/quickstart.sh" in README
    assert "./scripts/test.sh" in README
    # CI runs both stacks; the README names them.
    assert "**Python 3.11 with `requirements.txt`**" in README and "**Python 3.8 with `requirements-jetpack5.txt`**" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec \./scripts/test\.sh\s*$", ci, re.M)


@pytest.mark.slow
def test_quickstart_on_a_fresh_checkout():
    tmp = Path(tempfile.mkdtemp(prefix="ea-fresh-"))
    checkout = tmp / "edge-agent"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True)
    if not (checkout / "scripts" / "quickstart.sh").exists():
        pytest.skip("quickstart.sh is not committed yet in this repository")
    run_dir = tmp / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update({"EDGE_AGENT_RUN_DIR": str(run_dir), "EDGE_AGENT_MQTT": "127.0.0.1:9"})
    log = open(tmp / "quickstart.log", "wb")
    proc = subprocess.Popen(["./scripts/quickstart.sh"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        sock = run_dir / "agent.sock"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if sock.exists():
                r = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "http://localhost/v2/health/ready"], capture_output=True)
                if r.returncode == 0 and b"true" in r.stdout:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError((tmp / "quickstart.log").read_text())
        # The README's curl call, verbatim apart from the socket path.
        r = subprocess.run(
            ["curl", "-s", "--unix-socket", str(sock), "http://localhost/v2/models/digits/infer", "-d", "@models/digits/1/sample.json"],
            cwd=checkout, capture_output=True, check=True,
        )
        doc = orjson.loads(r.stdout)
        label = next(o for o in doc["outputs"] if o["name"] == "label")
        assert label["data"] == [2]
        r = subprocess.run(
            ["curl", "-s", "--unix-socket", str(sock), "--data-binary", "@models/digits-image/1/sample.png",
             "-H", "Content-Type: image/png", "http://localhost/v2/models/digits-image/infer"],
            cwd=checkout, capture_output=True, check=True,
        )
        label = next(o for o in orjson.loads(r.stdout)["outputs"] if o["name"] == "label")
        assert label["data"] == [2]
        assert "no MQTT broker at 127.0.0.1:9" in (tmp / "quickstart.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()
        subprocess.run(["rm", "-rf", str(tmp)])
