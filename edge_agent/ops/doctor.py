"""`edge-agent doctor`: the checklist a field engineer runs first on a unit.

Each check says pass / warn / fail, what it found, and the fix. It answers the
questions that decide whether a Jetson serves on its GPU and talks to its
fleet: which JetPack / L4T release, which Python and ONNX Runtime (and whether
that wheel has the TensorRT and CUDA providers), whether the TensorRT, CUDA and
cuDNN libraries and the GPU / DLA device nodes are there, what the CPU offers
for INT8, whether systemd is new enough for ``LoadCredential=`` (247; Ubuntu
20.04 / JetPack 5 has 245), whether the daemon's directories, socket and broker
are usable, and whether there is disk left for TensorRT engines.

It imports nothing of the daemon but its config (the serving stack may be the
broken part), and ONNX Runtime only inside its own check. Everything it reads
goes through ``Host``: a root directory for files (``/etc``, ``/proc``,
``/dev``, library directories; ``$EDGE_AGENT_DOCTOR_ROOT``) and ``PATH`` for
commands (``systemctl``), so it can be pointed at a recorded unit.
Exit code 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import Config, load_config
from ..credentials import UNIT_CONFIG_DIR
from ..errors import ConfigError
# CPU flags are read by the same code the daemon uses to pick a model artifact.
from ..runtime.cpu import parse_cpuinfo

PASS, WARN, FAIL = "pass", "warn", "fail"
DEFAULT_CONFIG = "/etc/edge-agent/config.yaml"
ROOT_ENV = "EDGE_AGENT_DOCTOR_ROOT"
LOAD_CREDENTIAL_SYSTEMD = 247  # systemd.exec(5): LoadCredential= "Added in version 247."
ENGINE_DISK_FAIL = 256 << 20  # TensorRT engines of the shipped models are tens of MB each
ENGINE_DISK_WARN = 2 << 30

# L4T (Jetson Linux) release -> JetPack. JetPack 5 is the last line for Xavier.
JETPACK = {
    (32, 7, 1): "4.6.1", (32, 7, 2): "4.6.2", (32, 7, 3): "4.6.3", (32, 7, 4): "4.6.4", (32, 7, 5): "4.6.5",
    (35, 1, 0): "5.0.2", (35, 2, 1): "5.1", (35, 3, 1): "5.1.1", (35, 4, 1): "5.1.2", (35, 5, 0): "5.1.3",
    (35, 6, 0): "5.1.4",
    (36, 2, 0): "6.0 DP", (36, 3, 0): "6.0", (36, 4, 0): "6.1", (36, 4, 3): "6.2",
}
JETPACK_LINE = {32: "4.x", 35: "5.x", 36: "6.x"}

# Where JetPack and the CUDA / TensorRT packages put their libraries (not all are in ld.so.conf).
LIB_DIRS = (
    "usr/lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu/tegra", "usr/lib/x86_64-linux-gnu",
    "usr/local/cuda/lib64", "usr/local/cuda/targets/aarch64-linux/lib", "usr/local/cuda/targets/x86_64-linux/lib",
    "usr/lib", "lib",
)
# Jetson iGPU nodes (nvgpu: /dev/nvhost-* up to L4T 35, /dev/nvgpu/igpu0/* from 36) and desktop GPUs.
GPU_NODES = ("dev/nvhost-gpu", "dev/nvhost-ctrl-gpu", "dev/nvgpu/igpu0/ctrl", "dev/nvidia0")
DLA_NODES = ("dev/nvhost-nvdla{}", "dev/nvhost-ctrl-nvdla{}")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    value: Any = None


@dataclass
class Host:
    """What the doctor reads: files under ``root``, commands found on ``path`` (default: ``$PATH``)."""

    root: Path = Path("/")
    path: Optional[str] = None
    timeout: float = 3.0

    @classmethod
    def from_env(cls, env: Optional[Dict[str, str]] = None, timeout: float = 3.0) -> "Host":
        env = os.environ if env is None else env
        return cls(Path(env.get(ROOT_ENV) or "/"), env.get("PATH"), timeout)

    def file(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def read(self, p: str) -> Optional[str]:
        try:
            return self.file(p).read_text(errors="replace")
        except OSError:
            return None

    def run(self, *argv: str) -> Optional[str]:
        exe = shutil.which(argv[0], path=self.path)
        if exe is None:
            return None
        try:
            r = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    def find_lib(self, name: str) -> Optional[str]:
        """lib{name}.so*: the dynamic linker's cache (real root only), then the CUDA / JetPack directories."""
        if self.root == Path("/"):
            found = ctypes.util.find_library(name)
            if found:
                return found
        for d in LIB_DIRS:
            hits = sorted(self.file(d).glob(f"lib{name}.so*"))
            if hits:
                return str(hits[-1])
        return None


