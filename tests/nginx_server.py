"""Debian's nginx serving a directory on a free loopback port (Range support built in):
the OTA tests' and the fleet tests' registry, as the field serves it.

    with NginxServer(root, workdir) as (url, prefix): ...   # prefix/access.log counts requests
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional


def nginx_binary() -> Optional[str]:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxServer:
    def __init__(self, root: Path, workdir: Path, worker_connections: int = 64) -> None:
        self.root, self.prefix = Path(root), Path(workdir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_connections = worker_connections
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "NginxServer":
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx binary not installed")
        self.prefix.mkdir(parents=True, exist_ok=True)
        p = self.prefix
        user = "user root;" if os.geteuid() == 0 else ""  # workers must read pytest's 0700 tmp dirs
        conf = p / "nginx.conf"
        conf.write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {self.worker_connections}; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    types {{ application/json json; application/octet-stream onnx npz sig; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{ }}
    }}
}}
""")
        self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(p)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""
                    self.stop()
                    err = (p / "error.log").read_text() if (p / "error.log").exists() else ""
                    raise RuntimeError(f"nginx did not start: {out} {err}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown); SIGKILL when it is still there 5 s later."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self):
        self.start()
        return self.url, self.prefix

    def __exit__(self, *exc) -> None:
        self.stop()
