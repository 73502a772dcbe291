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

This module runs the checks in order and reports them (text or JSON); the
checks live by what they look at: doctor_platform.py (the unit),
doctor_service.py (the daemon's own resources), and doctor_probe.py holds
``Host`` and ``Check``, which both use.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..config import Config, load_config
from ..errors import ConfigError
from .doctor_platform import PlatformChecks
from .doctor_probe import DEFAULT_CONFIG, FAIL, PASS, ROOT_ENV, WARN, Check, Host
from .doctor_service import ServiceChecks

# The doctor's surface: the CLI (register, main), the runner and what it reads and returns.
__all__ = ["Check", "Doctor", "Host", "ROOT_ENV", "cmd_doctor", "load_for_doctor", "main", "register", "render"]

# L4T (Jetson Linux) release -> JetPack. JetPack 5 is the last line for Xavier.
JETPACK = {
    (32, 7, 1): "4.6.1", (32, 7, 2): "4.6.2", (32, 7, 3): "4.6.3", (32, 7, 4): "4.6.4", (32, 7, 5): "4.6.5",
    (35, 1, 0): "5.0.2", (35, 2, 1): "5.1", (35, 3, 1): "5.1.1", (35, 4, 1): "5.1.2", (35, 5, 0): "5.1.3",
    (35, 6, 0): "5.1.4",
    (36, 2, 0): "6.0 DP", (36, 3, 0): "6.0", (36, 4, 0): "6.1", (36, 4, 3): "6.2",
}
JETPACK_LINE = {32: "4.x", 35: "5.x", 36: "6.x"}


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


@dataclass
class Doctor(PlatformChecks, ServiceChecks):
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

    @property
    def jetson(self) -> Optional[Dict[str, Any]]:
        """The L4T release and board (from /etc/nv_tegra_release), None off a Jetson; read once."""
        if self._jetson is None:
            text = self.host.read("/etc/nv_tegra_release")
            info = _l4t(text) if text else None
            if info is not None:
                info["model"] = (self.host.read("/proc/device-tree/model") or "").strip("\x00\n ")
            self._jetson = info or {}
        return self._jetson or None


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
