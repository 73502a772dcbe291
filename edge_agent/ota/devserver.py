"""``edge-agent registry serve``: a development HTTP server for a registry tree.

Static GET/HEAD with single byte ranges (``bytes=a-b``, ``bytes=a-``,
``bytes=-n``) answered 206 + Content-Range, 416 when unsatisfiable. For tests
it can throttle and cut responses short, to exercise resumable downloads.
Loopback by default: it has no authentication and is not a production server.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TYPES = {".json": "application/json", ".sig": "application/json", ".yaml": "application/yaml"}


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0, throttle_bps: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.throttle_bps = throttle_bps
        # Test hooks: the next ``cut_responses`` bodies stop after ``cut_after_bytes``.
        self.cut_after_bytes: int | None = None
        self.cut_responses = 0
        self.cut_path_suffix: str | None = None  # only cut responses whose path ends with this
        self.ignore_range = False  # behave like a server without Range support (always 200)
        self.body_bytes_sent = 0
        self.bytes_by_path: dict[str, list[int]] = {}  # body bytes of each response, per URL path
        self.requests: list[tuple[str, str, str | None, int]] = []  # (method, path, Range, status)
        self._lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RegistryServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="registry-devserver", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            if self.cut_path_suffix is not None and not path.endswith(self.cut_path_suffix):
                return None
            if self.cut_after_bytes is not None and self.cut_responses > 0:
                self.cut_responses -= 1
                return self.cut_after_bytes
            return None


class _Handler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("devserver: " + fmt, *args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _resolve(self) -> Path | None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = (self.server.root / rel).resolve()
        # Refuse anything escaping the root (../, symlinks out) and hidden temp dirs.
        if path != self.server.root and self.server.root not in path.parents:
            return None
        if any(part.startswith(".") for part in path.relative_to(self.server.root).parts):
            return None
        return path if path.is_file() else None

    def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Range"), code))
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)

    def _serve(self, body: bool) -> None:
        path = self._resolve()
        if path is None:
            self._status(404, {"Content-Length": "0"})
            self.end_headers()
            return
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = None if self.server.ignore_range else self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                start = None
            elif not m.group(1):  # suffix range: the last n bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start is None or start >= size or start > end:
                self._status(416, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
                self.end_headers()
                return
            status = 206
        length = end - start + 1 if size else 0
        headers = {"Content-Length": str(length), "Accept-Ranges": "bytes",
                   "Content-Type": _TYPES.get(path.suffix, "application/octet-stream")}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._status(status, headers)
        self.end_headers()
        if body and length:
            self._send_body(path, start, length)

    def _send_body(self, path: Path, start: int, length: int) -> None:
        cut = self.server._take_cut(urlsplit(self.path).path)
        limit = length if cut is None else min(cut, length)
        bps = self.server.throttle_bps
        t0, sent = time.monotonic(), 0
        sizes = self.server.bytes_by_path.setdefault(urlsplit(self.path).path, [])
        sizes.append(0)
        with open(path, "rb") as f:
            f.seek(start)
            while sent < limit:
                chunk = f.read(min(16384, limit - sent))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
                sizes[-1] = sent
                self.server.body_bytes_sent += len(chunk)
                if bps:
                    ahead = sent / bps - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        if sent < length:
            # Simulated network cut: the client sees fewer bytes than Content-Length.
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(root: Path, host: str = "127.0.0.1", port: int = 8080, throttle_bps: int | None = None) -> None:
    """Blocking server for the CLI; stops on Ctrl-C."""
    if not Path(root).is_dir():
        raise FileNotFoundError(root)
    with RegistryServer(root, host, port, throttle_bps) as srv:
        print(f"serving registry {srv.root} at {srv.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
