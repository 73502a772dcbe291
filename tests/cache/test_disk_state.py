"""The disk tier's fault states (cache/disk_state.py): the transition table,
how faults are named, and the states a real tier on real SQLite files goes
through."""

from __future__ import annotations

import errno
import os
import sqlite3
import time

import pytest
from cache_helpers import FakeClock

from edge_agent.cache.disk_state import TRANSITIONS, Corrupt, DiskEvent, DiskState, classify, next_state
from edge_agent.cache.response_cache import DB_NAME
from edge_agent.cache.sqlite_tier import SQLiteTier

S, E = DiskState, DiskEvent


@pytest.mark.parametrize(
    "state, event, after",
    [
        (S.OPENING, E.OPENED, S.SERVING),
        (S.OPENING, E.FAULT, S.STEPPED_ASIDE),
        (S.OPENING, E.CORRUPT, S.REBUILDING),
        (S.SERVING, E.FAULT, S.STEPPED_ASIDE),
        (S.SERVING, E.CORRUPT, S.REBUILDING),
        (S.SERVING, E.REPLACED, S.OPENING),
        (S.STEPPED_ASIDE, E.RETRY, S.OPENING),
        (S.REBUILDING, E.OPENED, S.SERVING),
        (S.REBUILDING, E.FAULT, S.STEPPED_ASIDE),
        # A fresh file corrupt too: the disk's fault; never a rebuild loop.
        (S.REBUILDING, E.CORRUPT, S.STEPPED_ASIDE),
    ],
)
def test_each_transition_of_the_table(state, event, after):
    assert next_state(state, event) is after


def test_close_ends_every_state_and_nothing_leaves_closed():
    for state in DiskState:
        assert next_state(state, E.CLOSE) is S.CLOSED
    assert [e for e in DiskEvent if next_state(S.CLOSED, e) not in (None, S.CLOSED)] == []


def test_stale_events_are_not_transitions():
    # A reader meeting a fault while the writer already rebuilds or has
    # stepped aside changes nothing; only the retry leaves stepping aside.
    assert next_state(S.REBUILDING, E.RETRY) is None
    assert [e for e in DiskEvent if next_state(S.STEPPED_ASIDE, e) is not None] == [E.RETRY, E.CLOSE]
    assert next_state(S.SERVING, E.OPENED) is None and next_state(S.OPENING, E.RETRY) is None


def test_every_state_but_closed_can_reach_serving():
    reach = {S.SERVING}
    while True:
        more = {a for (a, _), b in TRANSITIONS.items() if b in reach} - reach
        if not more:
            break
        reach |= more
    assert reach == set(DiskState) - {S.CLOSED}


def sqlite_error(code: int, cls=sqlite3.OperationalError) -> sqlite3.Error:
    e = cls("x")
    e.sqlite_errorcode = code  # py38: fallback (set by hand: an exception takes any attribute)
    return e


@pytest.mark.parametrize(
    "exc, kind",
    [
        (Corrupt("header"), "corrupt"),
        (sqlite_error(11, sqlite3.DatabaseError), "corrupt"),
        (sqlite_error(26, sqlite3.DatabaseError), "corrupt"),
        (sqlite3.DatabaseError("no code"), "corrupt"),
        (sqlite_error(13), "disk_full"),
        (sqlite_error(8), "readonly"),
        (sqlite_error(5), "locked"),
        (sqlite_error(10), "io"),
        (OSError(errno.EROFS, "ro"), "readonly"),
        (OSError(errno.ENOSPC, "full"), "disk_full"),
        (OSError(errno.EIO, "io"), "io"),
    ],
)
def test_faults_are_named_by_kind(exc, kind):
    assert classify(exc) == kind


# --- a real tier --------------------------------------------------------------


def test_a_tier_serves_after_opening_and_is_closed_after_close(tmp_path):
    tier = SQLiteTier(tmp_path / DB_NAME, 1 << 20, clock=FakeClock())
    assert tier.state is S.SERVING and tier.stats()["state"] == "serving"
    tier.close()
    assert tier.state is S.CLOSED and tier.get(b"k" * 32) is None


def test_a_lock_steps_aside_and_the_retry_brings_it_back(tmp_path):
    tier = SQLiteTier(tmp_path / DB_NAME, 1 << 20, clock=FakeClock(), retry_after_s=0.05, busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    tier.put(b"a" * 32, b"value", 2e9)
    tier.flush()
    assert tier.state is S.STEPPED_ASIDE and tier.stats()["fault"] == "locked"
    other.execute("ROLLBACK")
    other.close()
    time.sleep(0.1)
    tier.put(b"b" * 32, b"value", 2e9)  # past retry_at: queued, and the writer retries first
    tier.flush()
    assert tier.state is S.SERVING and tier.stats()["fault"] is None
    assert tier.get(b"b" * 32).value == b"value"
    tier.close()


def test_garbage_over_the_file_at_open_is_rebuilt_before_the_tier_serves(tmp_path):
    db = tmp_path / DB_NAME
    db.write_bytes(os.urandom(8192))
    tier = SQLiteTier(db, 1 << 20, clock=FakeClock())
    assert tier.state is S.SERVING and tier.rebuilds == 1
    assert tier.stats()["errors"] == {"corrupt": 1}
    tier.close()


@pytest.mark.parametrize("message, kind", [
    ("database or disk is full", "disk_full"),
    ("attempt to write a readonly database", "readonly"),
    ("database is locked", "locked"),
    ("file is not a database", "corrupt"),
    ("database disk image is malformed", "corrupt"),
    ("disk I/O error", "io"),
])
def test_errors_without_a_result_code_are_classified_by_sqlites_message(message, kind):
    """Python < 3.11 (the JetPack 5 stack) has no sqlite_errorcode; an error
    raised from Python has none on any version: SQLite's message decides."""
    exc = sqlite3.OperationalError(message)
    assert getattr(exc, "sqlite_errorcode", None) is None  # py38: fallback (asserts its absence)
    assert classify(exc) == kind
