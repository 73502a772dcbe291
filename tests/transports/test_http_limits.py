"""The HTTP server's limits against hostile and slow clients (issue 15, items
3, 4 and 10): URL and head size refused as bytes arrive, the minimum-progress
rule for slow heads and bodies, idle and unread connections closed, the
connection cap, and answers for a client that half-closes.

First on the bare HttpServer (http_wire.py's ServerThread,
raw sockets), then against a real daemon process: RSS under a streamed
giant URL or header, and a half-closed client's inference answer.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import numpy as np
import orjson
import pytest

from daemon_proc import AgentProcess, make_slow_model, proc_status
from http_wire import Reader, ServerThread, connect, get, post, wait_until
from edge_agent.errors import HeaderTooLarge, Overloaded, RequestTimeout, UriTooLong
from edge_agent.transports.httpserver import HttpLimits, connection_cap

pytestmark = pytest.mark.timeout(60)


def limited(**kw) -> ServerThread:
    return ServerThread(limits=HttpLimits(**kw))


@pytest.fixture
def stop_after():
    made: list[ServerThread] = []
    yield made.append
    for s in made:
        s.stop()


def stream_until_refused(sock: socket.socket, head: bytes, piece: bytes, bound: int) -> int:
    """Send ``head``, then ``piece`` over and over, until the server answers
    or stops taking bytes; fail once ``bound`` bytes went out unrefused (the
    server is buffering an endless head). Returns the bytes sent."""
    sock.sendall(head)
    sent = len(head)
    while sent <= bound:
        if select.select([sock], [], [], 0)[0]:
            return sent  # an answer (or EOF) is waiting
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return sent
        sent += len(piece)
    pytest.fail(f"{sent} bytes of one request head sent and the server still reads on")


# --- request line and head size, counted as the bytes arrive -----------------


def test_long_url_is_refused_before_the_request_line_ends(stop_after):
    srv = limited(max_url_bytes=1024)
    stop_after(srv)
    s = connect(srv.path)
    sent = stream_until_refused(s, b"GET /", b"a" * 256, bound=1 << 20)
    status, headers, data = Reader(s).response()
    assert (status, orjson.loads(data)["code"], headers["connection"]) == (414, "uri_too_long", "close")
    assert sent < 64 * 1024
    assert Reader(s).closed()
    assert isinstance(srv.errors[0], UriTooLong)


def test_endless_header_value_is_refused_before_its_line_ends(stop_after):
    srv = limited(max_head_bytes=16 * 1024)
    stop_after(srv)
    s = connect(srv.path)
    sent = stream_until_refused(s, b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 4096, bound=8 << 20)
    status, _, data = Reader(s).response()
    assert (status, orjson.loads(data)["code"]) == (431, "header_too_large")
    assert sent < 2 << 20  # the limit, a read or two, and the socket buffers
    assert isinstance(srv.errors[0], HeaderTooLarge)


def test_endless_chunked_trailer_is_refused_before_its_line_ends(stop_after):
    """Trailers after the last chunk are header lines, buffered the same way."""
    srv = limited(max_head_bytes=16 * 1024)
    stop_after(srv)
    s = connect(srv.path)
    head = b"POST /echo/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: "
    sent = stream_until_refused(s, head, b"a" * 4096, bound=8 << 20)
    status, _, data = Reader(s).response()
    assert (status, orjson.loads(data)["code"]) == (431, "header_too_large")
    assert sent < 2 << 20
    assert "/echo/t" not in srv.calls


def test_chunked_body_in_many_small_chunks_is_served(stop_after):
    srv = limited(max_head_bytes=1024)
    stop_after(srv)
    s = connect(srv.path)
    s.sendall(b"POST /echo/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(500):  # 500 chunks, 2.5 kB of size lines: more than the head limit in all
        s.sendall(b"1\r\nx\r\n")
    s.sendall(b"0\r\nX-T: 1\r\n\r\n")
    status, _, data = Reader(s).response()
    assert status == 200 and orjson.loads(data)["len"] == 500
    s.close()


def test_heads_under_the_limit_are_served_however_they_are_cut(stop_after):
    """No false refusals: a head just under the limit, trickled in small
    pieces; and many pipelined requests in one write far larger than the
    limit (the head count restarts with each request)."""
    srv = limited(max_head_bytes=8 * 1024, max_url_bytes=4096)
    stop_after(srv)
    s = connect(srv.path)
    big = get("/echo/" + "u" * 4000, "X-Pad: " + "p" * 4100 + "\r\n")
    assert 8000 < len(big) < 8 * 1024
    for i in range(0, len(big), 97):
        s.sendall(big[i:i + 97])
        time.sleep(0.001)
    r = Reader(s)
    assert r.response()[0] == 200
    n = 200
    s.sendall(b"".join(get(f"/echo/{i}", "X-Pad: " + "p" * 300 + "\r\n") for i in range(n)))  # ~70 kB
    assert [r.response()[0] for _ in range(n)] == [200] * n
    s.close()


# --- slow clients: the minimum-progress rule ------------------------------------


def trickle(sock: socket.socket, data: bytes, every: float, bound: float) -> float:
    """Send ``data`` a byte at a time until the server answers or closes;
    fail after ``bound`` seconds. Returns how long it took."""
    t0 = time.monotonic()
    for b in data:
        if select.select([sock], [], [], every)[0]:
            return time.monotonic() - t0
        if time.monotonic() - t0 > bound:
            break
        try:
            sock.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - t0
    pytest.fail(f"a client trickling a byte every {every}s was still served after {bound}s")


def test_slow_request_head_gets_408_and_is_closed(stop_after):
    srv = limited(header_timeout_s=0.4)
    stop_after(srv)
    s = connect(srv.path)
    trickle(s, b"GET /echo/slow HTTP/1.1\r\n" + b"X-Drip: " + b"d" * 1000, every=0.05, bound=5)
    r = Reader(s)
    status, headers, data = r.response()
    assert (status, orjson.loads(data)["code"], headers["connection"]) == (408, "request_timeout", "close")
    assert r.closed()
    assert isinstance(srv.errors[0], RequestTimeout) and "/echo/slow" not in srv.calls


def test_stalled_body_gets_408(stop_after):
    srv = limited(body_timeout_s=0.3)
    stop_after(srv)
    s = connect(srv.path)
    s.sendall(b"POST /echo/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    s.settimeout(5)
    r = Reader(s)
    status, _, data = r.response()
    assert (status, orjson.loads(data)["code"]) == (408, "request_timeout")
    assert r.closed()


def test_body_trickled_below_the_minimum_rate_gets_408(stop_after):
    srv = limited(body_timeout_s=0.3, body_min_bytes_per_s=1000)
    stop_after(srv)
    s = connect(srv.path)
    s.sendall(b"POST /echo/drip HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    trickle(s, b"x" * 100000, every=0.02, bound=5)  # ~50 bytes/s
    status, _, data = Reader(s).response()
    assert (status, orjson.loads(data)["code"]) == (408, "request_timeout")


def test_body_at_a_steady_rate_above_the_minimum_is_served(stop_after):
    srv = limited(body_timeout_s=0.2, body_min_bytes_per_s=1000)
    stop_after(srv)
    s = connect(srv.path)
    body = b"[" + b"1," * 1500 + b"1]"  # 3 kB over ~0.6 s: 5 kB/s, three windows
    s.sendall(post("/echo/steady", b"")[:-2].replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)) + b"\r\n")
    for i in range(0, len(body), 100):
        s.sendall(body[i:i + 100])
        time.sleep(0.02)
    status, _, data = Reader(s).response()
    assert status == 200 and orjson.loads(data)["len"] == len(body)
    s.close()


def test_body_just_above_the_minimum_rate_is_bounded_by_request_max_s(stop_after):
    """Above body_min_bytes_per_s every window, a body could take hours;
    request_max_s bounds the whole request."""
    srv = limited(body_timeout_s=0.2, body_min_bytes_per_s=100, request_max_s=1.0)
    stop_after(srv)
    s = connect(srv.path)
    s.sendall(b"POST /echo/long HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    took = trickle(s, b"x" * 100000, every=0.005, bound=5)  # ~200 bytes/s: above the minimum
    status, _, data = Reader(s).response()
    assert (status, orjson.loads(data)["code"]) == (408, "request_timeout")
    assert took >= 0.9 and "/echo/long" not in srv.calls


def _newcomer_evicts_the_oldest_unfinished(srv, starts, unfinished) -> None:
    """Open a connection per start (a request begun, not finished), oldest
    first; then a newcomer is served and the oldest gets 503 overloaded."""
    slow = []
    for i, start in enumerate(starts):
        c = connect(srv.path)
        c.sendall(start)
        wait_until(lambda: sum(unfinished(x) for x in list(srv.server.connections)) == i + 1)
        time.sleep(0.01)  # distinct loop times (uvloop's clock ticks in milliseconds)
        slow.append(c)
    new = connect(srv.path)
    new.sendall(get("/echo/new"))
    assert Reader(new).response()[0] == 200
    status, _, data = Reader(slow[0]).response()
    assert (status, orjson.loads(data)["code"]) == (503, "overloaded")
    for c in slow[1:] + [new]:
        c.close()


def test_at_the_cap_a_slow_upload_makes_room_too(stop_after):
    """A trickled body holds a slot as a trickled head does: at the cap the
    oldest unfinished request is closed (503), not the newcomer refused."""
    srv = limited(max_connections=2, reserved_fds=0)
    stop_after(srv)
    _newcomer_evicts_the_oldest_unfinished(srv, [b"POST /echo/up%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nxx" % i
                                                 for i in range(2)], lambda c: c.phase >= 2)


def test_client_that_never_reads_its_answers_is_cut(stop_after):
    srv = limited(send_timeout_s=0.3)
    stop_after(srv)
    s = connect(srv.path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"".join(get(f"/big/{i}") for i in range(100)))  # 6.5 MB of answers, never read
    wait_until(lambda: any(c.drained is not None for c in list(srv.server.connections)))
    wait_until(lambda: not srv.server.connections, timeout=5)
    assert isinstance(srv.errors[0], RequestTimeout)


# --- the connection cap -------------------------------------------------------------


def test_connection_cap_stays_below_the_descriptor_limit():
    assert connection_cap(HttpLimits(max_connections=4096, reserved_fds=128), nofile=1024) == 896
    assert connection_cap(HttpLimits(max_connections=4096, reserved_fds=128), nofile=65536) == 4096
    assert connection_cap(HttpLimits(max_connections=100, reserved_fds=128), nofile=64) == 32  # no room: half


def test_at_the_cap_idle_then_slow_connections_make_room_then_newcomers_get_503(stop_after):
    srv = limited(max_connections=3, reserved_fds=0)
    stop_after(srv)
    # Three idle connections (the oldest first): a newcomer closes the oldest.
    idle = []
    for i in range(3):
        idle.append(connect(srv.path))
        wait_until(lambda: len(srv.server.connections) == i + 1)
        time.sleep(0.01)  # distinct loop times (uvloop's clock ticks in milliseconds)
    new = connect(srv.path)
    new.sendall(get("/echo/new"))
    assert Reader(new).response()[0] == 200
    assert Reader(idle[0]).closed()
    for c in idle[1:] + [new]:
        c.close()
    wait_until(lambda: not srv.server.connections)
    # Three slow heads: a newcomer closes the oldest with 503 overloaded.
    _newcomer_evicts_the_oldest_unfinished(srv, [b"GET /echo/slow%d HTTP/1.1\r\nX-Drip: " % i for i in range(3)],
                                           lambda c: c.phase == 1)
    wait_until(lambda: not srv.server.connections)
    # Three requests in handlers: nothing to close, the newcomer is refused.
    busy = [connect(srv.path) for _ in range(3)]
    for c in busy:
        c.sendall(get("/gate"))
    wait_until(lambda: srv.calls.count("/gate") == 3)
    new = connect(srv.path)
    status, headers, data = Reader(new).response()
    assert (status, orjson.loads(data)["code"], headers["connection"]) == (503, "overloaded", "close")
    assert Reader(new).closed()
    srv.open_gate()
    assert [Reader(c).response()[0] for c in busy] == [200] * 3
    assert sum(isinstance(e, Overloaded) for e in srv.errors) == 2


# --- half-closed clients ----------------------------------------------------------


def test_half_closed_client_gets_every_answer_for_what_it_sent(srv_default):
    srv = srv_default
    s = connect(srv.path)
    # A handler request, a Later from the fast path, and a handler again.
    s.sendall(get("/sleep?ms=100") + get("/fast/sleep?ms=50") + get("/echo/last"))
    s.shutdown(socket.SHUT_WR)
    r = Reader(s)
    answers = [r.response() for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert orjson.loads(answers[1][2])["path"] == "/fast/sleep"
    assert answers[2][1]["connection"] == "close"
    assert r.closed()


def test_half_closed_fast_later_alone_gets_its_answer(srv_default):
    s = connect(srv_default.path)
    s.sendall(get("/fast/sleep?ms=100"))
    s.shutdown(socket.SHUT_WR)
    r = Reader(s)
    status, headers, _ = r.response()
    assert status == 200 and headers["connection"] == "close"
    assert r.closed()


def test_half_closed_client_with_nothing_pending_is_closed(srv_default):
    s = connect(srv_default.path)
    s.sendall(b"GET /echo/partial HTTP/1.1\r\nHo")
    s.shutdown(socket.SHUT_WR)
    assert Reader(s).closed()
    wait_until(lambda: not srv_default.server.connections)


@pytest.fixture
def srv_default():
    s = ServerThread()
    yield s
    s.stop()


# --- against the real daemon ----------------------------------------------------------


def rss_kb(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


class Prober(threading.Thread):
    """Another client meanwhile: GET /v2/health/live on a new connection
    every 20 ms; records (status, seconds) of every request."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.results: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                s = connect(self.path)
                s.sendall(get("/v2/health/live", "Connection: close\r\n"))
                status = Reader(s).response()[0]
                s.close()
            except OSError:
                status = 0
            self.results.append((status, time.monotonic() - t0))
            self.stop.wait(0.02)


