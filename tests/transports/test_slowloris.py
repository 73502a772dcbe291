"""Slowloris against the real daemon under a low descriptor limit (issue 15,
item 3): more slow connections than the process has descriptors, each
trickling its request head slower than the minimum, reopened as the daemon
closes them. The daemon must keep answering a normal client throughout (its
connection cap keeps descriptors in reserve and makes room by closing the
oldest slow connection), close the slow ones by its minimum-progress rule,
and come back to its baseline descriptor count. Bounded to ~20 s.

Before the fix the daemon ran out of descriptors: accept() failed with
EMFILE and the normal client got no answer.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import threading
import time
from unittest import mock

import numpy as np
import orjson
import pytest

from daemon_proc import AgentProcess, copy_digits, digits_body
from http_wire import Reader, get, post

pytestmark = pytest.mark.timeout(120)

SOFT, HARD = 128, 256  # the daemon raises its soft limit to the hard one
SLOW = 300  # slow connections held open: more than HARD
HEADER_TIMEOUT = 2.0


class LimitedAgent(AgentProcess):
    """The daemon started under RLIMIT_NOFILE (soft, hard), as a unit with a
    low LimitNOFILE (or none, under a 1,024 default) would run."""

    def start(self, wait: bool = True, timeout: float = 60.0) -> "AgentProcess":
        real = subprocess.Popen

        def popen(*args, **kwargs):
            return real(*args, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD)), **kwargs)

        with mock.patch.object(subprocess, "Popen", popen):
            return super().start(wait, timeout)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


class Attacker(threading.Thread):
    """Holds ``SLOW`` connections, each sending its request head a byte per
    0.25 s (a head never completes, so the rule is the head timeout);
    connections the daemon closes are noted (status of its answer, or 0) and,
    while ``reopen`` is set, replaced, at most 50 a round."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.socks: list[socket.socket] = []
        self.outcomes: list[int] = []  # per connection the daemon closed: its answer's status, 0 = none
        self.opened = 0
        self.reopen = threading.Event()
        self.reopen.set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for s in list(self.socks):
                if select.select([s], [], [], 0)[0]:
                    self._closed(s)
                    continue
                try:
                    s.send(b"b")
                except OSError:
                    self._closed(s)
            if self.reopen.is_set():
                for _ in range(min(50, SLOW - len(self.socks))):
                    try:
                        s = connect(self.path)
                        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Drip: ")
                    except OSError:
                        break
                    self.socks.append(s)
                    self.opened += 1
            self.stop.wait(0.25)
        for s in self.socks:
            s.close()

    def _closed(self, s: socket.socket) -> None:
        self.socks.remove(s)
        try:
            s.settimeout(2)
            status = Reader(s).response()[0]
        except (OSError, EOFError):
            status = 0
        self.outcomes.append(status)
        s.close()


class Client(threading.Thread):
    """The normal client: a new connection every 50 ms, alternating an
    inference and a health check; records (status, seconds)."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.results: list[tuple[int, float]] = []
        self.stop = threading.Event()
        x = np.random.default_rng(3).random((1, 64), dtype=np.float32) * 16
        self.infer = post("/v2/models/digits/infer", orjson.dumps(digits_body(x)))

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                s = connect(self.path)
                s.sendall(self.infer if i % 2 else get("/v2/health/live"))
                status = Reader(s).response()[0]
                s.close()
            except (OSError, EOFError):
                status = 0
            self.results.append((status, time.monotonic() - t0))
            i += 1
            self.stop.wait(0.05)


@pytest.fixture
def agent():
    a = LimitedAgent(config={"server": {"limits": {
        "header_timeout_s": HEADER_TIMEOUT, "idle_timeout_s": HEADER_TIMEOUT, "body_timeout_s": HEADER_TIMEOUT,
        "reserved_fds": 64,
    }}})
    copy_digits(a.models_dir)
    a.start()
    yield a
    a.stop()
    a.cleanup()


def test_slowloris_under_a_low_descriptor_limit(agent):
    pid = agent.proc.pid
    limits = open(f"/proc/{pid}/limits").read()
    assert [ln.split()[3:5] for ln in limits.splitlines() if ln.startswith("Max open files")] == [[str(HARD), str(HARD)]]
    assert f"descriptor limit raised from {SOFT} to {HARD}" in agent.log()
    assert f"at most {HARD - 64} connections" in agent.log()
    path = str(agent.socket)
    warm = Client(path)  # whatever serving opens once (cache files) is in the baseline
    warm.start()
    time.sleep(0.5)
    warm.stop.set()
    warm.join(10)
    assert warm.results and all(st == 200 for st, _ in warm.results)
    baseline = fd_count(pid)

    attacker = Attacker(path)
    client = Client(path)
    attacker.start()
    try:
        deadline = time.monotonic() + 10
        while attacker.opened < SLOW + 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert attacker.opened >= SLOW + 100  # the attack is on: more than the daemon can hold
        client.start()
        time.sleep(2 * HEADER_TIMEOUT + 1)  # the normal client through timeouts and evictions
        client.stop.set()
        client.join(10)
        assert fd_count(pid) <= HARD

        # (i) the normal client got every answer, promptly.
        assert len(client.results) > 20
        assert all(st == 200 for st, _ in client.results), client.results
        assert max(t for _, t in client.results) < 2.0, client.results

        # (ii) no more reopening: every slow connection left is closed by the
        # daemon within the head timeout (plus sweeps), answered 408.
        attacker.reopen.clear()
        time.sleep(0.5)
        left = len(attacker.socks)
        before = len(attacker.outcomes)
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        while attacker.socks and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not attacker.socks, f"{len(attacker.socks)} slow connections still open"
        assert left > 0 and attacker.outcomes[before:] == [408] * (len(attacker.outcomes) - before)
        assert 503 in attacker.outcomes[:before]  # during the attack, the cap made room for the client
        assert set(attacker.outcomes) <= {408, 503}
    finally:
        attacker.stop.set()
        client.stop.set()
        attacker.join(10)
        client.join(10)

    # (iii) the daemon's descriptors come back to what it held before.
    deadline = time.monotonic() + 5
    while fd_count(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fd_count(pid) <= baseline, (fd_count(pid), baseline)
    s = connect(path)
    s.sendall(get("/v2/health/ready"))
    assert Reader(s).response()[0] == 200
    s.close()
