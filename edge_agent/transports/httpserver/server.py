"""``HttpServer``: the listeners, the set of open connections, and their
shutdown."""

from __future__ import annotations

import asyncio
import logging
import resource

from .limits import HttpLimits, Sweeper, connection_cap, make_room
from .protocol import HttpProtocol

log = logging.getLogger("edge_agent.http")


class HttpServer:
    """Listeners and connections sharing one ``respond(req)``.

    ``respond`` returns the answer ``(status, head, body)``, a ``Later``, or
    an awaitable giving the answer; it is called from the parser's callback
    when nothing else on the connection is in flight. ``on_error(err)`` is
    told about requests refused before ``respond`` saw them (malformed HTTP,
    a limit, a timeout, the connection cap), so they are logged and counted
    like other bad input. ``limits``: an ``HttpLimits`` or the
    ``server.limits`` config section (same attributes)."""

    def __init__(self, respond, max_body: int, on_error=None, limits=None) -> None:
        self.respond = respond
        self.max_body = max_body
        self.limits = limits = limits if limits is not None else HttpLimits()
        self.max_url = limits.max_url_bytes
        self.max_head = limits.max_head_bytes
        self.max_connections = limits.max_connections  # set from the descriptor limit on listen
        self.on_error = on_error or (lambda err: None)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[HttpProtocol] = set()
        self.listeners: list[asyncio.AbstractServer] = []
        self.draining = False  # answers carry Connection: close from now on
        self.active = 0  # connections with an answer in flight (a Later or a task)
        self._idle: asyncio.Future | None = None  # resolved when ``active`` drops to 0, while shutting down
        self.sweeper = Sweeper(self)
        self._capped = False

    def _factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def _started(self) -> None:
        if not self._capped:  # once, on the first listener
            self._capped = True
            self.max_connections = connection_cap(self.limits)
            log.info("http: at most %d connections (max_connections %d, descriptor limit %d, %d reserved)",
                     self.max_connections, self.limits.max_connections,
                     resource.getrlimit(resource.RLIMIT_NOFILE)[0], self.limits.reserved_fds)
        self.sweeper.start()

    async def listen_unix(self, path: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.listeners.append(await self.loop.create_unix_server(self._factory, path, backlog=1024))
        self._started()

    async def listen_tcp(self, host: str, port: int, reuse_port: bool = False, ssl=None, respond=None) -> int:
        """``reuse_port``: several processes may listen on the port
        (SO_REUSEPORT; the kernel shares connections out among them).
        ``ssl``: an SSLContext to serve TLS (a handshake gets 10 s: until it
        is done the connection is not ours to sweep). ``respond``: this
        listener's own hook instead of the server's (a port serving less);
        its connections still count against the one cap, are swept by the
        one sweep and shut down in the one order."""
        self.loop = asyncio.get_running_loop()
        tls = {"ssl": ssl, "ssl_handshake_timeout": 10.0} if ssl is not None else {}
        factory = self._factory if respond is None else (lambda: HttpProtocol(self, respond))
        srv = await self.loop.create_server(factory, host, port, backlog=1024, reuse_address=True,
                                            reuse_port=reuse_port or None, **tls)
        self.listeners.append(srv)
        self._started()
        return srv.sockets[0].getsockname()[1]

    def make_room(self) -> bool:
        """At the cap: close the connection that waited longest on its
        client, or refuse the newcomer (limits.make_room)."""
        return make_room(self)

    def close_listeners(self) -> None:
        self.draining = True
        for srv in self.listeners:
            srv.close()

    async def shutdown(self, timeout: float) -> None:
        """Let what is in flight finish within ``timeout``, then close every
        connection; in this order, each step for a reason:"""
        # 1. Accept no one new. From here on every answer carries
        #    "Connection: close", so keep-alive clients leave after their
        #    current request instead of sending another.
        self.close_listeners()
        # 2. Stop the sweep: its timeouts are for clients of a server that
        #    goes on; from here the shutdown's own timeout bounds everything.
        self.sweeper.stop()
        # 3. Wait, up to ``timeout``, for the answers in flight: inference
        #    shared with other requests (a batch, single flight) finishes for
        #    every one of them, and each client gets its answer.
        if self.active:
            self._idle = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle), timeout)
            except asyncio.TimeoutError:
                pass
        # 4. Close the connections with nothing in flight: idle keep-alive
        #    ones, and clients in the middle of a request head or body (they
        #    were told nothing, as when any server goes away).
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        # 5. Cut what still runs after the timeout: cancel its work and abort
        #    the connection (no answer: it would be a lie to write one), and
        #    wait until the cancellations have run, so nothing of ours is
        #    left on the loop when the caller goes on to close the models.
        left = [c for c in self.connections if c.task is not None]
        if left:
            log.warning("shutdown: cancelling %d request(s) still running after %.1fs", len(left), timeout)
            for conn in left:
                conn.task.cancel()
                if conn.transport is not None:
                    conn.transport.abort()
            await asyncio.gather(*(c.task for c in left if c.task is not None), return_exceptions=True)
        # 6. The listening sockets are closed once their servers say so.
        for srv in self.listeners:
            await srv.wait_closed()
        self.listeners.clear()

    def handler_done(self) -> None:
        """A connection's answer in flight is done (written or dropped)."""
        self.active -= 1
        if not self.active and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