@pytest.fixture(scope="module")
def agent():
    a = AgentProcess(config={"cache": {"enabled": False}})
    make_slow_model(a.models_dir)  # milliseconds per row: its answer is computed after the client's EOF
    a.start()
    yield a
    a.stop()
    a.cleanup()


@pytest.mark.parametrize("what", ["url", "header"])
def test_daemon_refuses_a_giant_head_early_and_keeps_serving(agent, what):
    """A request head streamed towards 128 MB (the URL, or one header value)
    is refused after about the limit (8 KiB URL, 64 KiB head): the daemon
    does not buffer it (RSS flat) and answers everyone else meanwhile."""
    pid = agent.proc.pid
    before = rss_kb(pid)
    probe = Prober(str(agent.socket))
    probe.start()
    try:
        time.sleep(0.2)
        s = connect(str(agent.socket))
        if what == "url":
            head, code = b"GET /v2/health/live?q=", (414, "uri_too_long")
        else:
            head, code = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ", (431, "header_too_large")
        # Bounded at 16 MB: the old server read on, a 128 MB head took it 20 s.
        sent = stream_until_refused(s, head, b"a" * 65536, bound=16 << 20)
        status, _, data = Reader(s).response()
        assert (status, orjson.loads(data)["code"]) == code
        assert sent < 4 << 20
        s.close()
        time.sleep(0.2)
    finally:
        probe.stop.set()
        probe.join(5)
    assert probe.results and all(st == 200 for st, _ in probe.results), probe.results
    assert max(t for _, t in probe.results) < 2.0
    assert rss_kb(pid) - before < 8 * 1024, (before, rss_kb(pid))


def test_daemon_answers_an_inference_to_a_half_closed_client(agent):
    """A complete request, then shutdown(SHUT_WR): the answer still comes
    (a cache miss: the cache is off, and the slow model computes the answer
    after the daemon has read the EOF)."""
    x = np.random.default_rng(15).random((1, 1024), dtype=np.float32)
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": x.ravel().tolist()}]})
    s = connect(str(agent.socket))
    s.settimeout(10)
    s.sendall(post("/v2/models/slow/infer", body))
    s.shutdown(socket.SHUT_WR)
    r = Reader(s)
    status, headers, data = r.response()
    assert status == 200, data
    assert headers["connection"] == "close"
    assert orjson.loads(data)["outputs"]
    assert r.closed()
    assert os.path.exists(f"/proc/{agent.proc.pid}")  # still serving
    c = connect(str(agent.socket))
    c.sendall(get("/v2/health/ready"))
    assert Reader(c).response()[0] == 200
    c.close()
