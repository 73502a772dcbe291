"""`edge-agent doctor` on this machine (a real daemon, a real mosquitto) and on a recorded Xavier.

The Xavier is a directory standing in for its root (``EDGE_AGENT_DOCTOR_ROOT``):
/etc/nv_tegra_release as JetPack 5.1.2 writes it, the device-tree model, the
Carmel cores' /proc/cpuinfo, the GPU/DLA device nodes (plain files here) and
the TensorRT / CUDA / cuDNN library names, plus a `systemctl` on PATH that
prints what Ubuntu 20.04's systemd 245 prints. ONNX Runtime, Python, the
config, the socket and the broker are always the real ones.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from brokers import Mosquitto, free_port
from cpuinfo_samples import carmel_cpuinfo
from daemon_proc import REPO, copy_digits

from edge_agent.config import Config
from edge_agent.ops import doctor as D

# JetPack 5.1.2 on an AGX Xavier (first line as L4T 35.4.1 writes it).
NV_TEGRA_RELEASE = (
    "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"
    "# KERNEL_VARIANT: oot\n"
    "TARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)
SYSTEMD_245 = (
    "systemd 245 (245.4-4ubuntu3.22)\n"
    "+PAM +AUDIT +SELINUX +IMA +APPARMOR +SMACK +SYSVINIT +UTMP +LIBCRYPTSETUP +GCRYPT +GNUTLS +ACL +XZ +LZ4 "
    "+SECCOMP +BLKID +ELFUTILS +KMOD +IDN2 -IDN +PCRE2 default-hierarchy=hybrid\n"
)


def fake_xavier(root: Path, libs: bool = True) -> Path:
    """A JetPack 5.1.2 AGX Xavier's files under ``root``; returns a bin dir with its systemctl."""
    files = {
        "etc/nv_tegra_release": NV_TEGRA_RELEASE,
        "proc/device-tree/model": "NVIDIA Jetson AGX Xavier Developer Kit\x00",
        "proc/cpuinfo": carmel_cpuinfo(8),  # NVIDIA Carmel: ARMv8.2 without asimddp or i8mm
        "dev/nvhost-gpu": "", "dev/nvhost-ctrl-gpu": "", "dev/nvhost-nvdla0": "", "dev/nvhost-nvdla1": "",
    }
    if libs:
        files.update({
            "usr/lib/aarch64-linux-gnu/libnvinfer.so.8.5.2": "",
            "usr/local/cuda/lib64/libcudart.so.11.4.298": "",
            "usr/local/cuda/lib64/libcublas.so.11.6.6.84": "",
            "usr/lib/aarch64-linux-gnu/libcudnn.so.8.6.0": "",
        })
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    bin_dir = root / "fakebin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SYSTEMD_245}EOF\n")
    systemctl.chmod(0o755)
    return bin_dir


