"""atomic_write: a crash at any point leaves the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from edge_agent.atomic import atomic_write, atomic_write_json, sweep_stale_temp_files


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
    # The crash left its temp file; the start-up sweep removes it and nothing else.
    stray = [f for f in tmp_path.iterdir() if f.name != "s.json"]
    assert len(stray) == 1 and stray[0].read_bytes() == b"new"
    assert sweep_stale_temp_files(tmp_path, older_than_s=0) == 1
    assert [f.name for f in tmp_path.iterdir()] == ["s.json"]


def test_sweep_takes_only_old_temp_files_of_atomic_write(tmp_path):
    old_t = 1_000_000_000
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    stale = deep / ".state.json.k3j_9x2a.tmp"
    fresh = tmp_path / ".state.json.abcdefgh.tmp"  # a writer in another process may own it
    others = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / ".x.short.tmp", deep / "state.json"]
    for f in [stale, fresh, *others]:
        f.write_text("x")
    os.utime(stale, (old_t, old_t))
    for f in others:
        os.utime(f, (old_t, old_t))
    too_deep = tmp_path / "1" / "2" / "3" / "4" / ".s.json.abcdefgh.tmp"  # past max_depth 3
    too_deep.parent.mkdir(parents=True)
    too_deep.write_text("x")
    os.utime(too_deep, (old_t, old_t))
    assert sweep_stale_temp_files(tmp_path, older_than_s=60) == 1
    assert not stale.exists()
    assert fresh.exists() and too_deep.exists() and all(f.exists() for f in others)
