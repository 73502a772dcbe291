#!/usr/bin/env python3
"""edge-agent soak: a bounded mixed load for minutes, watching the daemon's
memory, descriptors and threads for growth (issue 15).

A leak shows as growth over time under a steady load, which no short test
sees. The load mixes what a fielded unit meets: socket inference of the
digits model on keep-alive connections (cache hits from a small pool of
images, misses from random ones, some with the cache bypassed, some in the
binary form), connection churn (a connection per request, some dropped
before the answer or mid-request), malformed and hostile requests (bad JSON,
wrong shapes, NaN, the 113-byte huge-shape request, 1,000-deep nesting,
broken HTTP), slow clients (a request trickled a byte at a time, a pipeline
read slowly), and MQTT requests when ``--mqtt HOST:PORT`` is given. It is
paced (``--rate``), not a throughput test: on a shared 2-core machine the
point is time, not speed.

Every ``--interval`` seconds it prints the daemon's RSS, open descriptors
and threads (from /proc) and the answers so far. The first sample after
``--warmup`` is the baseline; the run fails (exit 1) when the last sample
under load is above it by more than ``--max-rss-mb`` / ``--max-fds`` /
``--max-threads``, when any answer is a 5xx, when an MQTT request goes
unanswered, or when the daemon dies. The daemon it starts itself keeps its
cache tiers small (4 MiB memory, 1 MiB memo) so that they are full before the
baseline: what grows after it is not a cache filling up.

    python scripts/soak.py                         # 10 minutes, own daemon
    python scripts/soak.py --seconds 20 --interval 5 --warmup 5
    python scripts/soak.py --socket /run/edge-agent/agent.sock --minutes 60
    python scripts/soak.py --mqtt 127.0.0.1:1883   # own daemon also serves MQTT there

Not run in CI (tests/scripts/test_soak_script.py runs it for seconds so it cannot rot);
figures of a 10-minute run: docs/BENCHMARKS.md, "Soak".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import orjson  # noqa: E402

INFER = b"/v2/models/digits/infer"
HL = b"Inference-Header-Content-Length"


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


# --- the daemon's figures -----------------------------------------------------------


def daemon_pid(path: str) -> int:
    """The pid of the process serving a Unix socket (SO_PEERCRED)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return pid
    finally:
        s.close()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def figures(pid: int) -> dict:
    """RSS (kB), open descriptors and threads of ``pid``."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    return out


# --- load ---------------------------------------------------------------------------


class Tally:
    """Outcomes by load kind, shared by the workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = {}

    def add(self, kind: str, outcome: str) -> None:
        with self.lock:
            self.counts.setdefault(kind, Counter())[outcome] += 1

    def snapshot(self) -> dict[str, Counter]:
        with self.lock:
            return {k: Counter(v) for k, v in self.counts.items()}


def outcome(status: int) -> str:
    return "ok" if status < 400 else "4xx" if status < 500 else "5xx"


