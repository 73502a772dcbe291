"""What the doctor reads and what it answers.

``Host`` is where every probe reads: files under a root directory (``/etc``,
``/proc``, ``/dev``, library directories; ``$EDGE_AGENT_DOCTOR_ROOT``) and
commands found on a ``PATH``, so the doctor can be pointed at a recorded unit.
``Check`` is one answer: pass / warn / fail, what was found, and the fix. The
checks themselves are in doctor_platform.py (the unit) and doctor_service.py
(the daemon's own resources); doctor.py runs them and reports.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

PASS, WARN, FAIL = "pass", "warn", "fail"
DEFAULT_CONFIG = "/etc/edge-agent/config.yaml"
ROOT_ENV = "EDGE_AGENT_DOCTOR_ROOT"

# Where JetPack and the CUDA / TensorRT packages put their libraries (not all are in ld.so.conf).
LIB_DIRS = (
    "usr/lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu/tegra", "usr/lib/x86_64-linux-gnu",
    "usr/local/cuda/lib64", "usr/local/cuda/targets/aarch64-linux/lib", "usr/local/cuda/targets/x86_64-linux/lib",
    "usr/lib", "lib",
)


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
