"""A small client for the daemon's socket (or its TCP listener), used by the CLI and the tests.

stdlib only (http.client over AF_UNIX or TCP): the CLI starts fast and needs nothing
the daemon does not already have.
"""

from __future__ import annotations

import http.client
import socket
import ssl

import orjson

from .serving.codec import HEADER_LENGTH


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class AgentClient:
    """Keeps one connection open; not thread-safe (one per thread).

    ``target``: the socket's path, or ``http://HOST:PORT`` / ``https://HOST:PORT``
    for the TCP listener. ``token``: sent as ``Authorization: Bearer`` (control
    endpoints over TCP need it). ``ssl_context``: for https (default: the
    system's CAs and hostname checks)."""

    def __init__(self, target: str, timeout: float = 60.0, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.path = str(target)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        scheme, sep, rest = self.path.partition("://")
        if not sep:
            return _UnixConnection(self.path, self.timeout)
        hostport = rest.rstrip("/")
        if scheme == "https":
            return http.client.HTTPSConnection(hostport, timeout=self.timeout,
                                               context=self.ssl_context or ssl.create_default_context())
        if scheme == "http":
            return http.client.HTTPConnection(hostport, timeout=self.timeout)
        raise ValueError(f"not a socket path or http(s)://HOST:PORT: {self.path!r}")

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        headers = {**self._auth, **(headers or {})}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request(method, url, body=body, headers=headers)
                r = self._conn.getresponse()
                data = r.read()
                return r.status, dict(r.getheaders()), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed: retry once on a new one.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, url: str, doc=None) -> tuple[int, object]:
        body = orjson.dumps(doc) if doc is not None else None
        status, headers, data = self.request(method, url, body, {"Content-Type": "application/json"} if body else None)
        hl = headers.get(HEADER_LENGTH)
        if hl is not None:
            data = data[: int(hl)]
        return status, orjson.loads(data) if data else None

    def infer(self, model: str, doc: dict, version: str | None = None) -> tuple[int, dict]:
        url = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return self.json("POST", url, doc)

    def infer_image(self, model: str, data: bytes, content_type: str, version: str | None = None) -> tuple[int, dict]:
        """An encoded image as the whole body (``Content-Type: image/png``); the answer is JSON."""
        url = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        status, _, body = self.request("POST", url, data, {"Content-Type": content_type})
        return status, orjson.loads(body) if body else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
