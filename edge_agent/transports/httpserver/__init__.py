"""A small HTTP/1.1 server on raw asyncio protocols, parsed by httptools.

Why not aiohttp: at ~10k requests/s on two cores, aiohttp's per-request
machinery (request/response objects, multidict headers, stream readers,
writer) costs more event-loop time than decoding, validating and answering
the inference itself. This server does only what the daemon's API needs:

- HTTP/1.1 keep-alive, HTTP/1.0, ``Connection: close``; Content-Length and
  chunked request bodies; ``Expect: 100-continue``.
- Pipelining: a connection answers one request at a time, in request order;
  concurrency comes from many connections.
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
- A client that goes away never cancels its answer's work: inference shared
  with other requests (single flight, a batch) must finish for them.

The app gives one hook, ``respond(req: Request)``, returning the answer
``(status, head, body)`` (``head``: pre-encoded header lines, at least the
Content-Type; the server adds Content-Length and Connection), a ``Later``
(a future, and how to turn it into the answer once done), or an awaitable
giving the answer. With nothing else in flight on the connection it is
called from the parser's callback, and an answer or a ``Later`` then costs
no task and no coroutine (docs/BENCHMARKS.md: an A/B read +3.5 %
throughput).

What lives where:

- ``wire.py``: ``Request``, ``Later``, status lines and the answer's bytes.
- ``flow.py``: ``FlowControl``, when a connection pauses reading and waits
  to write.
- ``protocol.py``: ``HttpProtocol``, one connection: parser callbacks,
  limits as bytes arrive, answers in order.
- ``limits.py``: ``HttpLimits``, the connection cap and the sweep of slow
  and idle connections.
- ``server.py``: ``HttpServer``, listeners and the ordered shutdown.
"""

from __future__ import annotations

from .flow import MAX_PIPELINED, FlowControl
from .limits import HttpLimits, connection_cap
from .protocol import DISCARD_LIMIT, MAX_HEADER_BYTES, HttpProtocol
from .server import HttpServer
from .wire import CT_JSON, Later, Request, status_line

__all__ = [
    "CT_JSON", "DISCARD_LIMIT", "MAX_HEADER_BYTES", "MAX_PIPELINED", "FlowControl", "HttpLimits", "HttpProtocol",
    "HttpServer", "Later", "Request", "connection_cap", "status_line",
]
