"""systemd notify protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET.

Small enough to write by hand, which keeps libsystemd off the dependency list
(and works the same in tests, where a plain datagram socket stands in for
systemd as PID 1).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edge_agent.sdnotify")


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.addr = ("\0" + addr[1:]) if addr and addr.startswith("@") else addr
        self.sock: socket.socket | None = None
        if self.addr:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        # WATCHDOG_PID, when set, names the process the watchdog is meant for.
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() and (not pid or pid == str(os.getpid())) else None

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, state: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto(state.encode(), self.addr)
            return True
        except OSError as e:
            log.warning("sd_notify %r failed: %s", state, e)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")
