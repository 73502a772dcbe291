"""KServe v2 HTTP API on a Unix socket (and an optional loopback TCP port).

The HTTP protocol layer is the httpserver package (raw asyncio + httptools);
this module owns the listeners' setup and answers each request: its route is
parsed once (http_routes.py), and ``respond`` answers it. Inference has one
path: decode, ``service.start``, and either the answer at once (a cache hit,
an error) or an ``_InferLater`` holding the service's future, which the
server finishes from a callback or, behind pipelined requests, from its
connection's task: the same future and the same ``settle`` either way.
Decoding/encoding is in serving/codec.py, the core in serving/service.py.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket
import time
from pathlib import Path

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .. import __version__
from ..errors import EdgeError, MalformedRequest, NotFound
from ..serving.codec import HEADER_LENGTH, decode_request, encode_error, encode_response
from ..serving.service import Started
from ..types import InferRequest, InferResponse
from .authority import ControlAuthority
from .http_routes import (INFER, LIVE, METRICS, MODEL, MODEL_ACTION, MODEL_READY, READY, RELOAD, REPOSITORY_INDEX,
                          SERVER, STATUS, parse_route)
from .httpserver import CT_JSON, HttpServer, Later, Request

log = logging.getLogger("edge_agent.http")

_EXTENSIONS = ["binary_tensor_data", "model_repository", "edge_agent"]
_HL_KEY = HEADER_LENGTH.lower().encode()
_CT_BINARY = b"Content-Type: application/octet-stream\r\n" + HEADER_LENGTH.encode() + b": %d\r\n"
_CT_METRICS = b"Content-Type: " + CONTENT_TYPE_LATEST.encode() + b"\r\n"
_METRICS_PORT_ROUTES = frozenset((METRICS, LIVE, READY))
_BEARER = b'WWW-Authenticate: Bearer realm="edge-agent control"\r\n'


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


def _remove_stale_socket(path: Path) -> None:
    """Remove the socket a killed daemon left behind; refuse to take over one
    a live daemon still answers on."""
    if not (path.is_socket() or path.exists()):
        return
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            pass  # refused: nobody listens, so it is stale
        else:
            raise OSError(errno.EADDRINUSE, f"another process is serving on {path}")
        finally:
            probe.close()
    path.unlink()


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_ctime_ns


def _json(obj, status: int = 200) -> tuple[int, bytes, bytes]:
    return status, CT_JSON, orjson.dumps(obj)


def _error(err: EdgeError) -> tuple[int, bytes, bytes]:
    return err.http_status, CT_JSON, encode_error(err)


def _body(req: Request) -> bytes:
    if req.error is not None:  # refused by the protocol layer (too large)
        raise req.error
    return req.body


def _json_body(req: Request) -> dict:
    """A control or repository request's JSON object body ({} when empty)."""
    body = _body(req)
    try:
        doc = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as e:
        raise MalformedRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise MalformedRequest("the body must be a JSON object")
    return doc


class _InferLater(Later):
    """An inference request the service has started: its future, and how
    to turn the settled response into the answer."""

    __slots__ = ("http", "ireq", "started", "pin")

    def __init__(self, started: Started, req: Request, http: "HttpTransport", ireq: InferRequest, pin) -> None:
        self.future = started.future
        self.req = req
        self.http = http
        self.ireq = ireq
        self.started = started
        self.pin = pin

    def answer(self) -> tuple[int, bytes, bytes]:
        http = self.http
        try:
            resp = http.app.service.settle(self.started)
        except EdgeError as e:
            http.errlog(f"infer {self.ireq.model}", e)
            return _error(e)
        return http._encode(self.ireq, resp, self.pin)


