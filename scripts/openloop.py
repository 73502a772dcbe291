"""A cheap HTTP/1.1 load generator for the overload test: closed loop (to
measure what the daemon can answer) or open loop (a fixed offered rate,
whatever the daemon does), over many keep-alive connections on a Unix socket.

Open loop: requests fall due on a fixed schedule and go out on any connection
with fewer than ``window`` answers outstanding (pipelined behind them). When
every connection is full, due requests wait here, on the client, and go out
as answers free a place: the daemon is still offered the full rate (it gets
requests exactly as fast as it answers, up to the schedule), but no more than
``connections x window`` requests are ever inside the daemon's socket
buffers. That bound matters: bytes the daemon has not read yet are invisible
to it, so a client that pours an unbounded backlog into the socket measures
its own buffers, not the daemon. Each request is timed from the moment it
was written to the moment its whole answer was read; how long due requests
waited here is reported beside.

Raw asyncio protocols on uvloop, one pre-encoded request, answers framed by
a few ``bytes.find`` calls (loadgen.py's ``AnswerReader``, as in the closed-loop
generator of the benchmarks): a few µs per request, so the generator does not
take the CPU the daemon needs.

    python scripts/openloop.py --unix /tmp/agent.sock --body body.json \\
        --mode open --rate 20000 --duration 3 --connections 256 --window 4

Prints one JSON object: ``sent``, ``answered``, ``unanswered``, ``seconds``,
``client_wait_ms_max`` and ``answers``, a list of [latency_ms, status, code]
(code "" for 200), one per answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

from loadgen import AnswerReader, build_request  # scripts/loadgen.py: this file's folder is on sys.path

_now = time.monotonic


class _Conn(AnswerReader):
    """One connection: answers come back in request order (HTTP/1.1), so
    each answer belongs to the oldest send time still waiting."""

    def __init__(self, gen: "Generator") -> None:
        super().__init__()
        self.gen = gen
        self.sent: deque[float] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self) -> None:
        gen = self.gen
        kind = gen.n_sent % len(gen.requests)
        self.sent.append((_now(), kind))
        self.transport.write(gen.requests[kind])

    def answer(self, status: int, buf: bytearray, body_at: int, end: int) -> bool:
        code = ""
        if status != 200:
            body = bytes(buf[body_at:end])
            k = body.find(b'"code":"')
            if k >= 0:
                code = body[k + 8 : body.index(b'"', k + 8)].decode()
        t, kind = self.sent.popleft()
        self.gen.answered(self, _now() - t, status, code, kind)
        return True

    def connection_lost(self, exc) -> None:
        self.gen.lost(self)


class Generator:
    def __init__(self, unix: str, requests: list[bytes], connections: int, window: int) -> None:
        self.unix = unix
        self.requests = requests  # sent in turn
        self.n = connections
        self.window = window
        self.conns: list[_Conn] = []
        self.free: deque[_Conn] = deque()  # one entry per free place in a window
        self.waiting: deque[float] = deque()  # due times of requests not sent yet
        self.answers: list[tuple[float, int, str, int, float]] = []
        self.n_sent = 0
        self.n_due = 0
        self.outstanding = 0
        self.lost_outstanding = 0
        self.client_wait_max = 0.0
        self.not_sent = 0
        self.own_lag_max = 0.0  # how late this generator's own loop ran (its timings are that coarse)
        self.endless = False  # closed loop: a request is always due
        self.idle: asyncio.Future | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            _, c = await loop.create_unix_connection(lambda: _Conn(self), self.unix)
            self.conns.append(c)
        self.reset()

    def reset(self) -> None:
        """Forget what was sent and answered (all of it was)."""
        self.answers.clear()
        self.n_sent = self.n_due = 0
        self.free = deque(c for _ in range(self.window) for c in self.conns)

    def _send(self, conn: _Conn, due: float | None) -> None:
        if due is not None:
            wait = _now() - due
            if wait > self.client_wait_max:
                self.client_wait_max = wait
        conn.send()
        self.n_sent += 1
        self.outstanding += 1

    def answered(self, conn: _Conn, latency: float, status: int, code: str, kind: int) -> None:
        self.answers.append((latency, status, code, kind, _now()))
        self.outstanding -= 1
        if self.endless:
            self._send(conn, None)
        elif self.waiting:
            self._send(conn, self.waiting.popleft())
        else:
            self.free.append(conn)
            self._check_idle()

    def lost(self, conn: _Conn) -> None:
        if conn.sent:
            self.lost_outstanding += len(conn.sent)
            self.outstanding -= len(conn.sent)
            conn.sent.clear()
            self._check_idle()

    def _check_idle(self) -> None:
        if not self.outstanding and not self.waiting and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    async def closed_loop(self, seconds: float) -> None:
        """Each connection sends its next request when its answer is read."""
        self.endless = True
        for _ in range(self.window):
            for c in self.conns:
                self._send(c, None)
        await asyncio.sleep(seconds)
        self.endless = False
        await self._settle(30)

    async def open_loop(self, rate: float, seconds: float, tick: float = 0.001) -> None:
        """Requests fall due at ``rate`` a second for ``seconds``."""
        start = _now()
        end = start + seconds
        while True:
            now = _now()
            due = int((min(now, end) - start) * rate) - self.n_due
            for k in range(due):
                t = start + (self.n_due + k) / rate
                if self.free:
                    self._send(self.free.popleft(), t)
                else:
                    self.waiting.append(t)
            self.n_due += max(due, 0)
            if now >= end:
                # Due requests the daemon had no room for are dropped, never
                # sent: the run ends with the schedule, not with the backlog.
                self.not_sent = len(self.waiting)
                self.waiting.clear()
                break
            await asyncio.sleep(tick)
            gap = _now() - now - tick
            if gap > self.own_lag_max:
                self.own_lag_max = gap
        await self._settle(60)

    async def _settle(self, timeout: float) -> None:
        if self.outstanding or self.waiting:
            self.idle = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.idle, timeout)
            except asyncio.TimeoutError:
                pass
            self.idle = None

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()


async def run(args) -> dict:
    requests = [build_request(args.path, Path(b).read_bytes()) for b in args.body]
    gen = Generator(args.unix, requests, args.connections, args.window)
    await gen.connect()
    # One request per connection first: a connection the daemon has not
    # accepted yet holds its bytes where no turn of the loop sees them.
    await gen.closed_loop(0)
    gen.reset()
    t0 = _now()
    if args.mode == "closed":
        await gen.closed_loop(args.duration)
    else:
        await gen.open_loop(args.rate, args.duration)
    seconds = _now() - t0
    gen.close()
    return {
        "due": gen.n_due,
        "sent": gen.n_sent,
        "not_sent": gen.not_sent,
        "answered": len(gen.answers),
        "unanswered": gen.outstanding + len(gen.waiting),
        "lost": gen.lost_outstanding,
        "seconds": round(seconds, 3),
        "client_wait_ms_max": round(gen.client_wait_max * 1000, 1),
        "own_lag_ms_max": round(gen.own_lag_max * 1000, 1),
        "answers": [[round(lat * 1000, 3), st, code, kind, round((t - t0) * 1000, 1)] for lat, st, code, kind, t in gen.answers],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unix", required=True)
    ap.add_argument("--path", default="/v2/models/digits/infer")
    ap.add_argument("--body", action="append", required=True, help="file holding a request body; several: sent in turn")
    ap.add_argument("--mode", choices=("open", "closed"), default="open")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--window", type=int, default=1, help="requests outstanding per connection at most (closed loop: always)")
    args = ap.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    # The result runs to hundreds of KB; stdout may have been left
    # non-blocking (an event loop's file descriptors), where one write stops
    # at what the pipe holds (seen: cut at 128 KiB). Write it whole, blocking.
    data = (json.dumps(result) + "\n").encode()
    os.set_blocking(sys.stdout.fileno(), True)
    view = memoryview(data)
    while view:
        view = view[os.write(sys.stdout.fileno(), view):]


if __name__ == "__main__":
    main()
