"""scripts/test.sh (the README's test command, run by CI) on a machine without
Python 3.8: it says so and fails; it never skips the JetPack 5 stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_proc import REPO

SCRIPT = REPO / "scripts" / "test.sh"


def test_no_python38_fails_the_run_and_says_so(tmp_path):
    if not all((REPO / ".cache" / "minilm" / v / "model.onnx").is_file() for v in "123"):
        pytest.skip("MiniLM not built yet: test.sh would build it first (scripts/export_minilm.py)")
    # A PATH without pyenv and without python3.8; python3 is this suite's interpreter.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    path = os.pathsep.join([str(bin_dir), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYENV", "VIRTUAL_ENV", "EDGE_AGENT_"))}
    env.update(PATH=path, EDGE_AGENT_STACKS="38", EDGE_AGENT_VENV38=str(tmp_path / "venv38"))
    r = subprocess.run(["bash", str(SCRIPT), "tests/test_py38.py"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NO PYTHON 3.8 FOUND" in r.stderr and "this run FAILS" in r.stderr
    lines = r.stdout.strip().splitlines()
    assert "test.sh: stack 3.8 (requirements-jetpack5.txt): FAILED: no Python 3.8 on this machine (see above)" in lines
    assert "test.sh: no Python 3.8: the JetPack 5 stack was NOT tested" in lines
    assert lines[-1] == "total: 0 passed, 0 failed, 0 skipped"
    assert not Path(tmp_path / "venv38").exists()  # nothing was built for a stack that cannot run


def test_unknown_stack_is_a_usage_error():
    env = {**os.environ, "EDGE_AGENT_STACKS": "39"}
    r = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "each must be 311 or 38" in r.stderr
