"""atomic_write: a crash at any point leaves the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from edge_agent.atomic import atomic_write, atomic_write_json


def test_replaces_content_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "state" / "s.json"
    atomic_write_json(p, {"v": 1})
    atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert [f.name for f in p.parent.iterdir()] == ["s.json"]


def test_failure_before_rename_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "s.json"
    atomic_write(p, b"old")

    def disk_error(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_error)
    with pytest.raises(OSError):
        atomic_write(p, b"new" * 1000)
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["s.json"]


def test_kill_9_between_write_and_rename_keeps_the_old_file(tmp_path):
    """A real SIGKILL with the new bytes written and fsynced but not yet renamed."""
    p = tmp_path / "s.json"
    atomic_write(p, b"old")
    code = (
        "import os, signal\n"
        "from edge_agent import atomic\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic.atomic_write({str(p)!r}, b'new')\n"
    )
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode == -signal.SIGKILL
    assert p.read_bytes() == b"old"
