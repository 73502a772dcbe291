"""FlowControl (transports/httpserver/flow.py) on a real connection: a
socketpair under uvloop, so "paused" is the transport's own is_reading(),
and write back-pressure is the transport's own pause_writing/resume_writing.

The rules: pausing and resuming are idempotent per reason; reading resumes
only when no reason holds; STOPPED is never lifted; writing paused gives one
``drained`` future, resolved when the buffer drains or the connection is lost."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from edge_agent.transports.httpserver.flow import BACKLOG, STOPPED, WRITING, FlowControl

pytestmark = pytest.mark.timeout(30)


class Conn(FlowControl, asyncio.Protocol):
    """The smallest protocol with FlowControl as its base, as HttpProtocol has."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.flow_lost()


def run(scenario) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair()
        transport, conn = await loop.connect_accepted_socket(Conn, ours)
        try:
            await scenario(conn, transport, peer)
        finally:
            transport.abort()
            peer.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_pausing_twice_for_one_reason_needs_one_resume():
    async def scenario(conn, transport, peer):
        conn.pause_reading(BACKLOG)
        conn.pause_reading(BACKLOG)
        assert conn.read_paused and not transport.is_reading()
        conn.resume_reading(BACKLOG)
        assert not conn.read_paused and transport.is_reading()
        conn.resume_reading(BACKLOG)  # lifting what does not hold changes nothing
        assert transport.is_reading() and conn.paused_for == 0

    run(scenario)


def test_reading_resumes_only_when_no_reason_holds():
    async def scenario(conn, transport, peer):
        conn.pause_reading(BACKLOG)
        conn.pause_reading(WRITING)
        conn.resume_reading(BACKLOG)
        assert conn.read_paused and not transport.is_reading()  # WRITING still holds
        conn.resume_reading(BACKLOG)
        assert not transport.is_reading()
        conn.resume_reading(WRITING)
        assert transport.is_reading()

    run(scenario)


def test_stopped_is_never_lifted():
    async def scenario(conn, transport, peer):
        conn.pause_reading(BACKLOG)
        conn.stop_reading()
        conn.resume_reading(BACKLOG)
        conn.resume_writing()
        assert conn.stopped and conn.paused_for == STOPPED and not transport.is_reading()

    run(scenario)


def test_write_back_pressure_gives_one_drained_future_resolved_when_the_peer_reads():
    async def scenario(conn, transport, peer):
        transport.set_write_buffer_limits(high=4096, low=1024)
        peer.setblocking(False)
        assert conn.drained is None
        transport.write(b"x" * (4 << 20))  # more than the socket buffers: the rest stays in ours
        drained = conn.drained
        assert drained is not None and not drained.done()
        assert conn.paused_for == WRITING and not transport.is_reading()
        since = conn.write_paused_at
        conn.pause_writing()  # again, as the transport may: the same wait, the same start
        assert conn.drained is drained and conn.write_paused_at == since
        got = 0
        while not drained.done():
            try:
                got += len(peer.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert conn.drained is None and transport.is_reading() and got > 0

    run(scenario)


def test_a_lost_connection_releases_the_writer_and_stops_reading():
    async def scenario(conn, transport, peer):
        transport.set_write_buffer_limits(high=4096, low=1024)
        transport.write(b"x" * (4 << 20))
        drained = conn.drained
        assert drained is not None
        transport.abort()
        await asyncio.wait_for(drained, 5)
        assert conn.stopped and conn.transport is None and conn.drained is None
        conn.pause_reading(BACKLOG)  # no transport any more: recorded, nothing called
        assert not conn.read_paused

    run(scenario)
