"""KServe v2 HTTP API on a Unix socket (and an optional loopback TCP port).

Built on aiohttp's low-level server with a hand-written router: the request
path is a handful of string splits, because at ~10k requests/s on two cores
every microsecond per request counts. Decoding/encoding is in
serving/codec.py, the core in serving/service.py.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import time
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .. import __version__
from ..errors import EdgeError, MalformedRequest, NotFound, PayloadTooLarge
from ..serving.codec import HEADER_LENGTH, decode_request, encode_error, encode_response

log = logging.getLogger("edge_agent.http")

_JSON = "application/json"
# Oversized bodies up to this size are read and dropped before the error goes
# out; beyond it the connection is closed instead of reading the body.
_DISCARD_LIMIT = 256 * 1024 * 1024
_EXTENSIONS = ["binary_tensor_data", "model_repository", "edge_agent"]


class ErrorLog:
    """Log client errors without letting a flood of garbage flood the journal:
    at most ``per_s`` lines a second, the rest counted and summarised."""

    def __init__(self, logger: logging.Logger, per_s: int = 10) -> None:
        self.log = logger
        self.per_s = per_s
        self.window = 0
        self.lines = 0
        self.suppressed = 0

    def __call__(self, where: str, err: EdgeError) -> None:
        now = int(time.monotonic())
        if now != self.window:
            if self.suppressed:
                self.log.warning("%d more request errors not logged in the last second", self.suppressed)
            self.window, self.lines, self.suppressed = now, 0, 0
        if self.lines < self.per_s:
            self.lines += 1
            self.log.warning("%s: %s: %s", where, err.code, err.message)
        else:
            self.suppressed += 1


def _json(obj, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=_JSON)


def _error(err: EdgeError) -> web.Response:
    return web.Response(body=encode_error(err), status=err.http_status, content_type=_JSON)


class HttpTransport:
    """Serves the daemon's ``app`` object (see daemon.py) over HTTP.

    ``app`` provides: service (InferenceService), repo, ready (bool),
    status() -> dict, reload() coroutine, and ctl(model, action) coroutine.
    """

    def __init__(self, app, socket_path: Path | None, socket_mode: int, socket_group: str | None,
                 tcp: tuple[str, int] | None, max_body: int) -> None:
        self.app = app
        self.socket_path = socket_path
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.tcp = tcp
        self.max_body = max_body
        self.errlog = ErrorLog(log)
        self._server: web.Server | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self.tcp_port: int | None = None
        self.draining = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = web.Server(self._handle, access_log=None)
        if self.socket_path is not None:
            path = self.socket_path
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket() or path.exists():
                path.unlink()  # a stale socket from a killed daemon
            srv = await loop.create_unix_server(self._server, str(path), backlog=1024)
            os.chmod(path, self.socket_mode)
            if self.socket_group:
                try:
                    os.chown(path, -1, grp.getgrnam(self.socket_group).gr_gid)
                except (KeyError, PermissionError) as e:
                    log.warning("cannot give socket %s to group %s: %s", path, self.socket_group, e)
            self._listeners.append(srv)
            log.info("serving KServe v2 on unix:%s", path)
        if self.tcp is not None:
            srv = await loop.create_server(self._server, self.tcp[0], self.tcp[1], backlog=1024, reuse_address=True)
            self.tcp_port = srv.sockets[0].getsockname()[1]
            self._listeners.append(srv)
            log.info("serving KServe v2 on http://%s:%d", self.tcp[0], self.tcp_port)

    def stop_listening(self) -> None:
        """Stop accepting connections; requests on open ones are refused."""
        self.draining = True
        for srv in self._listeners:
            srv.close()

    async def shutdown(self, timeout: float) -> None:
        self.stop_listening()
        if self._server is not None:
            # Waits for handlers in flight (up to timeout), then closes connections.
            await self._server.shutdown(timeout)
        for srv in self._listeners:
            await srv.wait_closed()
        self._listeners.clear()
        if self.socket_path is not None:
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass

    # --- routing -----------------------------------------------------------------

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        path = request.path
        method = request.method
        try:
            if path.startswith("/v2/models/"):
                parts = path[11:].split("/")
                name = parts[0]
                version = None
                rest = parts[1:]
                if len(rest) >= 2 and rest[0] == "versions":
                    version = rest[1]
                    rest = rest[2:]
                if rest == ["infer"] and method == "POST":
                    return await self._infer(request, name, version)
                if not rest and method == "GET":
                    return self._model_metadata(name, version)
                if rest == ["ready"] and method == "GET":
                    return self._model_ready(name, version)
                raise NotFound(f"no route {method} {path}")
            if method == "GET":
                if path == "/v2/health/live":
                    return _json({"live": True})
                if path == "/v2/health/ready":
                    ready = self.app.ready and not self.draining
                    return _json({"ready": ready}, 200 if ready else 503)
                if path == "/v2":
                    return _json({"name": "edge-agent", "version": __version__, "extensions": _EXTENSIONS})
                if path == "/metrics":
                    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
                if path == "/edge/status":
                    return _json(self.app.status())
            if method == "POST":
                if path == "/v2/repository/index":
                    return _json(self.app.repo.index())
                if path == "/edge/reload":
                    return _json(await self.app.reload())
                if path.startswith("/edge/models/"):
                    parts = path[13:].split("/")
                    if len(parts) == 2:
                        body = await self._read_body(request)
                        return _json(await self.app.ctl(parts[0], parts[1], orjson.loads(body) if body else {}))
            raise NotFound(f"no route {method} {path}")
        except EdgeError as e:
            self.errlog(f"{method} {path}", e)
            return _error(e)

    async def _read_body(self, request: BaseRequest) -> bytes:
        cl = request.content_length
        content = request.content
        if cl is not None and cl > self.max_body:
            if cl <= _DISCARD_LIMIT:
                # Read and drop the body so the client, still sending, gets
                # the answer instead of a reset connection.
                while await content.readany():
                    pass
            else:
                request.protocol.force_close()
            raise PayloadTooLarge(f"body of {cl} bytes exceeds the limit of {self.max_body}")
        if cl is not None:
            try:
                return await content.readexactly(cl)
            except asyncio.IncompleteReadError:
                raise MalformedRequest("body ended before Content-Length bytes") from None
        chunks = []
        size = 0
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_body:
                request.protocol.force_close()
                raise PayloadTooLarge(f"body exceeds the limit of {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _infer(self, request: BaseRequest, name: str, version: str | None) -> web.Response:
        service = self.app.service
        try:
            body = await self._read_body(request)
            hl = request.headers.get(HEADER_LENGTH)
            if hl is not None:
                try:
                    hl = int(hl)
                except ValueError:
                    raise MalformedRequest(f"{HEADER_LENGTH} is not an integer") from None
            req = decode_request(body, name, version, hl)
        except EdgeError as e:
            service.refused("socket", e)
            self.errlog(f"infer {name}", e)
            return _error(e)
        try:
            resp = await service.infer(req)
        except EdgeError as e:
            self.errlog(f"infer {name}", e)
            return _error(e)
        out, head_len = encode_response(resp, req.binary_outputs)
        if head_len is None:
            return web.Response(body=out, content_type=_JSON)
        return web.Response(body=out, headers={HEADER_LENGTH: str(head_len), "Content-Type": "application/octet-stream"})

    def _model_metadata(self, name: str, version: str | None) -> web.Response:
        mv = self.app.repo.route(name, version)
        meta = mv.model.metadata()
        if version is None:
            entry = self.app.repo.models[name]
            from ..serving.repository import version_key

            meta["versions"] = sorted(entry.versions, key=version_key)
            meta["parameters"]["default_version"] = entry.default
        return _json(meta)

    def _model_ready(self, name: str, version: str | None) -> web.Response:
        mv = self.app.repo.route(name, version)
        ready = mv.state == "READY" and not self.draining
        return _json({"name": name, "ready": ready}, 200 if ready else 503)
