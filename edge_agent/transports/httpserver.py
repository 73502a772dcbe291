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
  connection is closed), URL and head size (counted as bytes arrive, so a
  client cannot make the parser buffer more than a read past the limit),
  pipelined requests queued per connection.
- Slow clients cannot hold descriptors: a head must complete within
  ``header_timeout_s``, a body must keep a minimum rate, idle connections
  close, answers a client does not read are cut; all checked by one periodic
  sweep, not a timer per request. Open connections are capped below the
  descriptor limit (see ``HttpLimits``).
- A client that half-closes (``shutdown(SHUT_WR)``) still gets the answers
  to every request it completed, then the connection closes.
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
import resource
from collections import deque
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools
import orjson

from ..errors import (EdgeError, HeaderTooLarge, MalformedRequest, Overloaded, PayloadTooLarge, RequestTimeout,
                      UriTooLong)

log = logging.getLogger("edge_agent.http")

# Oversized bodies up to this size are read and dropped so the client, still
# sending, gets the 413 instead of a reset; beyond it the connection closes.
DISCARD_LIMIT = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
# Pipelined requests parsed ahead of the one being answered; past this,
# reading pauses so a client cannot queue unbounded work in memory (what one
# read already holds is still parsed, so one read buffer bounds the excess).
MAX_PIPELINED = 16
# How often the sweep checks connections against HttpLimits' timeouts (more
# often when a timeout is shorter than 4 sweeps).
SWEEP_S = 1.0

# Where a connection's parser is: between requests, inside a request head,
# inside a body, at a chunk's size line or the last chunk's trailers (which
# httptools buffers like headers: counted as a head, timed as the body). Set
# from the parser callbacks; the sweep and the head-size check (odd phases)
# read it.
_IDLE, _HEAD, _BODY, _CHUNK = 0, 1, 2, 3

CT_JSON = b"Content-Type: application/json\r\n"
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP = b"Connection: keep-alive\r\n"
_LENGTH = b"Content-Length: "
_INTERNAL = b'{"error":"internal server error","code":"internal"}'
_METHODS = {b"POST": "POST", b"GET": "GET"}  # skip a decode for the common two


def _refusal(err: EdgeError) -> tuple[int, bytes, bytes]:
    return err.http_status, CT_JSON, orjson.dumps(err.to_dict())


def status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class Request:
    """One parsed request. ``headers`` maps lower-case header names to raw
    values (bytes). ``error`` is set when the body was refused (too large);
    handlers that read the body raise it. ``transport``: the connection's,
    for who is asking (peer credentials or address; transports/authority.py).
    ``arrived``: loop time of the read that brought its first byte
    (deadlines count from there)."""

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


class HttpLimits:
    """Per-connection limits and timeouts, and the connection cap. The
    daemon passes its ``server.limits`` config section, which has the same
    attributes (docs/CONFIG.md says what each means)."""

    __slots__ = ("max_url_bytes", "max_head_bytes", "header_timeout_s", "body_timeout_s", "body_min_bytes_per_s",
                 "idle_timeout_s", "send_timeout_s", "max_connections", "reserved_fds")

    def __init__(self, max_url_bytes: int = 8 * 1024, max_head_bytes: int = MAX_HEADER_BYTES,
                 header_timeout_s: float = 10.0, body_timeout_s: float = 10.0, body_min_bytes_per_s: int = 1024,
                 idle_timeout_s: float = 60.0, send_timeout_s: float = 30.0, max_connections: int = 4096,
                 reserved_fds: int = 128) -> None:
        self.max_url_bytes = max_url_bytes
        self.max_head_bytes = max_head_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.body_min_bytes_per_s = body_min_bytes_per_s
        self.idle_timeout_s = idle_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_connections = max_connections
        self.reserved_fds = reserved_fds


