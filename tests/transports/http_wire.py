"""HTTP on the wire for the HTTP server's tests: the real ``HttpServer`` on a
Unix socket in a thread of its own (``ServerThread``), and a raw client that
writes requests byte by byte and reads the answers back (``connect``,
``Reader``, ``get``, ``post``).

``ServerThread``'s handler is a small real one (echo, sleep, a shared future)
instead of the inference service, whose routes the daemon tests cover. Paths
under /fast/ are answered without a coroutine (an answer at once, or a
``Later``), as inference requests are in the daemon; the others by a coroutine.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import orjson
import uvloop

from daemon_proc import wait_for
from edge_agent.transports import httpserver
from edge_agent.transports.httpserver import CT_JSON, HttpLimits, HttpServer


class ServerThread:
    """An HttpServer on a Unix socket, on a loop in a background thread."""

    def __init__(self, max_body: int = 64 * 1024, limits: HttpLimits | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hp-"))  # AF_UNIX paths are short
        self.path = str(self.dir / "s.sock")
        self.loop = uvloop.new_event_loop()
        self.calls: list[str] = []  # paths whose handler started
        self.finished: list[str] = []  # ... and returned (not cancelled)
        self.errors: list = []  # on_error reports
        self.gate: asyncio.Future | None = None
        self.fgate: asyncio.Future | None = None  # what /fast/gate waits for
        self.server = HttpServer(self.respond, max_body, self.errors.append, limits)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.listen_unix(self.path))

    def run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def respond(self, req):
        """The server's hook: ``fast`` for /fast/, else ``handle``'s coroutine."""
        r = self.fast(req)
        return r if r is not None else self.handle(req)

    async def handle(self, req):
        self.calls.append(req.path)
        if req.path == "/sleep":
            await asyncio.sleep(int(req.query.split(b"=")[1]) / 1000)
        elif req.path == "/gate":
            if self.gate is None:
                self.gate = self.loop.create_future()
            # shield: what the service does for work other requests share
            await asyncio.shield(self.gate)
        elif req.path == "/boom":
            raise RuntimeError("a bug in a route")
        if req.path.startswith("/big/"):
            return 200, CT_JSON, orjson.dumps({"path": req.path}) + b" " * 65536
        if req.error is not None:
            self.finished.append(req.path)
            return req.error.http_status, CT_JSON, orjson.dumps(req.error.to_dict())
        doc = {
            "method": req.method, "path": req.path, "query": req.query.decode(),
            "len": len(req.body), "body": req.body[:64].decode(errors="replace"),
            "ctype": req.headers.get(b"content-type", b"").decode(),
        }
        self.finished.append(req.path)
        return 200, CT_JSON, orjson.dumps(doc)

    def fast(self, req):
        if not req.path.startswith("/fast/"):
            return None
        self.calls.append(req.path)
        what = req.path[6:]
        if what == "raise":
            raise RuntimeError("a bug in a fast route")
        if what == "now":
            self.finished.append(req.path)
            return 200, CT_JSON, orjson.dumps({"path": req.path, "len": len(req.body)})
        fut = self.loop.create_future()
        if what == "gate":
            if self.fgate is None or self.fgate.done():
                self.fgate = fut
            fut = self.fgate
        else:  # sleep
            self.loop.call_later(int(req.query.split(b"=")[1]) / 1000, lambda: fut.done() or fut.set_result(None))
        return _FastLater(fut, req, self)

    def open_fast_gate(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.fgate.set_result(None) if self.fgate and not self.fgate.done() else None)

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.gate.set_result(None) if self.gate and not self.gate.done() else None)

    def stop(self) -> None:
        try:
            self.run(self.server.shutdown(2))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            shutil.rmtree(self.dir, ignore_errors=True)


class _FastLater(httpserver.Later):
    __slots__ = ("srv",)

    def __init__(self, future, req, srv) -> None:
        super().__init__(future, req)
        self.srv = srv

    def answer(self):
        self.future.result()  # raises CancelledError when shutdown cut it
        if self.req.query == b"boom":
            raise RuntimeError("a bug finishing an answer")
        self.srv.finished.append(self.req.path)
        return 200, CT_JSON, orjson.dumps({"path": self.req.path, "len": len(self.req.body)})


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


class Reader:
    """Reads HTTP responses off a raw socket (Content-Length framing only,
    which is all the server emits)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise EOFError("connection closed before a response")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers.get("content-length", 0))
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("connection closed mid-body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self) -> bool:
        """True when the server closed the connection (EOF, nothing pending)."""
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def wait_until(cond, timeout: float = 5.0) -> None:
    """Poll ``cond`` every 10 ms (the server runs on its own thread); TimeoutError after ``timeout`` s."""
    wait_for(cond, timeout, every=0.01)
