"""The doctor's checks of the unit itself: which JetPack / L4T release, which
Python and ONNX Runtime (and whether that wheel has the TensorRT and CUDA
providers), whether the TensorRT, CUDA and cuDNN libraries and the GPU / DLA
device nodes are there, what the CPU offers for INT8, and whether systemd is
new enough for ``LoadCredential=``.

A mixin of ``Doctor`` (doctor.py), which gives it ``cfg``, ``host`` and
``jetson`` (the L4T release read from /etc/nv_tegra_release, None off a
Jetson). ONNX Runtime is imported inside its own check only.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..credentials import UNIT_CONFIG_DIR
# CPU flags are read by the same code the daemon uses to pick a model artifact.
from ..runtime.cpu import parse_cpuinfo
from .doctor_probe import FAIL, PASS, WARN, Check, Host

if TYPE_CHECKING:
    from ..config import Config

LOAD_CREDENTIAL_SYSTEMD = 247  # systemd.exec(5): LoadCredential= "Added in version 247."
# Jetson iGPU nodes (nvgpu: /dev/nvhost-* up to L4T 35, /dev/nvgpu/igpu0/* from 36) and desktop GPUs.
GPU_NODES = ("dev/nvhost-gpu", "dev/nvhost-ctrl-gpu", "dev/nvgpu/igpu0/ctrl", "dev/nvidia0")
DLA_NODES = ("dev/nvhost-nvdla{}", "dev/nvhost-ctrl-nvdla{}")


class PlatformChecks:
    """``check_*`` of the unit; ``Doctor`` runs them."""

    cfg: Config
    host: Host
    jetson: Optional[Dict[str, Any]]

    def _gpu_nodes(self) -> List[str]:
        nodes = [p for p in GPU_NODES if self.host.file(p).exists()]
        nodes += [str(p.relative_to(self.host.root)) for p in sorted(self.host.file("proc/driver/nvidia/gpus").glob("*/information"))]
        return ["/" + n for n in nodes]

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
