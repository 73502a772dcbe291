"""One HTTP/1.1 connection: httptools' callbacks, the limits counted as
bytes arrive, and answers written in request order.

A connection answers one request at a time. ``respond(req)`` (the app's one
hook) returns the answer, a ``Later`` or a coroutine. With nothing else in
flight, an answer is written at once from the parser's callback and a
``Later`` is finished from its future's done-callback: no task and no
coroutine per request. A coroutine, and whatever waits behind an answer
still owed (pipelined requests, a client slow to read), go through one
task per connection, ``_serve``, which treats every request the same way.
When reading and writing pause is ``FlowControl``'s (flow.py); slow and idle
clients are found by the sweep (limits.py) from the progress kept here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import httptools
import orjson

from ...errors import EdgeError, HeaderTooLarge, MalformedRequest, Overloaded, PayloadTooLarge, UriTooLong
from .flow import BACKLOG, MAX_PIPELINED, FlowControl
from .wire import CLOSE, CONTINUE, CT_JSON, INTERNAL, KEEP, LENGTH, METHODS, Later, Request, encode, refusal, status_line

if TYPE_CHECKING:
    from .server import HttpServer

log = logging.getLogger("edge_agent.http")

# Oversized bodies up to this size are read and dropped so the client, still
# sending, gets the 413 instead of a reset; beyond it the connection closes.
DISCARD_LIMIT = 256 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024

# Where a connection's parser is: between requests, inside a request head,
# inside a body, at a chunk's size line or the last chunk's trailers (which
# httptools buffers like headers: counted as a head, timed as the body). Set
# from the parser callbacks; the sweep and the head-size check (odd phases)
# read it.
IDLE, HEAD, BODY, CHUNK = 0, 1, 2, 3


class HttpProtocol(FlowControl, asyncio.Protocol):
    """One connection. httptools calls the on_* methods from feed_data."""

    __slots__ = (
        "server", "respond", "parser", "queue", "task", "later",
        "url", "headers", "header_bytes", "body", "body_size", "error", "discard",
        # progress, for the limits and the sweep: what the parser is in, loop
        # time of the last read, when the current request's first byte came,
        # when the connection last had a request or answer, bytes read, where
        # the head began (in bytes read), since when (and from which byte
        # count) the head or body is timed
        "phase", "now", "began", "last", "fed", "head_from", "mark_at", "mark_fed",
    )

    def __init__(self, server: HttpServer, respond=None) -> None:
        FlowControl.__init__(self)
        self.server = server
        # The hook answering this connection's requests: the server's, or its
        # listener's own (a metrics-only port answers from a narrower one).
        self.respond = respond or server.respond
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()  # pipelined, waiting for their turn
        # What runs for this connection: the future of a Later (then
        # ``later`` is set), or ``_serve`` (a task).
        self.task: asyncio.Future | None = None
        self.later: Later | None = None
        self.phase = IDLE
        self.now = self.began = self.last = self.mark_at = server.loop.time()
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

    # --- asyncio.Protocol (pause_writing, resume_writing: FlowControl's) ---------

    def connection_made(self, transport) -> None:
        self.transport = transport
        server = self.server
        if len(server.connections) >= server.max_connections and not server.make_room():
            self.stopped = True
            body = orjson.dumps(Overloaded("too many connections; try again").to_dict())
            transport.write(encode(503, CT_JSON, body, CLOSE))
            transport.close()
            return
        server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.flow_lost()
        self.queue.clear()
        if self.task is None:
            self.server.connections.discard(self)
        # else what runs finishes, drops its answer and removes us.

    def data_received(self, data: bytes) -> None:
        self.now = self.server.loop.time()
        if self.stopped:
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
            self.stop_reading()
            return
        except httptools.HttpParserError as e:
            # A callback's own EdgeError (a limit) travels as the context.
            ctx = e.__context__
            self.refuse(ctx if isinstance(ctx, EdgeError) else MalformedRequest(f"malformed HTTP request: {e}"))
            return
        # httptools hands a header over only once its line is complete, and
        # buffers it by concatenation meanwhile: refuse an endless head here,
        # at most one read past the limit, before the parser holds more.
        if self.phase & 1 and fed - self.head_from > self.server.max_head and not self.stopped:
            self.refuse(HeaderTooLarge(f"request head exceeds {self.server.max_head} bytes"))

    def eof_received(self) -> bool | None:
        """The client half-closed: it sends nothing more but may still read.
        Requests it completed get their answers, the last one closing the
        connection (a stopped connection does not keep alive); with nothing
        in flight, close now. Returning None would make asyncio close at
        once, dropping answers not yet written."""
        self.stop_reading()
        if self.task is None:
            return None
        return True

    # --- httptools callbacks (only those defined here are called) ---------------

    def on_message_begin(self) -> None:
        self._reset()
        self.phase = HEAD
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
        self.phase = BODY
        self.mark_at = self.now
        self.mark_fed = self.fed
        if self.stopped:  # a later pipelined message after we decided to close
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
                self.stop_reading()
            else:
                self.discard = True
        elif expect is not None and expect.lower() == b"100-continue" and self.task is None:
            # Only when no earlier answer is owed (it must go first); a
            # client that gets no 100 sends the body after a short wait anyway.
            self.transport.write(CONTINUE)

    def on_chunk_header(self) -> None:
        # Chunked bodies only. The last chunk's trailers are buffered by
        # httptools until their line ends: counted against max_head from
        # here until body bytes follow.
        self.phase = CHUNK
        self.head_from = self.fed

    def on_body(self, chunk: bytes) -> None:
        self.phase = BODY
        if self.discard or self.stopped:
            return
        self.body_size += len(chunk)
        if self.body_size > self.server.max_body:  # chunked: the size shows only now
            self.error = PayloadTooLarge(f"body exceeds the limit of {self.server.max_body} bytes")
            self.body = []
            self._dispatch(self._request(keep_alive=False))
            self.stop_reading()
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.phase = IDLE
        self.last = self.now
        if self.stopped:
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
        return Request(METHODS.get(method) or method.decode(), path, query, self.headers,
                       b"".join(self.body), keep_alive, self.error, self.transport, self.began)

    def _respond(self, req: Request):
        """The app's answer to ``req``: a tuple, a ``Later`` or an awaitable."""
        if not req.method:  # refused (malformed, a limit), queued by refuse() behind earlier answers
            return refusal(req.error)
        try:
            return self.respond(req)
        except Exception:  # a bug in a route must not take the connection down
            log.exception("unhandled error answering %s %s", req.method, req.path)
            return 500, CT_JSON, INTERNAL

    def _dispatch(self, req: Request) -> None:
        if self.task is not None:  # an earlier answer is owed: wait in line
            self.queue.append(req)
            if len(self.queue) >= MAX_PIPELINED:
                self.pause_reading(BACKLOG)
            return
        server = self.server
        try:  # _respond, inline: this runs for every request (and never for a queued refusal)
            r = self.respond(req)
        except Exception:  # a bug in a route must not take the connection down
            log.exception("unhandled error answering %s %s", req.method, req.path)
            r = 500, CT_JSON, INTERNAL
        if r.__class__ is tuple:  # the common case: answered from this callback
            self._write(req, r)
            return
        server.active += 1
        if isinstance(r, Later):
            self.later = r
            self.task = r.future
            r.future.add_done_callback(self._later_done)
        else:
            self.task = server.loop.create_task(self._serve(req, r))

    def _later_done(self, fut: asyncio.Future) -> None:
        later, self.later = self.later, None
        try:
            answer = later.answer()
        except asyncio.CancelledError:  # shutdown cut it and is aborting the connection
            self._finished()
            return
        except Exception:  # as _finish, inline: this runs for every inference answer
            log.exception("unhandled error finishing an answer")
            answer = 500, CT_JSON, INTERNAL
        if self._write(later.req, answer) and (self.queue or self.drained is not None):
            # Pipelined requests wait, or the client reads slowly: go on in a task.
            self.task = self.server.loop.create_task(self._serve(None, None))
            return
        self._finished()

    def _write(self, req: Request, answer: tuple[int, bytes, bytes]) -> bool:
        """Send one answer; False when the connection ends with it (or had ended)."""
        transport = self.transport
        if transport is None:  # the client left; its answer has nowhere to go
            return False
        status, head, body = answer
        # Once reading stopped (upgrade, refused body, bad input, EOF) nothing
        # more is parsed, so the connection closes with the last answer owed.
        keep = req.keep_alive and not self.server.draining and not (self.stopped and not self.queue)
        if keep:
            # HTTP/1.0 keep-alive must be confirmed; HTTP/1.1 is by default.
            conn = KEEP if b"connection" in req.headers else b""
        else:
            conn = CLOSE
        # wire.encode, inline: this runs for every answer.
        transport.write(b"".join((status_line(status), head, LENGTH, b"%d\r\n" % len(body), conn, b"\r\n", body)))
        if not keep:
            transport.close()
        return keep

    async def _serve(self, req: Request | None, r) -> None:
        """Answer ``req`` (``r``: what ``respond`` gave for it), then each
        queued request in turn, writing each answer before the next starts,
        so answers leave in request order. ``req`` None: an answer was just
        written from a callback; go on with the queue."""
        try:
            while True:
                if req is not None:
                    if r.__class__ is not tuple:
                        if isinstance(r, Later):
                            # The same future and the same finish as from a
                            # callback; only the waiting is a task's.
                            if not r.future.done():
                                try:
                                    await r.future
                                except Exception:
                                    pass  # r.answer() turns it into the answer
                            r = _finish(r)
                        else:
                            try:
                                r = await r
                            except Exception:  # a bug in a route must not take the connection down
                                log.exception("unhandled error answering %s %s", req.method, req.path)
                                r = 500, CT_JSON, INTERNAL
                    if not self._write(req, r):
                        return
                if self.drained is not None:
                    # The client reads slower than we answer: wait instead
                    # of buffering every pipelined answer in memory.
                    await self.drained
                if not self.queue or self.transport is None:
                    return
                req = self.queue.popleft()
                if len(self.queue) < MAX_PIPELINED:
                    self.resume_reading(BACKLOG)
                r = self._respond(req)
        finally:
            self._finished()

    def _finished(self) -> None:
        self.task = None
        if self.transport is None:
            self.server.connections.discard(self)
        self.server.handler_done()

    def refuse(self, err: EdgeError) -> None:
        """Malformed HTTP, a limit, a timeout: nothing more is parsed on this
        connection; answer ``err`` after any earlier answers, then close."""
        self.server.on_error(err)
        self.stop_reading()
        req = Request("", "", b"", {}, b"", False, err)
        if self.task is None:
            self._write(req, refusal(err))
        else:
            self.queue.append(req)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _finish(later: Later) -> tuple[int, bytes, bytes]:
    """A done ``Later``'s answer; a bug finishing it answers 500. Raises
    CancelledError when shutdown cut its work."""
    try:
        return later.answer()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error finishing an answer")
        return 500, CT_JSON, INTERNAL
