"""Limits on what clients may hold: the timeouts of slow and idle
connections, enforced by one periodic sweep, and the connection cap.

Slow and idle connections are found by a sweep over the timestamps the
connections keep (protocol.py), every ``sweep_s``, rather than by a timer per
request, which would cost a timer handle on the hot path. The cost is
precision: a timeout fires up to one sweep late. Time a connection spends
with reading paused by us (its answers, its queue) does not count against
the client.
"""

from __future__ import annotations

import logging
import resource
from typing import TYPE_CHECKING, NamedTuple

from ...errors import Overloaded, RequestTimeout
from .protocol import BODY, HEAD, IDLE, MAX_HEADER_BYTES

if TYPE_CHECKING:
    import asyncio

    from .server import HttpServer

log = logging.getLogger("edge_agent.http")

# How often the sweep checks connections against HttpLimits' timeouts (more
# often when a timeout is shorter than 4 sweeps).
SWEEP_S = 1.0


class HttpLimits(NamedTuple):
    """Per-connection limits and timeouts, and the connection cap, for a
    server built outside the daemon (tests, benchmarks). The daemon passes
    its ``server.limits`` config section instead, which has the same
    attributes (docs/CONFIG.md says what each means)."""

    max_url_bytes: int = 8 * 1024
    max_head_bytes: int = MAX_HEADER_BYTES
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    body_min_bytes_per_s: int = 1024
    request_max_s: float = 120.0
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    max_connections: int = 4096
    reserved_fds: int = 128


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


class Sweeper:
    """The periodic check of every connection of ``server`` against its
    ``limits``: slow heads and bodies refused (408), idle connections closed,
    connections whose client reads no answer cut."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        lim = server.limits
        self.sweep_s = max(0.05, min(SWEEP_S, lim.header_timeout_s / 4, lim.body_timeout_s / 4,
                                     lim.idle_timeout_s / 4, lim.send_timeout_s / 4))
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.server.loop.call_later(self.sweep_s, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        server = self.server
        now = server.loop.time()
        lim = server.limits
        for conn in list(server.connections):
            if conn.transport is None:
                continue
            if conn.drained is not None and now - conn.write_paused_at > lim.send_timeout_s:
                # Answers wait for a client that does not read them.
                server.on_error(RequestTimeout(f"client read no answer for {lim.send_timeout_s:g}s"))
                conn.transport.abort()
                continue
            if conn.task is not None:
                conn.last = now  # busy is not idle: idleness counts from the last answer
            if conn.stopped:  # closing once its answers are out
                continue
            if conn.read_paused:
                # Waiting for us (its answers, its queue), not for the client:
                # the time does not count against the client's head or body.
                conn.mark_at, conn.mark_fed = now, conn.fed
                continue
            phase = conn.phase
            if phase == HEAD:
                if now - conn.mark_at > lim.header_timeout_s:
                    conn.refuse(RequestTimeout(f"request head not complete within {lim.header_timeout_s:g}s"))
            elif phase >= BODY:
                if now - conn.began > lim.request_max_s:
                    # Just above the minimum rate, an 8 MiB body would take
                    # hours: the whole request is bounded too.
                    conn.refuse(RequestTimeout(f"request not complete within {lim.request_max_s:g}s"))
                elif now - conn.mark_at >= lim.body_timeout_s:
                    if conn.fed - conn.mark_fed < max(1, lim.body_min_bytes_per_s * (now - conn.mark_at)):
                        conn.refuse(RequestTimeout(f"request body slower than {lim.body_min_bytes_per_s} bytes/s "
                                                   f"over {lim.body_timeout_s:g}s"))
                    else:
                        conn.mark_at, conn.mark_fed = now, conn.fed
            elif conn.task is None and now - conn.last > lim.idle_timeout_s:
                conn.close()
        self._handle = server.loop.call_later(self.sweep_s, self._sweep)


def make_room(server: HttpServer) -> bool:
    """At the connection cap, make room by closing the connection that
    has waited longest on its client: idle since its last answer (or
    since connecting, with nothing sent), or inside a request (head or
    body, not yet handed to a handler) that began longest ago (a slow
    client: answered 503 overloaded). Oldest
    first, so a burst of new connections cannot push out a fresh one
    that has not been read yet, while slow clients cannot lock others
    out. With every connection busy in a handler, the newcomer is
    refused (False). Only at the cap, so the O(n) scan is off the normal path."""
    victim = None
    oldest = 0.0
    for c in server.connections:
        if c.task is not None or c.stopped or c.transport is None:
            continue
        phase = c.phase
        if phase == IDLE:
            since = c.last
        else:  # in a head or a body: a trickled upload holds a slot as long as a trickled head
            since = c.began
        if victim is None or since < oldest:
            victim, oldest = c, since
    if victim is None:
        server.on_error(Overloaded(f"connection refused: {server.max_connections} connections open"))
        return False
    if victim.phase == IDLE:
        victim.close()  # a client must expect an idle keep-alive connection to close
    else:
        victim.refuse(Overloaded(f"connection closed to make room: {server.max_connections} connections open"))
    server.connections.discard(victim)
    return True