def connection_cap(limits, nofile: int | None = None) -> int:
    """Most connections to hold open: ``max_connections``, but never so many
    that the daemon runs out of descriptors for models, SQLite, MQTT and
    reloads (``reserved_fds`` below the soft RLIMIT_NOFILE). Accepting past
    the descriptor limit fails in the kernel (EMFILE) for every client alike,
    and so does opening a model or the cache; refusing at our own cap keeps
    both working."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = limits.max_connections
    if nofile != resource.RLIM_INFINITY:
        room = nofile - limits.reserved_fds
        if room < 1:
            room = max(1, nofile // 2)
            log.warning("descriptor limit %d leaves no room beside %d reserved: capping connections at %d",
                        nofile, limits.reserved_fds, room)
        cap = min(cap, room)
    return cap


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
    (malformed HTTP, a limit, a timeout, the connection cap), so they are
    logged and counted like other bad input. ``limits``: an ``HttpLimits``
    or the ``server.limits`` config section (same attributes)."""

    def __init__(self, handler, max_body: int, on_error=None, fast=None, limits=None) -> None:
        self.handler = handler
        self.fast = fast
        self.max_body = max_body
        self.limits = limits = limits if limits is not None else HttpLimits()
        self.max_url = limits.max_url_bytes
        self.max_head = limits.max_head_bytes
        self.max_connections = limits.max_connections  # set from the descriptor limit on listen
        self.sweep_s = max(0.05, min(SWEEP_S, limits.header_timeout_s / 4, limits.body_timeout_s / 4,
                                     limits.idle_timeout_s / 4, limits.send_timeout_s / 4))
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

    def _started(self) -> None:
        if self._sweeper is None:  # once, on the first listener
            self.max_connections = connection_cap(self.limits)
            log.info("http: at most %d connections (max_connections %d, descriptor limit %d, %d reserved)",
                     self.max_connections, self.limits.max_connections,
                     resource.getrlimit(resource.RLIMIT_NOFILE)[0], self.limits.reserved_fds)
        self._arm_sweeper()

    async def listen_unix(self, path: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.listeners.append(await self.loop.create_unix_server(self._factory, path, backlog=1024))
        self._started()

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
        self._started()
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

    # Slow and idle connections are found by a periodic sweep over the
    # timestamps the connections keep, rather than by a timer per request,
    # which would cost a timer handle on the hot path. The cost is precision:
    # a timeout fires up to one sweep late.
    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        lim = self.limits
        for conn in list(self.connections):
            if conn.transport is None:
                continue
            if conn.drained is not None and now - conn.wpaused > lim.send_timeout_s:
                # Answers wait for a client that does not read them.
                self.on_error(RequestTimeout(f"client read no answer for {lim.send_timeout_s:g}s"))
                conn.transport.abort()
                continue
            if conn.task is not None:
                conn.last = now  # busy is not idle: idleness counts from the last answer
            if conn.cut:  # closing once its answers are out
                continue
            if conn.read_paused:
                # Waiting for us (its answers, its queue), not for the client:
                # the time does not count against the client's head or body.
                conn.mark_at, conn.mark_fed = now, conn.fed
                continue
            phase = conn.phase
            if phase == _HEAD:
                if now - conn.mark_at > lim.header_timeout_s:
                    conn.refuse(RequestTimeout(f"request head not complete within {lim.header_timeout_s:g}s"))
            elif phase >= _BODY:
                if now - conn.mark_at >= lim.body_timeout_s:
                    if conn.fed - conn.mark_fed < max(1, lim.body_min_bytes_per_s * (now - conn.mark_at)):
                        conn.refuse(RequestTimeout(f"request body slower than {lim.body_min_bytes_per_s} bytes/s "
                                                   f"over {lim.body_timeout_s:g}s"))
                    else:
                        conn.mark_at, conn.mark_fed = now, conn.fed
            elif conn.task is None and now - conn.last > lim.idle_timeout_s:
                conn.close()
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    def _admit(self, conn: "HttpProtocol") -> bool:
        """At the connection cap, make room by closing the connection that
        has waited longest on its client: idle since its last answer (or
        since connecting, with nothing sent), or inside a request head that
        began longest ago (a slow client: answered 503 overloaded). Oldest
        first, so a burst of new connections cannot push out a fresh one
        that has not been read yet, while slow clients cannot lock others
        out. With every connection busy in a handler, the newcomer is
        refused. Only at the cap, so the O(n) scan is off the normal path."""
        victim = None
        oldest = 0.0
        for c in self.connections:
            if c.task is not None or c.cut or c.transport is None:
                continue
            phase = c.phase
            if phase == _IDLE:
                since = c.last
            elif phase == _HEAD:
                since = c.began
            else:
                continue
            if victim is None or since < oldest:
                victim, oldest = c, since
        if victim is None:
            self.on_error(Overloaded(f"connection refused: {self.max_connections} connections open"))
            return False
        if victim.phase == _IDLE:
            victim.close()  # a client must expect an idle keep-alive connection to close
        else:
            victim.refuse(Overloaded(f"connection closed to make room: {self.max_connections} connections open"))
        self.connections.discard(victim)
        return True


class HttpProtocol(asyncio.Protocol):
    """One connection. httptools calls the on_* methods from feed_data."""

    __slots__ = (
        "server", "parser", "transport", "queue", "task", "later", "cut", "drained", "read_paused",
        "url", "headers", "header_bytes", "body", "body_size", "error", "discard",
        # progress, for the limits and the sweep: what the parser is in, loop
        # time of the last read, when the current request's first byte came,
        # when the connection last had a request or answer, bytes read, where
        # the head began (in bytes read), since when (and from which byte
        # count) the head or body is timed, when writing paused
        "phase", "now", "began", "last", "fed", "head_from", "mark_at", "mark_fed", "wpaused",
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
        self.phase = _IDLE
        self.now = self.began = self.last = self.mark_at = self.wpaused = server.loop.time()
        self.fed = self.head_from = self.mark_fed = 0
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
        server = self.server
        if len(server.connections) >= server.max_connections and not server._admit(self):
            self.cut = True
            body = orjson.dumps(Overloaded("too many connections; try again").to_dict())
            transport.write(b"".join((status_line(503), CT_JSON, _LENGTH, b"%d\r\n" % len(body), _CLOSE, b"\r\n", body)))
            transport.close()
            return
        server.connections.add(self)

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
            self.wpaused = self.server.loop.time()
        self._flow()

    def resume_writing(self) -> None:
        self._wake_writer()
        self._flow()

    def _wake_writer(self) -> None:
        d, self.drained = self.drained, None
        if d is not None and not d.done():
            d.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.now = self.server.loop.time()
        if self.cut:
            return
        # Counted before parsing, so callbacks see the total up to the end of
        # this read: a head that begins in this read is counted from the next
        # one, which keeps the check below from refusing a head that is
        # small but shares a large read with earlier pipelined requests.
        self.fed = fed = self.fed + len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: answer what was parsed, then close.
            self._stop()
            return
        except httptools.HttpParserError as e:
            # A callback's own EdgeError (a limit) travels as the context.
            ctx = e.__context__
            self.refuse(ctx if isinstance(ctx, EdgeError) else MalformedRequest(f"malformed HTTP request: {e}"))
            return
        # httptools hands a header over only once its line is complete, and
        # buffers it by concatenation meanwhile: refuse an endless head here,
        # at most one read past the limit, before the parser holds more.
        if self.phase & 1 and fed - self.head_from > self.server.max_head and not self.cut:
            self.refuse(HeaderTooLarge(f"request head exceeds {self.server.max_head} bytes"))

    def eof_received(self) -> bool | None:
        """The client half-closed: it sends nothing more but may still read.
        Requests it completed get their answers, the last one closing the
        connection (``cut`` turns off keep-alive); with nothing pending, close
        now. Returning None would make asyncio close at once, dropping
        answers not yet written."""
        self.cut = True
        if self.task is None:
            return None
        return True

    # --- httptools callbacks (only those defined here are called) ---------------

    def on_message_begin(self) -> None:
        self._reset()
        self.phase = _HEAD
        self.began = self.mark_at = self.now
        self.head_from = self.fed

    def on_url(self, url: bytes) -> None:
        # The URL arrives in pieces, one per read: grown in a bytearray
        # (amortised linear), not by bytes concatenation (quadratic), and
        # refused once over the limit.
        have = self.url
        if have:
            if have.__class__ is bytes:
                have = self.url = bytearray(have)
            have += url
        else:
            have = self.url = url
        if len(have) > self.server.max_url:
            raise UriTooLong(f"request URL exceeds {self.server.max_url} bytes")
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.server.max_head:
            raise HeaderTooLarge(f"request head exceeds {self.server.max_head} bytes")
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        self.mark_at = self.now
        self.mark_fed = self.fed
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

    def on_chunk_header(self) -> None:
        # Chunked bodies only. The last chunk's trailers are buffered by
        # httptools until their line ends: counted against max_head from
        # here until body bytes follow.
        self.phase = _CHUNK
        self.head_from = self.fed

    def on_body(self, chunk: bytes) -> None:
        self.phase = _BODY
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
        self.phase = _IDLE
        self.last = self.now
        if self.cut:
            return
        self._dispatch(self._request(self.parser.should_keep_alive()))

    # --- requests and answers --------------------------------------------------

    def _request(self, keep_alive: bool) -> Request:
        url = self.url
        if url.__class__ is not bytes:  # came in several pieces
            url = self.url = bytes(url)
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
                       b"".join(self.body), keep_alive, self.error, self.transport, self.began)

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
                    else:  # refused (malformed, a limit), queued by refuse() behind earlier answers
                        answer = _refusal(req.error)
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

    def refuse(self, err: EdgeError) -> None:
        """Malformed HTTP, a limit, a timeout: nothing more is parsed on this
        connection; answer ``err`` after any earlier answers, then close."""
        self.server.on_error(err)
        self._stop()
        req = Request("", "", b"", {}, b"", False, err)
        if self.task is None:
            self._write(req, _refusal(err))
        else:
            self.queue.append(req)

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

