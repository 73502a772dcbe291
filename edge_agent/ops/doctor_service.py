"""The doctor's checks of the daemon's own resources: its config, its
directories, its socket (is a daemon answering there?), its broker, and the
disk left for TensorRT engines.

A mixin of ``Doctor`` (doctor.py), which gives it ``cfg``, ``config_source``,
``config_error``, ``host`` and ``socket_path``. The socket probe is raw
stdlib, so the doctor works where the daemon's client code does not.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

from .doctor_probe import DEFAULT_CONFIG, FAIL, PASS, WARN, Check, Host

if TYPE_CHECKING:
    from ..config import Config

ENGINE_DISK_FAIL = 256 << 20  # TensorRT engines of the shipped models are tens of MB each
ENGINE_DISK_WARN = 2 << 30


class ServiceChecks:
    """``check_*`` of the daemon's resources; ``Doctor`` runs them."""

    cfg: Config
    config_source: str
    config_error: Optional[str]
    host: Host
    socket_path: Optional[str]

    def check_config(self) -> Check:
        if self.config_error:
            return Check("config", FAIL, self.config_error, "fix the key the message names; `edge-agent check-config FILE`")
        if self.config_source == "defaults":
            return Check("config", WARN, f"no config file ({DEFAULT_CONFIG} absent): embedded defaults",
                         f"install one: install -m 0640 -g edge-agent config.yaml {DEFAULT_CONFIG}", {"source": None})
        return Check("config", PASS, f"{self.config_source} is valid (mode {self.cfg.mode})", value={"source": self.config_source})

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


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"
