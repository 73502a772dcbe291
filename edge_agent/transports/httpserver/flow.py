"""Flow control of one connection: when to stop reading, when to wait
before writing more.

Reading pauses for any of three reasons, kept apart so that lifting one
cannot resume reading while another still holds:

- ``STOPPED``: nothing more is parsed on this connection (a refused
  request, an upgrade, the client's EOF, the connection lost). Answers
  already owed still go out, the last with ``Connection: close``. Never
  lifted.
- ``BACKLOG``: ``MAX_PIPELINED`` parsed requests wait for their turn; a
  client cannot queue unbounded work in memory (what one read already holds
  is still parsed, so one read buffer bounds the excess).
- ``WRITING``: the transport's write buffer is above its high-water mark
  (asyncio calls ``pause_writing``): the client reads its answers slower
  than it sends requests. ``drained`` is then a future that resolves when
  the buffer drains (or the connection is lost); answering waits on it
  instead of buffering every pipelined answer in memory.

Pausing for a reason that already holds, or lifting one that does not, does
nothing, and the transport is paused or resumed only when the set of
reasons goes from empty to not or back: every call is idempotent, so the
protocol calls them wherever its state changes without bookkeeping of its
own. ``read_paused`` is True while the transport is paused by us: the
limits' sweep does not time a client for a head or body it is not being
allowed to send.

``FlowControl`` is a base of ``HttpProtocol`` (asyncio calls
``pause_writing`` and ``resume_writing`` on the protocol itself), not an
object beside it: its state is read on every request, one attribute away.
"""

from __future__ import annotations

import asyncio

STOPPED, BACKLOG, WRITING = 1, 2, 4

# Pipelined requests parsed ahead of the one being answered; past this,
# reading pauses (BACKLOG).
MAX_PIPELINED = 16


class FlowControl:
    """Read/write pause state of a connection over ``transport`` (None once
    the connection is lost)."""

    __slots__ = ("transport", "paused_for", "read_paused", "stopped", "drained", "write_paused_at")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused_for = 0  # STOPPED | BACKLOG | WRITING
        self.read_paused = False  # the transport is paused by us
        self.stopped = False  # STOPPED holds: read nothing more, close after the answers owed
        # Set while the write buffer is above its high-water mark; resolves
        # when it drains (or the connection is lost).
        self.drained: asyncio.Future | None = None
        self.write_paused_at = 0.0  # loop time writing paused (the send timeout counts from it)

    # --- reading --------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        self.paused_for |= reason
        if not self.read_paused and self.transport is not None:
            self.transport.pause_reading()
            self.read_paused = True

    def resume_reading(self, reason: int) -> None:
        self.paused_for &= ~reason
        if self.read_paused and not self.paused_for and self.transport is not None:
            self.transport.resume_reading()
            self.read_paused = False

    def stop_reading(self) -> None:
        """Read nothing more on this connection, for good."""
        self.stopped = True
        self.pause_reading(STOPPED)

    # --- writing (asyncio.Protocol's flow-control callbacks) ---------------------

    def pause_writing(self) -> None:
        if self.drained is None:
            loop = asyncio.get_running_loop()
            self.drained = loop.create_future()
            self.write_paused_at = loop.time()
        self.pause_reading(WRITING)

    def resume_writing(self) -> None:
        self._wake_writer()
        self.resume_reading(WRITING)

    def _wake_writer(self) -> None:
        d, self.drained = self.drained, None
        if d is not None and not d.done():
            d.set_result(None)

    def flow_lost(self) -> None:
        """The connection is gone: nothing to read, and whoever waits to
        write must stop waiting."""
        self.stopped = True
        self.paused_for |= STOPPED
        self.transport = None
        self.read_paused = False
        self._wake_writer()