def request(path: bytes, body: bytes = b"", method: bytes = b"POST", extra: bytes = b"") -> bytes:
    return (b"%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (method, path, len(body), extra)) + body


def take_answer(buf: bytearray) -> int | None:
    """The status of the first whole HTTP answer in ``buf`` (Content-Length
    framed, as the daemon sends them), removed from it; None if not whole yet."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    del buf[: end + 4 + length]
    return int(head.split(b" ", 2)[1])


def read_answer(sock: socket.socket, buf: bytearray) -> int:
    """Read one answer from ``sock``; returns its status. ``buf`` keeps what is left over."""
    while True:
        status = take_answer(buf)
        if status is not None:
            return status
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a whole answer")
        buf += data


def digits_doc(x: list[float], binary: bool = False, cache: bool = True) -> tuple[bytes, bytes]:
    """(body, extra header lines) of a digits request."""
    params = {} if cache else {"parameters": {"cache": False}}
    if not binary:
        return orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}], **params}), b""
    blob = struct.pack("<64f", *x)
    head = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(blob)}}], **params})
    return head + blob, HL + b": %d\r\n" % len(head)


def hostile_requests() -> list[tuple[bytes, bool]]:
    """(raw request, whether the daemon closes after answering it)."""
    nan = struct.pack("<64f", *([1.0] * 63 + [float("nan")]))
    nan_head = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 256}}]})
    huge = orjson.dumps({"inputs": [{"name": "input", "shape": [200_000_000], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 0}}]})
    deep = b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"BYTES","data":%s}]}' % (b"[" * 1000 + b'"a"' + b"]" * 1000)
    return [
        (request(INFER, b"{not json"), False),
        (request(INFER, orjson.dumps({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}]})), False),
        (request(INFER, orjson.dumps({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [0.0]}]})), False),
        (request(INFER, nan_head + nan, extra=HL + b": %d\r\n" % len(nan_head)), False),
        (request(INFER, huge, extra=HL + b": %d\r\n" % len(huge)), False),
        (request(INFER, deep), False),
        (request(b"/v2/models/nope/infer", b"{}"), False),
        (request(b"/v2/nothing", method=b"GET"), False),
        (b"GARBAGE / HTTP/1.1\r\n\r\n", True),
        (b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", True),
    ]


class Load:
    def __init__(self, args, path: str, tally: Tally) -> None:
        self.args = args
        self.path = path
        self.tally = tally
        self.stop = threading.Event()
        self.rng = random.Random(1)
        self.pool = [[float(self.rng.randint(0, 16)) for _ in range(64)] for _ in range(32)]  # cache hits

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(15)
        s.connect(self.path)
        return s

    def paced(self, per_s: float):
        """Yield at most ``per_s`` times a second until stopped."""
        period = 1.0 / per_s if per_s > 0 else 0
        nxt = time.monotonic()
        while not self.stop.is_set():
            yield
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                nxt = time.monotonic()

    def keep_alive(self, kind: str, rate: float, next_request, judge) -> None:
        """Paced requests over one keep-alive connection, opened again after an error.
        ``next_request() -> (bytes, alone)``: alone, the request goes on a connection of its
        own, which the server closes after answering; ``judge(status)`` names the outcome."""
        sock, buf = None, bytearray()
        for _ in self.paced(rate):
            raw, alone = next_request()
            try:
                if sock is None or alone:
                    if sock is not None:
                        sock.close()
                    sock, buf = self.connect(), bytearray()
                sock.sendall(raw)
                self.tally.add(kind, judge(read_answer(sock, buf)))
                if alone:
                    sock.close()
                    sock = None
            except (OSError, ValueError, IndexError) as e:
                self.tally.add(kind, f"error:{type(e).__name__}")
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def infer(self, seed: int) -> None:
        """Keep-alive inference: hits, misses, cache bypass, JSON and binary."""
        rng = random.Random(seed)

        def next_request():
            r = rng.random()
            x = rng.choice(self.pool) if r < 0.5 else [float(rng.randint(0, 16)) for _ in range(64)]
            body, extra = digits_doc(x, binary=rng.random() < 0.3, cache=r < 0.9)
            return request(INFER, body, extra=extra), False

        self.keep_alive("infer", self.args.rate / self.args.clients, next_request, outcome)

    def churn(self) -> None:
        """A connection per request; some dropped before the answer or mid-request."""
        rng = random.Random(2)
        for _ in self.paced(self.args.rate / 10):
            body, extra = digits_doc(rng.choice(self.pool))
            raw = request(INFER, body, extra=extra)
            way = rng.random()
            try:
                s = self.connect()
                try:
                    if way < 0.2:
                        s.sendall(raw[: rng.randint(1, len(raw) - 1)])  # gone mid-request
                        self.tally.add("churn", "dropped")
                    elif way < 0.4:
                        s.sendall(raw)  # gone before the answer
                        self.tally.add("churn", "dropped")
                    else:
                        s.sendall(raw)
                        self.tally.add("churn", outcome(read_answer(s, bytearray())))
                finally:
                    s.close()
            except (OSError, ValueError, IndexError) as e:
                self.tally.add("churn", f"error:{type(e).__name__}")

    def hostile(self) -> None:
        """Malformed and hostile requests: each must get its 4xx."""
        rng = random.Random(3)
        bad = hostile_requests()
        self.keep_alive("hostile", self.args.rate / 10, lambda: rng.choice(bad),
                        lambda status: "4xx" if 400 <= status < 500 else outcome(status) if status >= 500 else "unexpected-2xx")

    def slow(self, seed: int) -> None:
        """Slow clients: a request trickled a few bytes at a time, or 32
        pipelined requests read a little at a time."""
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                s = self.connect()
            except OSError as e:
                self.tally.add("slow", f"error:{type(e).__name__}")
                self.stop.wait(1)
                continue
            try:
                body, extra = digits_doc(rng.choice(self.pool))
                raw = request(INFER, body, extra=extra)
                if rng.random() < 0.5:
                    for i in range(0, len(raw), 16):
                        if self.stop.wait(self.args.slow_interval):
                            break
                        s.sendall(raw[i : i + 16])
                    else:
                        self.tally.add("slow", outcome(read_answer(s, bytearray())))
                else:
                    s.sendall(raw * 32)
                    buf, got = bytearray(), 0
                    while got < 32 and not self.stop.wait(self.args.slow_interval):
                        data = s.recv(512)
                        if not data:
                            raise ConnectionError("closed")
                        buf += data
                        status = take_answer(buf)
                        while status is not None:
                            self.tally.add("slow", outcome(status))
                            got += 1
                            status = take_answer(buf)
            except (OSError, ValueError, IndexError) as e:
                # The daemon may cut a client that is too slow: counted, not a failure.
                self.tally.add("slow", f"cut:{type(e).__name__}")
            finally:
                s.close()

    def mqtt(self, target: str) -> None:
        """MQTT requests (valid and malformed) at a paced rate, each awaited."""
        from edge_agent.transports.mqtt.client import MqttInferClient, parse_hostport

        host, port = parse_hostport(target)
        rng = random.Random(4)

        async def main() -> None:
            c = MqttInferClient(host, port, device=self.args.mqtt_device, prefix=self.args.mqtt_prefix)
            await c.connect()
            try:
                for _ in self.paced(self.args.mqtt_rate):
                    if rng.random() < 0.8:
                        body: dict | bytes = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                                          "data": rng.choice(self.pool)}]}
                    else:
                        body = rng.choice([b"{not json", b'{"inputs": 5}', orjson.dumps(
                            {"inputs": [{"name": "input", "shape": [2**62], "datatype": "FP32", "data": [1.0]}]})])
                    try:
                        ans = await c.infer("digits", body, timeout=10)
                    except TimeoutError:
                        self.tally.add("mqtt", "unanswered")
                        continue
                    code = ans.error_code
                    self.tally.add("mqtt", "ok" if code is None else "4xx" if code in (
                        "malformed_request", "invalid_input", "rate_limited") else f"code:{code}")
            finally:
                await c.close()

        try:
            asyncio.run(main())
        except Exception as e:  # noqa: BLE001 - reported as an outcome
            self.tally.add("mqtt", f"error:{type(e).__name__}")

    def start(self) -> list[threading.Thread]:
        a = self.args
        jobs = [(self.infer, (i,)) for i in range(a.clients)] + [(self.churn, ()), (self.hostile, ())]
        jobs += [(self.slow, (10 + i,)) for i in range(a.slow_clients)]
        if a.mqtt:
            jobs.append((self.mqtt, (a.mqtt,)))
        threads = [threading.Thread(target=f, args=args, daemon=True, name=f.__name__) for f, args in jobs]
        for t in threads:
            t.start()
        return threads


# --- run ----------------------------------------------------------------------------


def start_daemon(args):
    import shutil
    import tempfile

    from bench import Daemon, digits_models_dir

    models_root = Path(tempfile.mkdtemp(prefix="eas-"))
    config: dict = {
        "logging": {"level": "WARNING"},
        "runtime": {"intra_op_num_threads": 1},
        "cache": {"memory_max_bytes": 4 * 2**20, "memo_max_bytes": 2**20, "disk_max_bytes": 64 * 2**20},
    }
    if args.mqtt:
        from edge_agent.transports.mqtt.client import parse_hostport

        host, port = parse_hostport(args.mqtt)
        config["device_id"] = args.mqtt_device
        config["mqtt"] = {"enabled": True, "host": host, "port": port, "prefix": args.mqtt_prefix,
                          "rate_limit": {"rate": 1e6, "burst": 1_000_000, "total_rate": 1e6, "total_burst": 1_000_000}}
    d = Daemon(digits_models_dir(models_root), config, "soak")
    d.models_root = models_root
    d.cleanup_models = lambda: shutil.rmtree(models_root, ignore_errors=True)
    return d


def row(t: float, f: dict, tally: dict[str, Counter]) -> str:
    total = Counter()
    for c in tally.values():
        total.update(c)
    ok = total.get("ok", 0)
    bad4 = total.get("4xx", 0)
    other = sum(v for k, v in total.items() if k not in ("ok", "4xx"))
    return (f"| {t:7.0f} | {f['rss_kb'] / 1024:7.1f} | {f['fds']:4d} | {f['threads']:3d} | {ok:10d} | {bad4:8d} | {other:15d} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", help="soak a running daemon on this socket (default: start one with the digits model)")
    ap.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    ap.add_argument("--seconds", type=float, help="duration in seconds (instead of --minutes)")
    ap.add_argument("--interval", type=float, help="seconds between samples (default: duration / 20, 5..30)")
    ap.add_argument("--warmup", type=float, help="seconds before the baseline sample (default: duration / 10, at most 60)")
    ap.add_argument("--rate", type=float, default=300.0, help="keep-alive inference requests per second, all clients (default 300)")
    ap.add_argument("--clients", type=int, default=4, help="keep-alive inference clients (default 4)")
    ap.add_argument("--slow-clients", type=int, default=8, help="slow clients at a time (default 8)")
    ap.add_argument("--slow-interval", type=float, default=0.05, help="a slow client's pause between 16-byte pieces (s)")
    ap.add_argument("--mqtt", metavar="HOST:PORT", help="also send MQTT requests through this broker")
    ap.add_argument("--mqtt-rate", type=float, default=8.0, help="MQTT requests per second (default 8: under the shipped rate limit)")
    ap.add_argument("--mqtt-device", default="soak-unit", help="device id the MQTT requests go to")
    ap.add_argument("--mqtt-prefix", default="edge", help="MQTT topic prefix")
    ap.add_argument("--max-rss-mb", type=float, default=64.0, help="allowed RSS growth after warm-up (default 64)")
    ap.add_argument("--max-fds", type=int, default=32, help="allowed growth of open descriptors (default 32)")
    ap.add_argument("--max-threads", type=int, default=4, help="allowed growth of threads (default 4)")
    args = ap.parse_args()

    duration = args.seconds if args.seconds is not None else args.minutes * 60
    interval = args.interval or min(30.0, max(5.0, duration / 20))
    warmup = args.warmup if args.warmup is not None else min(60.0, duration / 10)
    daemon = None
    if args.socket:
        path = args.socket
    else:
        daemon = start_daemon(args)
        path = str(daemon.socket)
    try:
        pid = daemon.proc.pid if daemon is not None else daemon_pid(path)
        tally = Tally()
        load = Load(args, path, tally)
        log(f"CPU: {cpu_model()}, {os.cpu_count()} cores; python {sys.version.split()[0]}")
        log(f"daemon pid {pid} on {path}; {duration:.0f} s, a sample every {interval:.0f} s, baseline after {warmup:.0f} s; "
            f"load: {args.rate:.0f} req/s keep-alive over {args.clients} clients, churn and hostile at {args.rate / 10:.0f}/s each, "
            f"{args.slow_clients} slow clients" + (f", MQTT {args.mqtt_rate:.0f}/s via {args.mqtt}" if args.mqtt else ""))
        print("|   t (s) | RSS MiB |  fds | thr | answers ok |      4xx | dropped/cut/err |")
        print("|--------:|--------:|-----:|----:|-----------:|---------:|----------------:|")
        samples: list[tuple[float, dict]] = []
        t0 = time.monotonic()
        threads = load.start()
        alive = True
        next_t = 0.0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= next_t:
                try:
                    f = figures(pid)
                except (FileNotFoundError, ProcessLookupError):
                    alive = False
                    log("the daemon is gone")
                    break
                samples.append((elapsed, f))
                print(row(elapsed, f, tally.snapshot()), flush=True)
                next_t += interval
            if elapsed >= duration:
                break
            time.sleep(min(0.5, max(0.0, next_t - elapsed)))
        load.stop.set()
        for t in threads:
            t.join(timeout=20)
        counts = tally.snapshot()
        if alive:
            time.sleep(2)
            try:
                idle = figures(pid)
                print(row(time.monotonic() - t0, idle, counts) + " (load stopped)")
            except FileNotFoundError:
                alive = False
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.cleanup_models()

    for kind, c in sorted(counts.items()):
        log(f"{kind:8s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    failures = []
    if not alive:
        failures.append("the daemon died")
    base = next((f for t, f in samples if t >= warmup), None)
    if base is None or len(samples) < 2:
        failures.append("too short: no sample after the warm-up")
    else:
        last = samples[-1][1]
        growth = {"rss_mb": (last["rss_kb"] - base["rss_kb"]) / 1024, "fds": last["fds"] - base["fds"],
                  "threads": last["threads"] - base["threads"]}
        log(f"growth after warm-up: RSS {growth['rss_mb']:+.1f} MiB (bound {args.max_rss_mb:g}), "
            f"fds {growth['fds']:+d} (bound {args.max_fds}), threads {growth['threads']:+d} (bound {args.max_threads})")
        if growth["rss_mb"] > args.max_rss_mb:
            failures.append(f"RSS grew {growth['rss_mb']:.1f} MiB")
        if growth["fds"] > args.max_fds:
            failures.append(f"descriptors grew by {growth['fds']}")
        if growth["threads"] > args.max_threads:
            failures.append(f"threads grew by {growth['threads']}")
    for kind, c in counts.items():
        if c.get("5xx"):
            failures.append(f"{c['5xx']} {kind} answers were 5xx")
        if kind == "mqtt" and (c.get("unanswered") or any(k.startswith(("code:", "error:")) for k in c)):
            failures.append(f"MQTT: {dict(c)}")
        if kind == "hostile" and c.get("unexpected-2xx"):
            failures.append(f"{c['unexpected-2xx']} hostile requests were answered 2xx")
    if not counts.get("infer", Counter()).get("ok"):
        failures.append("no inference was answered")
    if failures:
        log("FAIL: " + "; ".join(failures))
        return 1
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
