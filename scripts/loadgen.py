#!/usr/bin/env python3
"""Closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending
the same pre-encoded request as soon as the previous answer arrives.

Written on raw asyncio protocols (uvloop) so the client costs little CPU: on a
2-core box client and server share the machine, and a heavy client would
measure itself. The same client drives every server compared in bench.py.

    python scripts/loadgen.py --unix /tmp/agent.sock --path /v2/models/digits/infer \
        --body models/digits/1/sample.json --concurrency 64 --duration 5

Prints one JSON object: requests, errors, throughput, p50/p99 latency (ms), and
requests_all_phases (warm-up included: what a server's CPU time over the whole
run is to be divided by).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path


class AnswerReader(asyncio.Protocol):
    """A keep-alive connection's bytes cut into HTTP/1.1 answers, in order: ``answer(status,
    buf, body_at, end)`` for each complete one (its body is ``buf[body_at:end]`` until it
    returns); it returns False to read no further. Shared with openloop.py."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = -1
        self.body_at = 0
        self.status = 0

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                head = answer_head(buf)
                if head is None:
                    return
                self.status, self.body_at, self.need = head
            if len(buf) < self.need:
                return
            end, self.need = self.need, -1
            go_on = self.answer(self.status, buf, self.body_at, end)
            del buf[:end]
            if not go_on:
                return

    def answer(self, status: int, buf: bytearray, body_at: int, end: int) -> bool:
        raise NotImplementedError


class _Conn(AnswerReader):
    def __init__(self, request, stats: dict, stop_at: float, done: asyncio.Future) -> None:
        super().__init__()
        # bytes, or a callable giving a new request each time (--vary)
        self.request = request
        self.stats = stats
        self.stop_at = stop_at
        self.done = done
        self.t0 = 0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        req = self.request
        if not isinstance(req, bytes):
            req = req()
        self.t0 = time.perf_counter_ns()
        self.transport.write(req)

    def answer(self, status: int, buf: bytearray, body_at: int, end: int) -> bool:
        now = time.perf_counter_ns()
        st = self.stats
        st["lat"].append(now - self.t0)
        if status == 200:
            st["ok"] += 1
        else:
            st["errors"] += 1
            st["codes"][status] = st["codes"].get(status, 0) + 1
        if time.monotonic() >= self.stop_at:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return False
        self._send()
        return True

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


def build_request(path: str, body: bytes, host: str = "localhost", content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def answer_head(buf: bytearray) -> tuple[int, int, int] | None:
    """The HTTP/1.1 answer at the front of ``buf``: (status, where its body starts, where it
    ends), or None while its head is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    # "\r\n" first: "inference-header-content-length:" (the v2 binary
    # extension) also ends in "content-length:".
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        i += 17
        j = head.find(b"\r\n", i)
        length = int(head[i : j if j > 0 else None])
    else:
        length = 0
    return int(head[9:12]), end + 4, end + 4 + length


def _varying(path: str, body: bytes):
    """Requests whose first input value is a counter: no two are alike, so a
    response cache never hits (for measuring misses)."""
    i = body.index(b'"data"')
    i = body.index(b"[", i) + 1
    while body[i : i + 1] == b"[":
        i += 1
    j = i
    while body[j : j + 1] not in (b",", b"]"):
        j += 1
    head, tail = body[:i], body[j:]
    # The values are counter * 1e-6, which FP32 keeps apart below 16: 16 M
    # distinct inputs. Each run starts at a random place, so a run does not
    # replay an earlier run's inputs (which a cache would answer): two runs
    # of 100k requests overlap with a chance of about 1 %.
    start = random.randrange(1, 15_500_000)
    counter = iter(range(start, 1 << 62))
    return lambda: build_request(path, head + str(next(counter) * 1e-6).encode() + tail)


def _with_ids(path: str, body: bytes):
    """The same input every time, each request with its own "id": the
    response cache answers all of them, but no two requests are the same
    bytes, so the memo of encoded answers never does (hits through the full path)."""
    assert body.lstrip().startswith(b"{")
    head = body[: body.index(b"{") + 1]
    tail = body[len(head):]
    counter = iter(range(1 << 62))
    return lambda: build_request(path, head + b'"id":"%d",' % next(counter) + tail)


async def run(args) -> dict:
    loop = asyncio.get_running_loop()
    body = Path(args.body).read_bytes()
    request = build_request(args.path, body)
    if args.vary:
        request = _varying(args.path, body)
    elif args.vary_id:
        request = _with_ids(args.path, body)
    stats = {"ok": 0, "errors": 0, "codes": {}, "lat": []}
    answered = 0  # in all phases
    # Warm-up: a short run whose figures are thrown away.
    for phase, secs in (("warmup", args.warmup), ("measure", args.duration)):
        if secs <= 0:
            continue
        stats = {"ok": 0, "errors": 0, "codes": {}, "lat": []}
        stop_at = time.monotonic() + secs
        futures = []
        t0 = time.perf_counter()
        for _ in range(args.concurrency):
            done = loop.create_future()
            factory = lambda d=done: _Conn(request, stats, stop_at, d)  # noqa: E731
            if args.unix:
                await loop.create_unix_connection(factory, args.unix)
            else:
                await loop.create_connection(factory, args.host, args.port)
            futures.append(done)
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - t0
        answered += stats["ok"] + stats["errors"]
    lat = sorted(stats["lat"])
    n = len(lat)

    def pct(p: float) -> float:
        return round(lat[min(n - 1, int(p * n))] / 1e6, 3) if n else 0.0

    return {
        "concurrency": args.concurrency,
        "requests": n,
        "ok": stats["ok"],
        "errors": stats["errors"],
        "error_codes": stats["codes"],
        "seconds": round(elapsed, 3),
        "throughput": round(n / elapsed, 1),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "requests_all_phases": answered,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unix", help="Unix socket path")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--path", default="/v2/models/digits/infer")
    ap.add_argument("--body", required=True, help="file holding the request body")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--vary", action="store_true", help="make every request's input unique (cache misses)")
    ap.add_argument("--vary-id", action="store_true", help="same input, a unique request id each time (cache hits, never memo hits)")
    args = ap.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
