"""A real mosquitto for tests: `mosquitto -c conf` on a free port.

    broker = Mosquitto(tmp_path, persistence=True)      # plain MQTT on broker.port
    broker = Mosquitto(tmp_path, tls=make_certs(d))     # TLS server auth
    broker = Mosquitto(tmp_path, tls=certs, require_client_cert=True)   # mutual TLS
    broker = Mosquitto(tmp_path, users={"edge": "s3cret"})              # password file
    broker = Mosquitto(tmp_path, tls=certs, plain_listener=True)        # TLS on .port, plain on .plain_port
    broker.start(); broker.kill(); broker.restart(); broker.stop()

restart() keeps the port and the persistence directory, so persistent
sessions and queued QoS 1 messages come back when persistence is on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from certs import CertSet

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = False,
        tcp_nodelay: bool = True,
        tls: CertSet | None = None,
        require_client_cert: bool = False,
        users: dict[str, str] | None = None,
        plain_listener: bool = False,
        extra_conf: str = "",
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.plain_port = free_port() if plain_listener else None
        self.persistence = persistence
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "mosquitto.log"
        self.conf_path = self.dir / "mosquitto.conf"
        self.proc: subprocess.Popen | None = None
        self.conf_path.write_text(self._conf(tcp_nodelay, tls, require_client_cert, users, extra_conf))

    def _conf(self, nodelay, tls, require_client_cert, users, extra) -> str:
        lines = ["per_listener_settings false", f"set_tcp_nodelay {'true' if nodelay else 'false'}"]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to 'mosquitto' and cannot read our 0600 keys
        lines.append("log_type error\nlog_type warning\nlog_type notice\nlog_type information")
        lines.append("max_queued_messages 100000\nmax_inflight_messages 0")
        if self.persistence:
            self.data_dir.mkdir(exist_ok=True)
            # Save on every change so even kill -9 keeps (almost) everything queued.
            lines += ["persistence true", f"persistence_location {self.data_dir}/", "autosave_on_changes true", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if users:
            pw = self.dir / "passwd"
            pw.unlink(missing_ok=True)
            for i, (u, p) in enumerate(users.items()):
                args = [MOSQUITTO_PASSWD, "-b"] + (["-c"] if i == 0 else []) + [str(pw), u, p]
                subprocess.run(args, check=True, capture_output=True)
            lines += [f"password_file {pw}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        lines.append(f"listener {self.port} 127.0.0.1")
        if tls is not None:
            lines += [f"cafile {tls.ca_cert}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
            if require_client_cert:
                lines.append("require_certificate true")
        if self.plain_port is not None:
            lines.append(f"listener {self.plain_port} 127.0.0.1")
        if extra:
            lines.append(extra)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_path.read_text()[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, no final save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, hard: bool = False) -> None:
        self.kill() if hard else self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
