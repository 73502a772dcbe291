"""A small HTTP/1.1 server on raw asyncio protocols, parsed by httptools.

Why not aiohttp: at ~10k requests/s on two cores, aiohttp's per-request
machinery (request/response objects, multidict headers, stream readers,
writer) costs more event-loop time than decoding, validating and answering
the inference itself. This server does only what the daemon's API needs:

- HTTP/1.1 keep-alive, HTTP/1.0, ``Connection: close``; Content-Length and
  chunked request bodies; ``Expect: 100-continue``.
- Pipelining: a connection runs one handler at a time and answers in request
  order; concurrency comes from many connections.
- Every response has a Content-Length and goes out in one ``transport.write``.
- Limits: body size (oversized bodies are drained up to a bound, then the
  connection is closed), header size, pipelined requests queued per connection.
- A client that goes away never cancels its handler: inference shared with
  other requests (single flight, a batch) must finish for them.

The handler is ``async def handler(req: Request) -> (status, head, body)``
where ``head`` is pre-encoded header lines (``b"Content-Type: ...\\r\\n"``), at
least the Content-Type; this module adds Content-Length and Connection.

An optional ``fast(req)`` is tried first, from the parser's callback, for a
connection with nothing else in flight. It returns the answer tuple, or a
``Later`` (a future, and how to turn it into the answer once done), or None
to use ``handler``. A request answered this way costs no task and no
coroutine (docs/BENCHMARKS.md: an A/B read +3.5 % throughput).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools
import orjson

from ..errors import EdgeError, MalformedRequest, PayloadTooLarge

log = logging.getLogger("edge_agent.http")

# Oversized bodies up to this size are read and dropped so the client, still
# sending, gets the 413 instead of a reset; beyond it the connection closes.
DISCARD_LIMIT = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
# Pipelined requests parsed ahead of the one being answered; past this,
# reading pauses so a client cannot queue unbounded work in memory (what one
# read already holds is still parsed, so one read buffer bounds the excess).
MAX_PIPELINED = 16
# Connections with no bytes and no handler for a whole sweep are closed.
IDLE_SWEEP_S = 60.0

CT_JSON = b"Content-Type: application/json\r\n"
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP = b"Connection: keep-alive\r\n"
_LENGTH = b"Content-Length: "
_INTERNAL = b'{"error":"internal server error","code":"internal"}'
_METHODS = {b"POST": "POST", b"GET": "GET"}  # skip a decode for the common two


def status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class Request:
    """One parsed request. ``headers`` maps lower-case header names to raw
    values (bytes). ``error`` is set when the body was refused (too large);
    handlers that read the body raise it. ``transport``: the connection's,
    for who is asking (peer credentials or address; transports/authority.py)."""

    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "error", "transport")

    def __init__(self, method, path, query, headers, body, keep_alive, error, transport=None) -> None:
        self.method: str = method
        self.path: str = path
        self.query: bytes = query
        self.headers: dict[bytes, bytes] = headers
        self.body: bytes = body
        self.keep_alive: bool = keep_alive
        self.error: EdgeError | None = error
        self.transport = transport


class Later:
    """What ``fast`` returns for an answer to ``req`` that is not ready:
    ``future``, and ``answer()``, called once it is done, giving (status,
    head, body)."""

    __slots__ = ("future", "req")

    def __init__(self, future: asyncio.Future, req: Request) -> None:
        self.future = future
        self.req = req

    def answer(self) -> tuple[int, bytes, bytes]:
        raise NotImplementedError


class HttpServer:
    """Listeners and connections sharing one handler.

    ``on_error(err)`` is told about requests refused before any handler ran
    (malformed HTTP), so they are logged and counted like other bad input."""

    def __init__(self, handler, max_body: int, on_error=None, fast=None) -> None:
        self.handler = handler
        self.fast = fast
        self.max_body = max_body
        self.on_error = on_error or (lambda err: None)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[HttpProtocol] = set()
        self.listeners: list[asyncio.AbstractServer] = []
        self.draining = False  # answers carry Connection: close from now on
        self.active = 0  # connections with a handler running
        self._drained: asyncio.Future | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def _factory(self) -> "HttpProtocol":
        return HttpProtocol(self)

    async def listen_unix(self, path: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.listeners.append(await self.loop.create_unix_server(self._factory, path, backlog=1024))
        self._arm_sweeper()

    async def listen_tcp(self, host: str, port: int, reuse_port: bool = False, ssl=None) -> int:
        """``reuse_port``: several processes may listen on the port
        (SO_REUSEPORT; the kernel shares connections out among them).
        ``ssl``: an SSLContext to serve TLS (a handshake gets 10 s: until it
        is done the connection is not ours to sweep)."""
        self.loop = asyncio.get_running_loop()
        tls = {"ssl": ssl, "ssl_handshake_timeout": 10.0} if ssl is not None else {}
        srv = await self.loop.create_server(self._factory, host, port, backlog=1024, reuse_address=True,
                                            reuse_port=reuse_port or None, **tls)
        self.listeners.append(srv)
        self._arm_sweeper()
        return srv.sockets[0].getsockname()[1]

    def close_listeners(self) -> None:
        self.draining = True
        for srv in self.listeners:
            srv.close()

    async def shutdown(self, timeout: float) -> None:
        """Wait up to ``timeout`` for running handlers, close idle connections,
        then cut whatever is left."""
        self.close_listeners()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.active:
            self._drained = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except asyncio.TimeoutError:
                pass
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        left = [c for c in self.connections if c.task is not None]
        if left:
            log.warning("shutdown: cancelling %d request(s) still running after %.1fs", len(left), timeout)
            for conn in left:
                conn.task.cancel()
                if conn.transport is not None:
                    conn.transport.abort()
            await asyncio.gather(*(c.task for c in left if c.task is not None), return_exceptions=True)
        for srv in self.listeners:
            await srv.wait_closed()
        self.listeners.clear()

    def _handler_done(self) -> None:
        self.active -= 1
        if not self.active and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # Idle keep-alive connections (and clients stalled mid-request) are closed
    # by a periodic sweep rather than a timer per request, which would cost a
    # timer handle on the hot path.
    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(IDLE_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        for conn in list(self.connections):
            if conn.task is None and conn.seen == conn.seen_at_sweep:
                conn.close()
            conn.seen_at_sweep = conn.seen
        self._sweeper = self.loop.call_later(IDLE_SWEEP_S, self._sweep)


class HttpProtocol(asyncio.Protocol):
    """One connection. httptools calls the on_* methods from feed_data."""

    __slots__ = (
        "server", "parser", "transport", "queue", "task", "later", "cut", "drained", "read_paused",
        "seen", "seen_at_sweep", "url", "headers", "header_bytes", "body", "body_size", "error", "discard",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()  # pipelined, waiting for their turn
        # What runs for this connection: the handler loop (a task), or the
        # future of a Later (then ``later`` is set).
        self.task: asyncio.Future | None = None
        self.later: Later | None = None
        self.cut = False  # stop parsing: answer what is queued, then close
        # Set while the transport's write buffer is above its high-water mark;
        # resolves when it drains (or the connection is lost).
        self.drained: asyncio.Future | None = None
        self.read_paused = False
        self.seen = 0  # data_received calls, for the idle sweep
        self.seen_at_sweep = -1
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.error: EdgeError | None = None
        self.discard = False

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.cut = True
        self.queue.clear()
        self.transport = None
        self._wake_writer()
        if self.task is None:
            self.server.connections.discard(self)
        # else the handler loop finishes, drops its answer and removes us.

    def pause_writing(self) -> None:
        if self.drained is None:
            self.drained = self.server.loop.create_future()
        self._flow()

    def resume_writing(self) -> None:
        self._wake_writer()
        self._flow()

    def _wake_writer(self) -> None:
        d, self.drained = self.drained, None
        if d is not None and not d.done():
            d.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.seen += 1
        if self.cut:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: answer what was parsed, then close.
            self._stop()
        except httptools.HttpParserError as e:
            # A callback's own MalformedRequest travels as the context.
            ctx = e.__context__
            self._bad_request(ctx.message if isinstance(ctx, EdgeError) else f"malformed HTTP request: {e}")

    # --- httptools callbacks (only those defined here are called) ---------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise MalformedRequest(f"request head exceeds {MAX_HEADER_BYTES} bytes")
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self.cut:  # a later pipelined message after we decided to close
            return
        headers = self.headers
        cl = headers.get(b"content-length")
        expect = headers.get(b"expect")
        if cl is not None and int(cl) > self.server.max_body:
            n = int(cl)
            self.error = PayloadTooLarge(f"body of {n} bytes exceeds the limit of {self.server.max_body}")
            if expect is not None or n > DISCARD_LIMIT:
                # The client waits for 100 Continue (or the body is too big to
                # drain): answer now without the body, then close.
                self._dispatch(self._request(keep_alive=False))
                self._stop()
            else:
                self.discard = True
        elif expect is not None and expect.lower() == b"100-continue" and self.task is None:
            # Only when no earlier answer is pending (it must go first); a
            # client that gets no 100 sends the body after a short wait anyway.
            self.transport.write(_CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        if self.discard or self.cut:
            return
        self.body_size += len(chunk)
        if self.body_size > self.server.max_body:  # chunked: the size shows only now
            self.error = PayloadTooLarge(f"body exceeds the limit of {self.server.max_body} bytes")
            self.body = []
            self._dispatch(self._request(keep_alive=False))
            self._stop()
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.cut:
            return
        self._dispatch(self._request(self.parser.should_keep_alive()))

    # --- requests and answers --------------------------------------------------

    def _request(self, keep_alive: bool) -> Request:
        url = self.url
        query = b""
        q = url.find(b"?")
        if q >= 0:
            url, query = url[:q], url[q + 1 :]
        if url[:1] != b"/":  # absolute form ("http://host/path"), as proxies send
            url = httptools.parse_url(self.url).path or b"/"
        if b"%" in url:
            url = unquote_to_bytes(url)
        try:
            path = url.decode()
        except UnicodeDecodeError:
            raise MalformedRequest("request path is not UTF-8") from None
        method = self.parser.get_method()
        # b"".join returns the chunk itself when the body came in one piece.
        return Request(_METHODS.get(method) or method.decode(), path, query, self.headers,
                       b"".join(self.body), keep_alive, self.error, self.transport)

    def _dispatch(self, req: Request) -> None:
        if self.task is not None:
            self.queue.append(req)
            if len(self.queue) >= MAX_PIPELINED:
                self._flow()
            return
        server = self.server
        fast = server.fast
        if fast is not None and req.method:
            try:
                r = fast(req)
            except Exception:  # a bug in a route must not take the connection down
                log.exception("unhandled error answering %s %s", req.method, req.path)
                r = (500, CT_JSON, _INTERNAL)
            if r is not None:
                if r.__class__ is tuple:
                    self._write(req, r)
                    return
                server.active += 1
                self.later = r
                self.task = r.future
                r.future.add_done_callback(self._later_done)
                return
        server.active += 1
        self.task = server.loop.create_task(self._serve(req))

    def _later_done(self, fut: asyncio.Future) -> None:
        later, self.later = self.later, None
        try:
            answer = later.answer()
        except asyncio.CancelledError:  # shutdown cut it and is aborting the connection
            self._finished()
            return
        except Exception:
            log.exception("unhandled error finishing an answer")
            answer = (500, CT_JSON, _INTERNAL)
        if self._write(later.req, answer) and (self.queue or self.drained is not None):
            # Pipelined requests wait, or the client reads slowly: go on in a task.
            self.task = self.server.loop.create_task(self._serve(None))
            return
        self._finished()

    def _write(self, req: Request, answer: tuple[int, bytes, bytes]) -> bool:
        """Send one answer; False when the connection ends with it (or had ended)."""
        transport = self.transport
        if transport is None:  # the client left; its answer has nowhere to go
            return False
        status, head, body = answer
        server = self.server
        # After a cut (upgrade, refused body, bad input) nothing more is
        # parsed, so the connection closes with the last queued answer.
        keep = req.keep_alive and not server.draining and not (self.cut and not self.queue)
        if keep:
            # HTTP/1.0 keep-alive must be confirmed; HTTP/1.1 is by default.
            conn = _KEEP if b"connection" in req.headers else b""
        else:
            conn = _CLOSE
        transport.write(b"".join((status_line(status), head, _LENGTH, b"%d\r\n" % len(body), conn, b"\r\n", body)))
        if not keep:
            transport.close()
        return keep

    async def _serve(self, req: Request | None) -> None:
        """Run the handler for each queued request in turn, writing each answer
        before the next starts, so answers leave in request order. ``req``
        None: an answer from ``fast`` was just written; go on with the queue."""
        handler = self.server.handler
        try:
            while True:
                if req is not None:
                    if req.method:
                        try:
                            answer = await handler(req)
                        except Exception:  # a bug in a route must not take the connection down
                            log.exception("unhandled error answering %s %s", req.method, req.path)
                            answer = (500, CT_JSON, _INTERNAL)
                    else:  # malformed HTTP, queued by _bad_request behind earlier answers
                        answer = (400, CT_JSON, orjson.dumps(req.error.to_dict()))
                    if not self._write(req, answer):
                        return
                if self.drained is not None:
                    # The client reads slower than we answer: wait instead
                    # of buffering every pipelined answer in memory.
                    await self.drained
                if not self.queue or self.transport is None:
                    return
                req = self.queue.popleft()
                if self.read_paused:
                    self._flow()
        finally:
            self._finished()

    def _finished(self) -> None:
        self.task = None
        if self.transport is None:
            self.server.connections.discard(self)
        self.server._handler_done()

    def _bad_request(self, message: str) -> None:
        """Malformed HTTP: nothing more can be parsed on this connection;
        answer 400 after any earlier answers, then close."""
        err = MalformedRequest(message)
        self.server.on_error(err)
        self._stop()
        self._dispatch(Request("", "", b"", {}, b"", False, err))

    def _stop(self) -> None:
        self.cut = True
        self._flow()

    def _flow(self) -> None:
        """Read only while the client's answers drain and its queue is short."""
        t = self.transport
        if t is None:
            return
        pause = self.cut or self.drained is not None or len(self.queue) >= MAX_PIPELINED
        if pause and not self.read_paused:
            t.pause_reading()
            self.read_paused = True
        elif not pause and self.read_paused:
            t.resume_reading()
            self.read_paused = False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

