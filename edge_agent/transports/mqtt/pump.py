"""The open broker socket on the asyncio loop: when paho reads and when it writes.

``PahoBridge`` (bridge.py) owns the connection's life: connecting, the session's events,
reconnecting with backoff, stopping. This owns its bytes while a socket is open, with no
paho thread:

- reading: the loop watches the socket and calls paho's ``loop_read`` when it is readable,
  then again while bytes are already buffered (ours or TLS's), since those never wake
  the loop again;
- writing: every packet paho queues in one loop iteration goes out with one
  ``loop_write`` and one gathered ``send`` (``BrokerSocket`` in wire.py), with a writer
  watch only while the kernel's buffer is full.

paho calls ``socket_open`` / ``socket_close`` / ``want_write`` (its ``on_socket_*``
callbacks, set by the constructor) and ``BrokerSocket`` calls ``kick``; the loop calls
``on_readable`` and ``flush``. All on the loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

import paho.mqtt.client as paho

from .wire import BrokerSocket

log = logging.getLogger(__name__)


class SocketPump:
    """Reads and writes one paho client's socket from the running loop.

    ``on_closed`` is called (soon, on the loop) after paho closed the socket, so the
    bridge can end the session once paho's on_disconnect has given the reason.
    """

    def __init__(self, client: paho.Client, name: str, on_closed: Callable[[], None]) -> None:
        self.client = client
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None  # the running loop, set by the bridge's start()
        self.sock: BrokerSocket | None = None
        self._on_closed = on_closed
        self._writer_on = False
        self._flush_scheduled = False
        client.on_socket_open = self.socket_open
        client.on_socket_close = self.socket_close
        client.on_socket_register_write = self.want_write

    # --- paho's socket callbacks (on the loop thread, inside loop_read/loop_write) ---

    def socket_open(self, client, userdata, sock: BrokerSocket) -> None:
        # Without it, small QoS 1 packets wait for Nagle + delayed ACK (~40 ms a hop).
        try:
            sock.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.sock = sock
        self._writer_on = False
        self.loop.add_reader(sock.fileno(), self.on_readable)

    def socket_close(self, client, userdata, sock: BrokerSocket) -> None:
        if sock is not self.sock or self.loop.is_closed():
            return  # (paho's __del__ closes its socket too, possibly after the loop)
        fd = sock.fileno()
        self.loop.remove_reader(fd)
        if self._writer_on:
            self.loop.remove_writer(fd)
            self._writer_on = False
        self.sock = None
        # After paho's on_disconnect, which may come just after this, has given the reason.
        self.loop.call_soon(self._on_closed)

    def want_write(self, client, userdata, sock) -> None:
        self.kick()

    # --- socket events -------------------------------------------------------------

    def on_readable(self) -> None:
        s, c = self.sock, self.client
        try:
            rc = c.loop_read()
            # Bytes already read into our (or TLS's) buffer never wake the loop again.
            while rc == 0 and s is self.sock and s.pending():
                rc = c.loop_read()
        except Exception:
            log.exception("%s: reading from the broker failed; dropping the connection", self.name)
            if s is not None and s is self.sock:
                s.error = ConnectionAbortedError("read handler failed")
                c.loop_read()  # paho closes the connection on the error

    def kick(self) -> None:
        # Every packet queued in this loop iteration goes out in one send.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        s = self.sock
        if s is None:
            self._flush_scheduled = False
            return
        self.client.loop_write()  # paho's queue -> s.wbuf; never blocks
        self._flush_scheduled = False
        if s is not self.sock:
            return  # that was a DISCONNECT: paho closed the socket
        if s.flush():
            if self._writer_on:
                self.loop.remove_writer(s.fileno())
                self._writer_on = False
        elif not self._writer_on:
            self.loop.add_writer(s.fileno(), self.flush)
            self._writer_on = True
        if s.error is not None:
            self.on_readable()  # paho finds the broken socket on its read and closes it

    def drop(self) -> None:
        """Close the connection now, as a broken socket would (paho closes it on the error)."""
        s = self.sock
        if s is not None:
            s.error = ConnectionAbortedError("connection dropped")
            self.on_readable()
