"""The disk tier's fault state: one transition table, and how a fault is named.

The tier is in exactly one state, and only ``SQLiteTier._transition`` moves
it, by looking up ``TRANSITIONS``:

  opening        the writer (or the constructor) is opening the file;
                 gets miss, puts are queued
  serving        reads and writes go to the file
  stepped_aside  a full disk, a read-only directory, a lock held too long or
                 an I/O error: every get misses and puts are dropped until
                 ``retry_at``, when the writer opens the file again
  rebuilding     the file is corrupt: the writer moves it aside as
                 ``<name>.corrupt-<ts>`` and starts an empty store
  closed         ``close()`` was called

A fault is either ``corrupt`` (the event CORRUPT) or one of the other kinds
``classify`` names (the event FAULT). A fresh file that fails too is the
disk's fault, not the file's: from ``rebuilding`` even CORRUPT steps aside,
so the tier never rebuilds in a loop.

An event the table does not list for the current state is stale: another
thread got there first (a reader meets a fault while the writer is already
rebuilding), and it is ignored. Nothing here raises to a caller.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import Enum
from typing import Dict, Optional, Tuple


class DiskState(str, Enum):
    OPENING = "opening"
    SERVING = "serving"
    STEPPED_ASIDE = "stepped_aside"
    REBUILDING = "rebuilding"
    CLOSED = "closed"


class DiskEvent(str, Enum):
    OPENED = "opened"      # the file opened and passed its checks
    FAULT = "fault"        # disk_full, readonly, locked, io
    CORRUPT = "corrupt"    # the file is not (or no longer) a sound SQLite database
    RETRY = "retry"        # stepped aside for retry_after_s: try the file again
    REPLACED = "replaced"  # the path names another file, or none: reopen, nothing is corrupt
    CLOSE = "close"


S, E = DiskState, DiskEvent
TRANSITIONS: Dict[Tuple[DiskState, DiskEvent], DiskState] = {
    (S.OPENING, E.OPENED): S.SERVING,
    (S.OPENING, E.FAULT): S.STEPPED_ASIDE,
    (S.OPENING, E.CORRUPT): S.REBUILDING,       # found at open: rebuild at once

    (S.SERVING, E.FAULT): S.STEPPED_ASIDE,
    (S.SERVING, E.CORRUPT): S.REBUILDING,       # a header probe, a check or a read found it
    (S.SERVING, E.REPLACED): S.OPENING,

    (S.STEPPED_ASIDE, E.RETRY): S.OPENING,

    (S.REBUILDING, E.OPENED): S.SERVING,
    (S.REBUILDING, E.FAULT): S.STEPPED_ASIDE,   # could not move the file aside, or open a new one
    (S.REBUILDING, E.CORRUPT): S.STEPPED_ASIDE,  # a fresh file corrupt: the disk's fault, not the file's
}
for _state in DiskState:
    TRANSITIONS[(_state, E.CLOSE)] = S.CLOSED
del _state


def next_state(state: DiskState, event: DiskEvent) -> Optional[DiskState]:
    """The state ``event`` leads to from ``state``; None when the table does
    not list the pair (a stale event: ignore it)."""
    return TRANSITIONS.get((state, event))


class Corrupt(Exception):
    """Raised inside the tier when the file no longer looks like SQLite."""


class Replaced(Exception):
    """The path now names another file (or none): reopen, nothing is corrupt."""


# sqlite3 primary result codes -> our fault kinds.
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_KINDS = {13: "disk_full", 8: "readonly", 14: "readonly", 3: "readonly", 23: "readonly", 5: "locked", 6: "locked"}


# Python < 3.11 has no sqlite_errorcode: SQLite's own messages for those codes.
_BY_MESSAGE = (
    ("database disk image is malformed", 11), ("file is not a database", 26), ("database or disk is full", 13),
    ("attempt to write a readonly database", 8), ("unable to open database file", 14), ("database is locked", 5),
    ("database table is locked", 6),
)


def _result_code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)  # py38: fallback (the messages below)
    if code is not None:
        return code & 0xFF
    text = str(exc)
    for message, c in _BY_MESSAGE:
        if message in text:
            return c
    return 0


def classify(exc: BaseException) -> str:
    """The fault kind of an exception met on the disk: corrupt, disk_full,
    readonly, locked or io (the label of ``edge_agent_cache_errors_total``)."""
    if isinstance(exc, Corrupt):
        return "corrupt"
    if isinstance(exc, sqlite3.Error):
        code = _result_code(exc)
        if code in _CORRUPT:
            return "corrupt"
        if code in _KINDS:
            return _KINDS[code]
        if type(exc) is sqlite3.DatabaseError:
            # Old builds lack error codes; a bare DatabaseError is corruption.
            return "corrupt"
        return "io"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "readonly"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "disk_full"
    return "io"


def event_for(kind: str) -> DiskEvent:
    return E.CORRUPT if kind == "corrupt" else E.FAULT