def _l4t(text: str) -> Optional[Dict[str, Any]]:
    """'# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: ...' -> fields."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    if not m:
        return None
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3))
    fields = dict(re.findall(r"(GCID|BOARD|EABI|DATE):\s*([^,\n]+)", text))
    return {
        "l4t": f"{major}.{minor}.{patch}",
        "jetpack": JETPACK.get((major, minor, patch), JETPACK_LINE.get(major, "unknown")),
        "board": fields.get("BOARD", "").strip(), "eabi": fields.get("EABI", "").strip(), "major": major,
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


@dataclass
class Doctor:
    """Runs the checks. ``cfg``/``config_error`` come from the caller's ``--config``; the rest is read from ``host``."""

    cfg: Config
    config_source: str
    config_error: Optional[str] = None
    host: Host = field(default_factory=Host)
    socket_path: Optional[str] = None
    _jetson: Optional[Dict[str, Any]] = None

    def run(self) -> List[Check]:
        checks: List[Callable[[], Check]] = [
            self.check_config, self.check_jetpack, self.check_python, self.check_onnxruntime, self.check_tensorrt,
            self.check_cuda_libs, self.check_gpu, self.check_dla, self.check_cpu_int8, self.check_systemd,
            self.check_directories, self.check_socket, self.check_broker, self.check_disk,
        ]
        out = []
        for fn in checks:
            try:
                out.append(fn())
            except Exception as e:  # noqa: BLE001 - one broken probe must not hide the other answers
                out.append(Check(fn.__name__[len("check_"):], WARN, f"the check itself failed: {type(e).__name__}: {e}"))
        return out

    # --- platform --------------------------------------------------------------

    @property
    def jetson(self) -> Optional[Dict[str, Any]]:
        if self._jetson is None:
            text = self.host.read("/etc/nv_tegra_release")
            info = _l4t(text) if text else None
            if info is not None:
                info["model"] = (self.host.read("/proc/device-tree/model") or "").strip("\x00\n ")
            self._jetson = info or {}
        return self._jetson or None

    def _gpu_nodes(self) -> List[str]:
        nodes = [p for p in GPU_NODES if self.host.file(p).exists()]
        nodes += [str(p.relative_to(self.host.root)) for p in sorted(self.host.file("proc/driver/nvidia/gpus").glob("*/information"))]
        return ["/" + n for n in nodes]

    def check_config(self) -> Check:
        if self.config_error:
            return Check("config", FAIL, self.config_error, "fix the key the message names; `edge-agent check-config FILE`")
        if self.config_source == "defaults":
            return Check("config", WARN, f"no config file ({DEFAULT_CONFIG} absent): embedded defaults",
                         f"install one: install -m 0640 -g edge-agent config.yaml {DEFAULT_CONFIG}", {"source": None})
        return Check("config", PASS, f"{self.config_source} is valid (mode {self.cfg.mode})", value={"source": self.config_source})

    def check_jetpack(self) -> Check:
        j = self.jetson
        if j is None:
            return Check("jetpack", PASS, "not a Jetson (no /etc/nv_tegra_release)", value=None)
        what = f"L4T R{j['l4t']} = JetPack {j['jetpack']} ({j['model'] or 'board ' + j['board']}, {j['eabi']})"
        value = {k: j[k] for k in ("l4t", "jetpack", "board", "eabi", "model")}
        if j["major"] < 35:
            return Check("jetpack", FAIL, what + ": Python 3.6 and CUDA 10.2 are too old for edge-agent",
                         "reflash with JetPack 5.1.x (Xavier) or 6.x (Orin)", value)
        if j["major"] == 35:
            return Check("jetpack", PASS, what + ": Python 3.8 stack (requirements-jetpack5.txt, NVIDIA onnxruntime-gpu 1.16.0 cp38)", value=value)
        return Check("jetpack", PASS, what, value=value)

    def check_python(self) -> Check:
        v = sys.version_info
        ver = f"{v.major}.{v.minor}.{v.micro}"
        pins = "requirements-jetpack5.txt" if v[:2] < (3, 11) else "requirements.txt"
        value = {"version": ver, "executable": sys.executable, "pin_set": pins}
        if v[:2] < (3, 8):
            return Check("python", FAIL, f"Python {ver}: edge-agent needs 3.8 or newer", "use the system python3 of JetPack 5 (3.8) or newer", value)
        j = self.jetson
        if j is not None and j["major"] == 35 and v[:2] != (3, 8):
            return Check("python", WARN, f"Python {ver} on JetPack 5: NVIDIA's ONNX Runtime GPU wheels for JetPack 5 are cp38 only",
                         "create the venv with /usr/bin/python3 (3.8) and requirements-jetpack5.txt", value)
        return Check("python", PASS, f"Python {ver} ({pins})", value=value)

    def check_onnxruntime(self) -> Check:
        try:
            import onnxruntime as ort
        except Exception as e:  # noqa: BLE001 - any import failure is the finding
            return Check("onnxruntime", FAIL, f"cannot import onnxruntime: {e}",
                         "pip install the pinned onnxruntime, or NVIDIA's onnxruntime-gpu wheel on a Jetson (docs/INSTALL.md)")
        providers = list(ort.get_available_providers())
        version = ort.__version__
        value = {"version": version, "providers": providers}
        detail = f"{version}, providers {', '.join(providers)}"
        m = re.match(r"(\d+)\.(\d+)", version)
        ver = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        try:
            import numpy
            value["numpy"] = numpy.__version__
            if ver < (1, 19) and int(numpy.__version__.split(".")[0]) >= 2:
                return Check("onnxruntime", FAIL, f"{detail}; numpy {numpy.__version__}: ONNX Runtime < 1.19 is built for numpy 1.x",
                             "pip install 'numpy<2' (requirements-jetpack5.txt pins 1.24.4)", value)
        except ImportError:
            pass
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in providers]
        j = self.jetson
        if j is not None and not gpu:
            return Check("onnxruntime", FAIL, detail + ": a CPU-only build on a Jetson",
                         f"install NVIDIA's onnxruntime-gpu wheel for JetPack {j['jetpack']} instead (docs/INSTALL.md)", value)
        if j is not None and j["major"] == 35 and ver > (1, 18):
            return Check("onnxruntime", WARN, detail + ": ONNX Runtime after 1.18 needs CUDA 12; JetPack 5 has CUDA 11.4",
                         "use NVIDIA's 1.16.0 (or 1.15.1/1.17.0/1.18.0) JetPack 5 wheel", value)
        if j is None and not gpu and self._gpu_nodes():
            return Check("onnxruntime", WARN, detail + ": this machine has an NVIDIA GPU but ORT has no CUDA provider",
                         "pip install onnxruntime-gpu (the 'gpu' extra) instead of onnxruntime", value)
        return Check("onnxruntime", PASS, detail, value=value)

    def _libs_check(self, name: str, libs: Dict[str, str], fix: str) -> Check:
        found = {label: self.host.find_lib(lib) for label, lib in libs.items()}
        have = ", ".join(f"{k} {Path(v).name}" for k, v in found.items() if v)
        missing = [k for k, v in found.items() if not v]
        if not missing:
            return Check(name, PASS, have, value=found)
        gpu = self.jetson is not None or bool(self._gpu_nodes())
        detail = f"not found: {', '.join(missing)}" + (f" (found {have})" if have else "")
        if gpu:
            return Check(name, FAIL, detail, fix, found)
        return Check(name, PASS, detail + "; no GPU here, so not needed", value=found)

    def check_tensorrt(self) -> Check:
        return self._libs_check("tensorrt", {"TensorRT": "nvinfer"},
                                "JetPack: sudo apt install nvidia-tensorrt (TensorRT 8.5 on JetPack 5); x86_64: pip install tensorrt (the 'trt' extra)")

    def check_cuda_libs(self) -> Check:
        return self._libs_check("cuda_libs", {"CUDA runtime": "cudart", "cuBLAS": "cublas", "cuDNN": "cudnn"},
                                "JetPack: sudo apt install nvidia-jetpack (CUDA 11.4, cuDNN 8.6 on JetPack 5); check /etc/ld.so.conf.d/ has /usr/local/cuda/lib64")

    def check_gpu(self) -> Check:
        nodes = self._gpu_nodes()
        if not nodes:
            if self.jetson is not None:
                return Check("gpu", FAIL, "Jetson without GPU device nodes (/dev/nvhost-gpu, /dev/nvgpu/igpu0)",
                             "the nvgpu driver is not loaded: check `dmesg | grep nvgpu`, reflash if needed")
            return Check("gpu", PASS, "no NVIDIA GPU: models run on the CPU provider", value={"nodes": []})
        dev = [n for n in nodes if n.startswith("/dev/")]
        blocked = [n for n in dev if not os.access(self.host.file(n), os.R_OK | os.W_OK)]
        what = self.jetson["model"] if self.jetson and self.jetson.get("model") else "NVIDIA GPU"
        value = {"nodes": nodes, "no_access": blocked}
        if blocked:
            return Check("gpu", WARN, f"{what}: {', '.join(nodes)}; this user cannot open {', '.join(blocked)}",
                         "the service gets the video group (SupplementaryGroups=video); for a shell: sudo usermod -aG video $USER", value)
        return Check("gpu", PASS, f"{what}: {', '.join(nodes)}", value=value)

    def check_dla(self) -> Check:
        cores = sorted({i for i in range(4) for pat in DLA_NODES if self.host.file(pat.format(i)).exists()})
        want = self.cfg.runtime.tensorrt.dla_core
        value = {"cores": cores, "configured": want}
        if want is not None and want not in cores:
            return Check("dla", FAIL, f"runtime.tensorrt.dla_core is {want}, DLA cores here: {cores or 'none'}",
                         "set runtime.tensorrt.dla_core to an existing core or remove it (GPU)", value)
        if cores:
            return Check("dla", PASS, f"DLA cores {', '.join(map(str, cores))}" + (f"; models use core {want}" if want is not None else "; unused (runtime.tensorrt.dla_core)"), value=value)
        return Check("dla", PASS, "no DLA" + (" (an AGX Xavier has two)" if self.jetson else ""), value=value)

    def check_cpu_int8(self) -> Check:
        info = parse_cpuinfo(self.host.read("/proc/cpuinfo") or "")
        cpu, arm, flags, have = info.model, info.arch == "arm64", info.flags, info.int8_features
        value = {"cpu": cpu, "arch": "arm64" if arm else "x86_64", "int8_features": have}
        if not flags:
            return Check("cpu_int8", WARN, "cannot read CPU flags from /proc/cpuinfo", value=value)
        fast = {"amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp"} & set(have)
        if fast:
            return Check("cpu_int8", PASS, f"{cpu}: INT8 dot-product instructions {', '.join(have)}", value=value)
        if "avx2" in have:
            return Check("cpu_int8", PASS, f"{cpu}: {', '.join(have)} without VNNI: int8-weight (U8S8) kernels saturate here, so INT8 "
                         "versions serve their uint8-weight file (model.yaml artifacts: avx2 / default)", value=value)
        return Check("cpu_int8", WARN, f"{cpu}: no INT8 dot-product instructions ({'asimddp/i8mm' if arm else 'VNNI/AVX2'} absent): "
                     "CPU INT8 kernels run without them; expect little or no gain over FP32 on the CPU provider",
                     "serve INT8 through TensorRT (precision: int8-qdq) or FP32 on the CPU", value)

    def check_systemd(self) -> Check:
        out = self.host.run("systemctl", "--version")
        m = re.match(r"systemd (\d+)", out or "")
        if not m:
            return Check("systemd", WARN, "systemctl not found or not answering: the unit file (systemd/edge-agent.service) cannot be used",
                         "run `edge-agent run --config FILE` under the supervisor this system has")
        version = int(m.group(1))
        value = {"version": version, "load_credential": version >= LOAD_CREDENTIAL_SYSTEMD, "line": out.splitlines()[0]}
        if version >= LOAD_CREDENTIAL_SYSTEMD:
            return Check("systemd", PASS, f"systemd {version}: LoadCredential= works", value=value)
        detail = f"systemd {version} < {LOAD_CREDENTIAL_SYSTEMD}: LoadCredential= is ignored, no $CREDENTIALS_DIRECTORY"
        # The daemon then reads a credential name from the unit's ConfigurationDirectory= (credentials.py).
        named = {key: Path(f) for key, f, on in (
            ("mqtt.password_file", self.cfg.mqtt.password_file, self.cfg.mqtt.enabled),
            ("server.tcp.token_file", self.cfg.server.tcp.token_file, self.cfg.server.tcp.enabled),
        ) if on and f is not None and not Path(f).is_absolute()}
        found, bad = [], []
        for key, name in named.items():
            path = f"{UNIT_CONFIG_DIR}/{name}"
            f = self.host.file(path)
            try:
                mode = stat.S_IMODE(f.stat().st_mode)
            except OSError:
                bad.append(f"{key} '{name}': {path} missing")
                continue
            if mode & 0o007:
                bad.append(f"{key} '{name}': {path} is open to other users ({mode:04o})")
            else:
                found.append(f"{key} from {path} ({mode:04o})")
        value["fallback"] = {"dir": UNIT_CONFIG_DIR, "found": found, "problems": bad}
        if bad:
            return Check("systemd", FAIL, f"{detail}; the daemon reads credential names from {UNIT_CONFIG_DIR} instead, and: {'; '.join(bad)}",
                         f"put each there as root:edge-agent 0640 (scripts/install.sh does), or give an absolute path of such a file", value)
        if found:
            detail += f"; read instead from the unit's configuration directory: {', '.join(found)}"
        return Check("systemd", WARN, detail, f"nothing to do if the secrets are root:edge-agent 0640 files in {UNIT_CONFIG_DIR} "
                     "(scripts/install.sh makes them) or absolute paths of such files", value)

    # --- the daemon's own resources ----------------------------------------------

    def check_directories(self) -> Check:
        p = self.cfg.paths
        dirs = {"models_dir": p.models_dir, "state_dir": p.state_dir, "cache_dir": p.cache_dir,
                "outbox_dir": p.outbox_dir, "socket dir": Path(self._socket()).parent}
        rows, missing, unwritable, open_ = [], [], [], []
        for label, d in dirs.items():
            f = self.host.file(str(d))
            row: Dict[str, Any] = {"name": label, "path": str(d), "exists": f.is_dir()}
            if f.is_dir():
                st = f.stat()
                row.update(mode=oct(stat.S_IMODE(st.st_mode)), uid=st.st_uid, gid=st.st_gid, writable=os.access(f, os.W_OK | os.X_OK))
                if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
                    open_.append(str(d))
                if not row["writable"]:
                    unwritable.append(str(d))
            else:
                missing.append(str(d))
            rows.append(row)
        if open_:
            return Check("directories", FAIL, f"world-writable: {', '.join(open_)}", "chmod o-w on them (the unit uses 0750)", rows)
        if missing:
            return Check("directories", WARN, f"missing: {', '.join(missing)}",
                         "systemd creates them at start (StateDirectory=/RuntimeDirectory=); by hand: install -d -o edge-agent -g edge-agent -m 0750 DIR", rows)
        if unwritable:
            return Check("directories", WARN, f"not writable by this user: {', '.join(unwritable)}",
                         "run the doctor as the service user: sudo -u edge-agent edge-agent doctor", rows)
        return Check("directories", PASS, "all present and writable: " + ", ".join(str(d) for d in dirs.values()), value=rows)

    def _socket(self) -> str:
        return self.socket_path or os.environ.get("EDGE_AGENT_SOCKET") or str(self.cfg.server.socket)

    def check_socket(self) -> Check:
        path = self._socket()
        value = {"path": path}
        if not os.path.exists(path):
            return Check("socket", WARN, f"no daemon socket at {path}", "start the daemon: sudo systemctl start edge-agent", value)
        try:
            status = _http_status_over_unix(path, "/v2/health/ready", self.host.timeout)
        except PermissionError:
            return Check("socket", FAIL, f"{path}: permission denied", "add this user to the edge-agent group (or use sudo)", value)
        except OSError as e:
            return Check("socket", FAIL, f"{path}: {e.strerror or e}", "the daemon is not answering: journalctl -u edge-agent; systemctl restart edge-agent", value)
        value["ready_status"] = status
        if status == 200:
            return Check("socket", PASS, f"{path}: daemon ready", value=value)
        return Check("socket", WARN, f"{path}: /v2/health/ready answered {status} (loading models or draining)",
                     "wait for warm-up (a first TensorRT engine build takes minutes); edge-agent status", value)

    def check_broker(self) -> Check:
        m = self.cfg.mqtt
        if not m.enabled:
            return Check("broker", PASS, "MQTT disabled (mqtt.enabled: false)", value={"enabled": False})
        value = {"enabled": True, "host": m.host, "port": m.port}
        try:
            with socket.create_connection((m.host, m.port), timeout=self.host.timeout):
                pass
        except OSError as e:
            return Check("broker", FAIL, f"{m.host}:{m.port}: {e.strerror or e}",
                         "check mqtt.host/port, the broker service and the firewall; the daemon keeps retrying meanwhile", value)
        return Check("broker", PASS, f"{m.host}:{m.port} accepts TCP connections", value=value)

    def check_disk(self) -> Check:
        d = self.host.file(str(self.cfg.paths.state_dir))
        while not d.exists() and d != d.parent:
            d = d.parent
        usage = shutil.disk_usage(d)
        value = {"path": str(self.cfg.paths.state_dir), "measured_at": str(d), "free_bytes": usage.free}
        detail = f"{_human_bytes(usage.free)} free for TensorRT engines under {self.cfg.paths.state_dir}/trt"
        fix = f"free space on the filesystem of {self.cfg.paths.state_dir} (old engines: {self.cfg.paths.state_dir}/trt)"
        if usage.free < ENGINE_DISK_FAIL:
            return Check("disk", FAIL, detail, fix, value)
        if usage.free < ENGINE_DISK_WARN:
            return Check("disk", WARN, detail, fix, value)
        return Check("disk", PASS, detail, value=value)


