"""What a request and an answer are to the server: the parsed ``Request``,
the pre-encoded status lines and headers every answer is built from, and
``Later``, an answer that is not ready yet.

An answer is ``(status, head, body)``: ``head`` holds pre-encoded header
lines (``b"Content-Type: ...\\r\\n"``), at least the Content-Type; the
protocol adds Content-Length and Connection and writes the whole answer in
one ``transport.write``.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

import orjson

from ...errors import EdgeError

CT_JSON = b"Content-Type: application/json\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"Connection: close\r\n"
KEEP = b"Connection: keep-alive\r\n"
LENGTH = b"Content-Length: "
INTERNAL = b'{"error":"internal server error","code":"internal"}'
METHODS = {b"POST": "POST", b"GET": "GET"}  # skip a decode for the common two
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def refusal(err: EdgeError) -> tuple[int, bytes, bytes]:
    """The answer to a request the server refused itself (malformed, a limit, a timeout)."""
    return err.http_status, CT_JSON, orjson.dumps(err.to_dict())


def encode(status: int, head: bytes, body: bytes, connection: bytes) -> bytes:
    """One whole answer, ready for one ``transport.write``."""
    return b"".join((status_line(status), head, LENGTH, b"%d\r\n" % len(body), connection, b"\r\n", body))


class Request:
    """One parsed request. ``headers`` maps lower-case header names to raw
    values (bytes). ``error`` is set when the body was refused (too large);
    handlers that read the body raise it. ``transport``: the connection's,
    for who is asking (peer credentials or address; transports/authority.py).
    ``arrived``: loop time of the read that brought its first byte
    (deadlines count from there). ``method`` is empty for a refusal the
    server queued behind earlier answers (``error`` says why)."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "error", "transport", "arrived")

    def __init__(self, method, path, query, headers, body, keep_alive, error, transport=None,
                 arrived: float | None = None) -> None:
        self.method: str = method
        self.path: str = path
        self.query: bytes = query
        self.headers: dict[bytes, bytes] = headers
        self.body: bytes = body
        self.keep_alive: bool = keep_alive
        self.error: EdgeError | None = error
        self.transport = transport
        self.arrived = arrived


class Later:
    """What ``respond`` returns for an answer to ``req`` that is not ready:
    ``future``, and ``answer()``, called once it is done, giving (status,
    head, body). The server waits for it with a done-callback, not a task,
    when nothing else on the connection is in flight (docs/BENCHMARKS.md:
    answered from callbacks, +3.5 %)."""

    __slots__ = ("future", "req")

    def __init__(self, future: asyncio.Future, req: Request) -> None:
        self.future = future
        self.req = req

    def answer(self) -> tuple[int, bytes, bytes]:
        raise NotImplementedError