def run_doctor(*args: str, env: dict | None = None) -> tuple[int, dict]:
    e = {k: v for k, v in os.environ.items() if k != D.ROOT_ENV}
    e.update(env or {})
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "doctor", "--json", *args], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=e)
    assert r.stdout, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is (r.returncode == 0)
    return r.returncode, {c["name"]: c for c in doc["checks"]}


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_this_machine_with_a_daemon_and_a_broker(tmp_path, agent_factory):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        models = tmp_path / "models"
        copy_digits(models)
        a = agent_factory(models_dir=models, config={"mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port}}).start()
        for d in ("cache", "outbox"):
            (a.root / d).mkdir(exist_ok=True)
        code, checks = run_doctor("--config", str(a.config_path))
        statuses = {n: c["status"] for n, c in checks.items()}
        assert code == 0, checks
        assert list(checks) == ["config", "jetpack", "python", "onnxruntime", "tensorrt", "cuda_libs", "gpu", "dla",
                                "cpu_int8", "systemd", "directories", "socket", "broker", "disk"]
        assert statuses["config"] == statuses["socket"] == statuses["broker"] == statuses["directories"] == "pass", checks
        assert checks["socket"]["value"]["ready_status"] == 200
        assert checks["jetpack"]["detail"].startswith("not a Jetson")
        assert "CPUExecutionProvider" in checks["onnxruntime"]["value"]["providers"]
        assert checks["python"]["value"]["version"] == "%d.%d.%d" % sys.version_info[:3]
        assert checks["gpu"]["status"] == "pass" and checks["dla"]["value"]["cores"] == []
        assert checks["disk"]["value"]["free_bytes"] > 0
        # The broker goes away: a failed check and exit code 1; the human table says the same.
        broker.kill()
        code, checks = run_doctor("--config", str(a.config_path))
        assert code == 1 and checks["broker"]["status"] == "fail" and "refused" in checks["broker"]["detail"].lower()
        r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "doctor", "--config", str(a.config_path)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
        assert r.returncode == 1 and "FAIL  broker" in r.stdout and r.stdout.rstrip().endswith("1 fail")
        # The daemon stops: the socket check says so (a warning: it may simply not be started yet).
        a.stop()
        code, checks = run_doctor("--config", str(a.config_path))
        assert checks["socket"]["status"] == "warn" and "systemctl start" in checks["socket"]["fix"]
    finally:
        broker.kill()


def test_recorded_jetpack5_xavier_with_systemd_245(tmp_path):
    root = tmp_path / "xavier"
    bin_dir = fake_xavier(root)
    env = {D.ROOT_ENV: str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cfg = write_config(tmp_path / "c.yaml", {
        "paths": {"state_dir": str(tmp_path / "state")},
        "server": {"socket": str(tmp_path / "none.sock")},
        "runtime": {"tensorrt": {"dla_core": 1}},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "password_file": "mqtt-password"},
    })
    code, checks = run_doctor("--config", str(cfg), env=env)
    assert code == 1
    j = checks["jetpack"]
    assert j["status"] == "pass" and j["value"]["l4t"] == "35.4.1" and j["value"]["jetpack"] == "5.1.2"
    assert j["value"]["board"] == "t186ref" and j["value"]["model"] == "NVIDIA Jetson AGX Xavier Developer Kit"
    # systemd 245 ignores LoadCredential=: a credential-name password file is never found.
    s = checks["systemd"]
    assert s["status"] == "fail" and s["value"]["version"] == 245 and s["value"]["load_credential"] is False
    assert "absolute path" in s["fix"]
    # The CPU build of ONNX Runtime (this machine's) on a Jetson: no TensorRT/CUDA provider.
    assert checks["onnxruntime"]["status"] == "fail" and "NVIDIA's onnxruntime-gpu" in checks["onnxruntime"]["fix"]
    if sys.version_info[:2] != (3, 8):
        assert checks["python"]["status"] == "warn" and "cp38" in checks["python"]["detail"]
    assert checks["tensorrt"]["status"] == "pass" and checks["tensorrt"]["value"]["TensorRT"].endswith("libnvinfer.so.8.5.2")
    assert checks["cuda_libs"]["status"] == "pass"
    assert checks["gpu"]["status"] == "pass" and "/dev/nvhost-gpu" in checks["gpu"]["value"]["nodes"]
    assert checks["dla"]["status"] == "pass" and checks["dla"]["value"]["cores"] == [0, 1]
    cpu = checks["cpu_int8"]
    assert cpu["status"] == "warn" and cpu["value"]["arch"] == "arm64" and cpu["value"]["int8_features"] == []
    assert cpu["value"]["cpu"] == "NVIDIA Carmel (Xavier)"
    assert checks["broker"]["status"] == "fail" and checks["socket"]["status"] == "warn"
    # An absolute password file is read directly: only a warning on systemd 245.
    cfg = write_config(tmp_path / "c2.yaml", {"mqtt": {"enabled": False, "password_file": "/etc/edge-agent/mqtt-password"},
                                              "runtime": {"tensorrt": {"dla_core": 1}}})
    _, checks = run_doctor("--config", str(cfg), env=env)
    assert checks["systemd"]["status"] == "warn"


def test_jetson_without_gpu_libraries_fails_them(tmp_path):
    root = tmp_path / "xavier"
    bin_dir = fake_xavier(root, libs=False)
    (root / "dev" / "nvhost-nvdla1").unlink()
    cfg = write_config(tmp_path / "c.yaml", {"runtime": {"tensorrt": {"dla_core": 1}}})
    code, checks = run_doctor("--config", str(cfg), env={D.ROOT_ENV: str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert code == 1
    assert checks["tensorrt"]["status"] == "fail" and "nvidia-tensorrt" in checks["tensorrt"]["fix"]
    assert checks["cuda_libs"]["status"] == "fail"
    assert checks["dla"]["status"] == "fail" and "dla_core is 1" in checks["dla"]["detail"]


def test_invalid_config_fails_and_the_rest_still_runs(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", {"runtime": {"providers": ["gpu"]}})
    code, checks = run_doctor("--config", str(cfg))
    assert code == 1 and checks["config"]["status"] == "fail" and "runtime.providers" in checks["config"]["detail"]
    assert len(checks) == 14 and checks["python"]["status"] == "pass"


# --- single checks, in process --------------------------------------------------------


def _doctor(tmp_path, cfg: dict | None = None, root: Path | None = None) -> D.Doctor:
    return D.Doctor(Config.model_validate(cfg or {}), "test", None, D.Host(root or Path("/"), os.environ.get("PATH"), 2.0))


def test_l4t_release_lines():
    assert D._l4t(NV_TEGRA_RELEASE) == {"l4t": "35.4.1", "jetpack": "5.1.2", "board": "t186ref", "eabi": "aarch64", "major": 35}
    assert D._l4t("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: x")["jetpack"] == "6.1"
    assert D._l4t("# R35 (release), REVISION: 9.0, GCID: 1, BOARD: t186ref")["jetpack"] == "5.x"
    assert D._l4t("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64")["jetpack"] == "4.6.1"
    assert D._l4t("garbage") is None


def test_jetpack4_is_refused(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64\n")
    c = _doctor(tmp_path, root=tmp_path).check_jetpack()
    assert c.status == "fail" and "JetPack 4.6.1" in c.detail


def test_world_writable_state_dir_fails(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    d = _doctor(tmp_path, {"paths": {"state_dir": str(state), "models_dir": str(tmp_path), "cache_dir": str(tmp_path),
                                     "outbox_dir": str(tmp_path)}, "server": {"socket": str(tmp_path / "a.sock")}})
    c = d.check_directories()
    assert c.status == "fail" and str(state) in c.detail
    state.chmod(0o750)
    assert d.check_directories().status == "pass"
    assert stat.S_IMODE(state.stat().st_mode) == 0o750


@pytest.mark.parametrize("flags,status,words", [
    ("fpu sse2 avx2 fma", "pass", "without VNNI"),
    ("fpu sse2 avx2 avx512bw avx512_vnni", "pass", "avx512_vnni"),
    ("fpu sse2", "warn", "no INT8 dot-product"),
])
def test_x86_int8_features(tmp_path, flags, status, words):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    c = _doctor(tmp_path, root=tmp_path).check_cpu_int8()
    assert c.status == status and words in c.detail


def test_no_systemctl_is_a_warning(tmp_path):
    d = D.Doctor(Config(), "test", None, D.Host(Path("/"), str(tmp_path), 2.0))  # PATH without systemctl
    c = d.check_systemd()
    assert c.status == "warn" and "systemctl not found" in c.detail


def test_docs_show_every_check():
    """docs/DOCTOR.md's sample output and table name exactly the checks the code runs."""
    text = (REPO / "docs" / "DOCTOR.md").read_text()
    sample = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    names = [c.name for c in D.Doctor(Config(), "x", None, D.Host(Path("/nonexistent"), "", 1.0)).run()]
    assert [c["name"] for c in sample["checks"]] == names
    for name in names:
        assert f"`{name}`" in text, name


def test_systemd_245_reads_credential_names_from_the_configuration_directory(tmp_path):
    """On systemd 245 the daemon reads a credential name from /etc/edge-agent
    (edge_agent/credentials.py): the check passes with a warning when the files
    are there and closed to others, and fails when one is missing or open."""
    root = tmp_path / "xavier"
    bin_dir = fake_xavier(root)
    env = {D.ROOT_ENV: str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cfg = write_config(tmp_path / "c.yaml", {
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": free_port(), "password_file": "mqtt-password"},
        "server": {"tcp": {"enabled": True, "port": free_port(), "token_file": "tcp-token"}},
    })
    etc = root / "etc" / "edge-agent"
    etc.mkdir(parents=True)
    for name in ("mqtt-password", "tcp-token"):
        (etc / name).write_text("x" * 32 + "\n")
        (etc / name).chmod(0o640)
    _, checks = run_doctor("--config", str(cfg), env=env)
    s = checks["systemd"]
    assert s["status"] == "warn" and "read instead" in s["detail"], s
    assert s["value"]["fallback"]["found"] == ["mqtt.password_file from /etc/edge-agent/mqtt-password (0640)",
                                               "server.tcp.token_file from /etc/edge-agent/tcp-token (0640)"]
    (etc / "tcp-token").chmod(0o644)
    (etc / "mqtt-password").unlink()
    _, checks = run_doctor("--config", str(cfg), env=env)
    s = checks["systemd"]
    assert s["status"] == "fail" and "root:edge-agent 0640" in s["fix"]
    assert s["value"]["fallback"]["problems"] == [
        "mqtt.password_file 'mqtt-password': /etc/edge-agent/mqtt-password missing",
        "server.tcp.token_file 'tcp-token': /etc/edge-agent/tcp-token is open to other users (0644)"]