def _http_status_over_unix(path: str, url: str, timeout: float) -> int:
    """Status of one GET over the daemon's socket; raw stdlib so the doctor works when the client code does not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = s.recv(1024)
            if not chunk:
                break
            head += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m:
        raise OSError(f"not an HTTP answer: {head[:40]!r}")
    return int(m.group(1))


def load_for_doctor(path: Optional[str], host: Host) -> tuple:
    """(config, source, error): ``--config``, else /etc/edge-agent/config.yaml when present, else the defaults."""
    if path is None and host.file(DEFAULT_CONFIG).is_file():
        path = str(host.file(DEFAULT_CONFIG))
    if path is None:
        return Config(), "defaults", None
    try:
        return load_config(path), path, None
    except ConfigError as e:
        return Config(), path, e.message


def render(checks: List[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != PASS:
            lines.append(f"{'':<5} {'':<{width}}  fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, FAIL)}
    lines.append(f"{counts[PASS]} pass, {counts[WARN]} warn, {counts[FAIL]} fail")
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    host = Host.from_env(timeout=args.timeout)
    cfg, source, error = load_for_doctor(args.config, host)
    checks = Doctor(cfg, source, error, host, socket_path=args.socket).run()
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2, default=str))
    else:
        print(render(checks))
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check this unit: JetPack, Python, ONNX Runtime providers, GPU/DLA, systemd, "
                                             "directories, socket, broker, disk (exit 1 on a failed check)")
    p.add_argument("--config", help=f"config file to check and use (default: {DEFAULT_CONFIG} when present)")
    p.add_argument("--socket", help="daemon socket (default $EDGE_AGENT_SOCKET or the config's server.socket)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for each probe (socket, broker, systemctl)")
    p.set_defaults(func=cmd_doctor)


def main(argv: Optional[List[str]] = None) -> int:
    """`python3 -m edge_agent.ops.doctor`: the same checks without the rest of the CLI, for a unit where
    importing the daemon's other modules is what fails."""
    import argparse

    ap = argparse.ArgumentParser(prog="python3 -m edge_agent.ops.doctor")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
