"""scripts/install.sh into a temporary root (--root), as a field engineer runs it.

What is covered: users and groups (real systemd-sysusers into the tree's
/etc/passwd and /etc/group), directories (real systemd-tmpfiles), config and
secret files with their owners and modes, the unit (checked by the real
``systemd-analyze verify``), re-runs that keep what exists, the venv with the
pin set of the Python that runs this suite (real pip, from the package
registry / pip's cache), ``--ort-wheel`` with a stand-in wheel, and doctor run
at the end. Not covered: a real /etc, enabling/starting the unit under a
running systemd (--root never does), NVIDIA's real wheel, systemd 245 itself.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from daemon_proc import REPO

SCRIPT = REPO / "scripts" / "install.sh"
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-sysusers") is None,
                                reason="install.sh runs as root and uses systemd-sysusers for --root")


def base_python() -> str:
    """The interpreter this suite runs on, outside its venv (install.sh makes its own)."""
    return getattr(sys, "_base_executable", sys.executable)


def install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    r = subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--python", base_python(), *args],
                       capture_output=True, text=True, timeout=900, env=env)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def ids(root: Path, db: str, name: str) -> int:
    for line in (root / "etc" / db).read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2])
    raise AssertionError(f"{name} not in {root}/etc/{db}")


def mode_owner(p: Path):
    st = p.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_install_tree_without_pip_and_rerun(tmp_path):
    root = tmp_path / "unit"
    r = install(root, "--skip-pip")
    uid, gid = ids(root, "passwd", "edge-agent"), ids(root, "group", "edge-agent")
    group = (root / "etc" / "group").read_text()
    assert re.search(r"^video:x:\d+:edge-agent$", group, re.M) and re.search(r"^edge-agent-admin:x:\d+:", group, re.M)
    assert "edge-agent inference daemon:/var/lib/edge-agent:" in (root / "etc" / "passwd").read_text()
    etc = root / "etc" / "edge-agent"
    assert mode_owner(etc) == (0o750, 0, gid)
    assert mode_owner(root / "var" / "lib" / "edge-agent") == (0o750, uid, gid)
    assert mode_owner(root / "var" / "lib" / "edge-agent" / "models") == (0o750, uid, gid)
    for name in ("config.yaml", "tcp-token", "mqtt-password"):
        assert mode_owner(etc / name) == (0o640, 0, gid), name
    token = (etc / "tcp-token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token) and (etc / "mqtt-password").read_text() == ""
    assert (etc / "config.yaml").read_text() == (REPO / "config.yaml").read_text()
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert mode_owner(unit)[0] == 0o644 and unit.read_text() == (REPO / "systemd" / "edge-agent.service").read_text()
    assert (root / "usr" / "lib" / "sysusers.d" / "edge-agent.conf").is_file()
    assert (root / "usr" / "lib" / "tmpfiles.d" / "edge-agent.conf").is_file()
    assert "unit not enabled or started" in r.stderr and not (root / "etc" / "systemd" / "system" / "multi-user.target.wants").exists()

    # Again, after the operator edited the config and with a password to install: kept / replaced.
    (etc / "config.yaml").write_text("device_id: xavier-07\n")
    pw = tmp_path / "pw"
    pw.write_text("hunter2-hunter2\n")
    install(root, "--skip-pip", "--mqtt-password-file", str(pw), "--prefix", "/srv/ea")
    assert (etc / "config.yaml").read_text() == "device_id: xavier-07\n"
    assert (etc / "tcp-token").read_text().strip() == token
    assert (etc / "mqtt-password").read_text() == "hunter2-hunter2\n" and mode_owner(etc / "mqtt-password") == (0o640, 0, gid)
    assert len(re.findall(r"^edge-agent:", (root / "etc" / "passwd").read_text(), re.M)) == 1
    assert "ExecStart=/srv/ea/.venv/bin/edge-agent run" in unit.read_text()
    assert (root / "srv" / "ea" / ".venv" / "bin" / "python").exists()

    # The companion host's unit and config, beside the edge unit's.
    install(root, "--skip-pip", "--companion")
    companion = root / "etc" / "systemd" / "system" / "edge-agent-companion.service"
    assert companion.read_text() == (REPO / "systemd" / "edge-agent-companion.service").read_text()
    pool = root / "etc" / "systemd" / "system" / "edge-agent-companion@.service"
    assert pool.read_text() == (REPO / "systemd" / "edge-agent-companion@.service").read_text()
    assert (etc / "companion.yaml").read_text() == (REPO / "systemd" / "companion.yaml").read_text()
    assert mode_owner(etc / "companion.yaml") == (0o640, 0, gid) and unit.exists()


def test_refuses_bad_arguments(tmp_path):
    r = install(tmp_path / "u", "--ort-wheel", str(tmp_path / "missing.whl"), check=False)
    assert r.returncode == 1 and "no such file" in r.stderr
    r = install(tmp_path / "u", "--bogus", check=False)
    assert r.returncode == 2 and "usage:" in r.stderr
    (tmp_path / "x.whl").write_bytes(b"")
    r = install(tmp_path / "u", "--ort-wheel", str(tmp_path / "x.whl"), check=False)
    assert r.returncode == 1 and "not an onnxruntime wheel" in r.stderr


def standin_gpu_wheel(d: Path, ort_pin: str) -> Path:
    """A tiny wheel named like NVIDIA's (onnxruntime-gpu 1.16.0) that brings the
    CPU build of the pinned ONNX Runtime as its dependency: it exercises the
    --ort-wheel plumbing; it is not a GPU build."""
    path = d / "onnxruntime_gpu-1.16.0-py3-none-any.whl"
    info = "onnxruntime_gpu-1.16.0.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.16.0\nRequires-Dist: onnxruntime=={ort_pin}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: edge-agent-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.mark.slow
def test_full_install_venv_unit_doctor_and_ort_wheel(tmp_path):
    root = tmp_path / "unit"
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pins = "requirements-jetpack5.txt" if sys.version_info < (3, 11) else "requirements.txt"
    r = install(root)
    assert f"Python {py} ({base_python()}): pins from {pins}" in r.stderr
    venv = root / "opt" / "edge-agent" / ".venv"
    exe = venv / "bin" / "edge-agent"
    assert os.access(exe, os.X_OK)
    # The pinned versions, read from the venv itself.
    want = dict(ln.split("==") for ln in (l.split("#")[0].strip() for l in (REPO / pins).read_text().splitlines()) if ln)
    got = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import numpy, onnxruntime, pydantic, paho.mqtt, edge_agent, sys; "
                          "print(numpy.__version__, onnxruntime.__version__, pydantic.VERSION, paho.mqtt.__version__, sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert got[:4] == [want["numpy"], want["onnxruntime"], want["pydantic"], want["paho-mqtt"]]
    # doctor ran at the end from the installed venv (its failures, e.g. no daemon yet, are not install failures).
    assert "edge-agent doctor:" in r.stderr and re.search(r"^\s*(PASS|WARN|FAIL)\s+onnxruntime\b", r.stdout, re.M), r.stdout

    # The installed unit, with its ExecStart pointed into this tree, passes systemd-analyze verify.
    unit = (root / "etc" / "systemd" / "system" / "edge-agent.service").read_text()
    check = tmp_path / "edge-agent.service"
    check.write_text(unit.replace("/opt/edge-agent/", f"{root}/opt/edge-agent/"))
    v = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and v.stdout + v.stderr == "", v.stdout + v.stderr

    # --ort-wheel: the CPU build goes, the given wheel comes; a later run without it keeps it.
    wheel = standin_gpu_wheel(tmp_path, want["onnxruntime"])
    r = install(root, "--ort-wheel", str(wheel), "--no-doctor")
    assert f"installing {wheel.name} with the other pins of {pins}" in r.stderr
    pip_list = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                              capture_output=True, text=True, check=True).stdout
    assert "onnxruntime-gpu==1.16.0" in pip_list and f"onnxruntime=={want['onnxruntime']}" in pip_list
    r = install(root, "--no-doctor")
    assert "keeping the installed onnxruntime-gpu 1.16.0" in r.stderr
