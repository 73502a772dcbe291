"""The bytes between paho and the broker: outgoing PUBLISH properties encoded once, and
the broker socket as paho sees it (one large recv, one gathered send per loop iteration).
Used by bridge.py, which drives paho from the asyncio loop, and pump.py, which reads and writes
the socket there.
"""

from __future__ import annotations

import ssl
import struct
from typing import Callable

from paho.mqtt.properties import VariableByteIntegers

_RECV_SIZE = 65536


def _str16(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


class PublishProperties:
    """MQTT 5 PUBLISH properties, encoded once.

    paho's Properties checks every attribute assignment and walks all of its
    property names on each pack() (about 18 us an answer). For an outgoing
    PUBLISH paho only ever calls pack() (and str() when logging), so this
    stands in for it. Incoming messages keep paho's Properties class, filled
    by paho_fast.
    """

    __slots__ = ("_packed",)

    def __init__(
        self,
        *,
        correlation: bytes | None = None,
        response_topic: str | None = None,
        expiry_s: int | None = None,
        user: list[tuple[str, str]] | None = None,
    ) -> None:
        b = bytearray()
        if expiry_s is not None:
            b += b"\x02" + struct.pack("!I", expiry_s)  # Message Expiry Interval
        if response_topic is not None:
            b += b"\x08" + _str16(response_topic)
        if correlation is not None:
            b += b"\x09" + struct.pack("!H", len(correlation)) + correlation
        for k, v in user or ():
            b += b"\x26" + _str16(k) + _str16(v)  # User Property (may repeat)
        self._packed = bytes(VariableByteIntegers.encode(len(b))) + bytes(b)

    def pack(self) -> bytes:
        return self._packed

    def __repr__(self) -> str:
        return f"PublishProperties({self._packed!r})"


class BrokerSocket:
    """The broker connection as paho sees it.

    paho reads a packet with several recv() calls (1 byte of type, 1 per length
    byte, then the rest) and sends each packet with its own send(): here one
    recv of up to 64 KiB serves the small reads, and sends land in a buffer the
    pump (pump.py) writes with one send per loop iteration. pending() counts buffered
    bytes (and TLS's own), which the socket's readiness does not show.
    """

    __slots__ = ("sock", "wbuf", "error", "_rbuf", "_rpos", "_kick", "_tls")

    def __init__(self, sock, kick: Callable[[], None]) -> None:
        self.sock = sock
        self.wbuf = bytearray()
        # Set when a write failed: paho learns of it from its next read or write.
        self.error: OSError | None = None
        self._rbuf = b""
        self._rpos = 0
        self._kick = kick
        self._tls = isinstance(sock, ssl.SSLSocket)

    def recv(self, n: int) -> bytes:
        if self.error is not None:
            raise self.error
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = self.sock.recv(n if n > _RECV_SIZE else _RECV_SIZE)
            if len(buf) <= n:  # all of it wanted, or b"" at end of stream
                self._rbuf, self._rpos = b"", 0
                return buf
            self._rbuf, pos = buf, 0
        self._rpos = pos + n
        return buf[pos:pos + n]

    def pending(self) -> int:
        if self.error is not None:
            return 1
        n = len(self._rbuf) - self._rpos
        if self._tls:
            n += self.sock.pending()
        return n if n > 0 else 0

    def send(self, data) -> int:
        if self.error is not None:
            raise self.error
        if not self.wbuf:
            self._kick()
        self.wbuf += data
        return len(data)

    def flush(self) -> bool:
        """Write the buffer; False when the socket cannot take it all now."""
        w = self.wbuf
        while w:
            try:
                n = self.sock.send(w)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            except OSError as e:
                self.error = e
                w.clear()
                return True
            del w[:n]
        return True

    def close(self) -> None:
        if self.wbuf and self.error is None:
            try:
                self.sock.send(self.wbuf)  # best effort: usually a DISCONNECT
            except (OSError, ValueError):
                pass
        self.wbuf.clear()
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def __getattr__(self, name):
        return getattr(self.sock, name)