class HttpTransport:
    """Serves the daemon's ``app`` object (see daemon.py) over HTTP.

    ``app`` provides: service (InferenceService), repo, ready (bool),
    status() -> dict, reload() coroutine, and ctl(model, action, body) coroutine.
    """

    def __init__(self, app, socket_path: Path | None, socket_mode: int, socket_group: str | None,
                 tcp: tuple[str, int] | None, max_body: int, authority: ControlAuthority | None = None,
                 tcp_ssl=None, limits=None, metrics: tuple[str, int] | None = None) -> None:
        self.app = app
        # Control endpoints need authority (transports/authority.py); the
        # default allows root and this process's user only, and no TCP peer.
        self.authority = authority or ControlAuthority(None, None)
        self.tcp_ssl = tcp_ssl
        self.socket_path = socket_path
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.tcp = tcp
        self.max_body = max_body
        self.errlog = ErrorLog(log)
        # limits: server.limits (HttpLimits' attributes); None: HttpLimits' defaults
        self._server = HttpServer(self.respond, max_body, self._protocol_error, limits)
        self.tcp_port: int | None = None
        self.metrics = metrics  # (host, port) of the metrics-only listener (server.metrics), or None
        self.metrics_port: int | None = None
        self.draining = False
        self._socket_id: tuple[int, int] | None = None

    async def start(self) -> None:
        if self.socket_path is not None:
            path = self.socket_path
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(path)
            # Bound under a temporary name and renamed once mode and group are
            # set, so the socket is never reachable with the umask's mode.
            tmp = path.with_name(f".{os.getpid()}.s")  # short: AF_UNIX paths are capped at 108 bytes
            tmp.unlink(missing_ok=True)
            try:
                await self._server.listen_unix(str(tmp))
                os.chmod(tmp, self.socket_mode)
                if self.socket_group:
                    try:
                        os.chown(tmp, -1, grp.getgrnam(self.socket_group).gr_gid)
                    except (KeyError, PermissionError) as e:
                        log.warning("cannot give socket %s to group %s: %s", path, self.socket_group, e)
                os.rename(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            # Remembered so shutdown removes our socket, not a successor's that
            # took the path meanwhile (inodes are reused, so ctime too).
            self._socket_id = _file_id(path)
            log.info("serving KServe v2 on unix:%s", path)
        if self.tcp is not None:
            self.tcp_port = await self._server.listen_tcp(self.tcp[0], self.tcp[1], ssl=self.tcp_ssl)
            log.info("serving KServe v2 on %s://%s:%d (control over TCP: %s)", "https" if self.tcp_ssl else "http",
                     self.tcp[0], self.tcp_port, "bearer token" if self.authority.token else "off")
        if self.metrics is not None:
            # The same HttpServer: one connection cap, one sweep, one shutdown.
            self.metrics_port = await self._server.listen_tcp(self.metrics[0], self.metrics[1],
                                                              respond=self.respond_metrics)
            log.info("serving metrics on http://%s:%d/metrics (and health; nothing else)", self.metrics[0], self.metrics_port)

    def stop_listening(self) -> None:
        """Stop accepting connections; open ones get their answers with
        ``Connection: close`` (infer answers shutting_down once the service stops)."""
        self.draining = True
        self._server.close_listeners()

    async def shutdown(self, timeout: float) -> None:
        """Wait up to ``timeout`` for handlers in flight, then close connections
        and remove the socket file."""
        self.stop_listening()
        try:
            await self._server.shutdown(timeout)
        finally:
            if self.socket_path is not None and self._socket_id is not None:
                try:
                    if _file_id(self.socket_path) == self._socket_id:
                        self.socket_path.unlink()
                except FileNotFoundError:
                    pass

    def _protocol_error(self, err: EdgeError) -> None:
        self.app.service.refused("socket", err)
        self.errlog("http", err)

    # --- answering ------------------------------------------------------------------

    def respond(self, req: Request):
        """The answer to ``req`` (httpserver's hook): a tuple, an
        ``_InferLater``, or a coroutine for the control routes that wait."""
        route = parse_route(req.method, req.path)
        if route.kind == INFER:  # the hot path
            return self._infer(req, route.model, route.version)
        try:
            return self._answer(req, route)
        except EdgeError as e:
            return self._refused(req, e)

    def respond_metrics(self, req: Request):
        """The metrics listener's hook: /metrics and health, every other
        route not_found (inference and control never reach this port)."""
        route = parse_route(req.method, req.path)
        if route.kind not in _METRICS_PORT_ROUTES:
            return self._refused(req, NotFound(f"no route {req.method} {req.path} on the metrics port"))
        return self._answer(req, route)

    def _answer(self, req: Request, route):
        kind = route.kind
        if route.control:  # every POST under /edge/ and /v2/repository/models/ changes state
            who = self.authority.check(req.transport, req.headers)
            log.info("control: %s %s by %s", req.method, req.path, who)
        if kind == MODEL:
            return self._model_metadata(route.model, route.version)
        if kind == MODEL_READY:
            return self._model_ready(route.model, route.version)
        if kind == LIVE:
            return _json({"live": True})
        if kind == READY:
            ready = self.app.ready and not self.draining
            return _json({"ready": ready}, 200 if ready else 503)
        if kind == SERVER:
            return _json({"name": "edge-agent", "version": __version__, "extensions": _EXTENSIONS})
        if kind == METRICS:
            return 200, _CT_METRICS, generate_latest(REGISTRY)
        if kind == STATUS:
            return _json(self.app.status())
        if kind == REPOSITORY_INDEX:
            index = self.app.repo.index()
            if _json_body(req).get("ready"):  # Triton's {"ready": true}: only what serves
                index = [m for m in index if m["state"] == "READY"]
            return _json(index)
        if kind == RELOAD:
            return self._control(req, self.app.reload())
        if kind == MODEL_ACTION:
            return self._control(req, self.app.ctl(route.model, route.action, _json_body(req)))
        raise NotFound(f"no route {req.method} {req.path}")

    async def _control(self, req: Request, work) -> tuple[int, bytes, bytes]:
        try:
            return _json(await work)
        except EdgeError as e:
            return self._refused(req, e)

    def _refused(self, req: Request, e: EdgeError) -> tuple[int, bytes, bytes]:
        self.errlog(f"{req.method} {req.path}", e)
        if e.http_status == 401:
            return 401, CT_JSON + _BEARER, encode_error(e)
        return _error(e)

    def _infer(self, req: Request, name: str, version: str | None):
        """The one inference path: the answer, or an ``_InferLater``."""
        answer, ireq, pin = self._decode(req, name, version)
        if answer is not None:
            return answer
        try:
            r = self.app.service.start(ireq)
        except EdgeError as e:
            self.errlog(f"infer {name}", e)
            return _error(e)
        if r.__class__ is not Started:
            return self._encode(ireq, r, pin)
        return _InferLater(r, req, self, ireq, pin)

    def _decode(self, req: Request, name: str, version: str | None):
        """(answer, None, None) when the request is answered already (from
        the memo, or refused); else (None, the InferRequest, the memo pin)."""
        service = self.app.service
        hl = req.headers.get(_HL_KEY)
        pin = None
        if req.error is None and name not in service.sampling_models:
            # A request byte for byte like an earlier one answered from the
            # cache gets that answer's bytes back (service.memo_lookup).
            answer, pin = service.memo_lookup(hl or b"", name, version, req.body)
            if answer is not None:
                return answer, None, None
        try:
            body = _body(req)
            if hl is not None:
                try:
                    hl = int(hl)
                except ValueError:
                    raise MalformedRequest(f"{HEADER_LENGTH} is not an integer") from None
            ireq = decode_request(body, name, version, hl)
        except EdgeError as e:
            service.refused("socket", e)
            self.errlog(f"infer {name}", e)
            return _error(e), None, None
        if pin is not None:
            ireq.version = pin[1]
        ireq.arrived = req.arrived
        return None, ireq, pin

    def _encode(self, ireq: InferRequest, resp: InferResponse, pin) -> tuple[int, bytes, bytes]:
        out, head_len = encode_response(resp, ireq.binary_outputs)
        answer = (200, CT_JSON, out) if head_len is None else (200, _CT_BINARY % head_len, out)
        if pin is not None and resp.cached:
            self.app.service.memo_keep(pin[0], resp, answer, len(out) + len(answer[1]))
        return answer

    def _model_metadata(self, name: str, version: str | None) -> tuple[int, bytes, bytes]:
        mv = self.app.repo.route(name, version)
        meta = mv.model.metadata()
        if version is None:
            meta["versions"] = self.app.repo.version_names(name)
            meta["parameters"]["default_version"] = self.app.repo.models[name].default
        return _json(meta)

    def _model_ready(self, name: str, version: str | None) -> tuple[int, bytes, bytes]:
        mv = self.app.repo.route(name, version)
        ready = mv.state == "READY" and not self.draining
        return _json({"name": name, "ready": ready}, 200 if ready else 503)
