"""The hand-written HTTP/1.1 server (transports/httpserver/) on a real Unix
socket, driven byte by byte with raw sockets (and curl) so every protocol
corner is visible: keep-alive, pipelining, chunked bodies, 100-continue,
HTTP/1.0, malformed input, oversized bodies, clients that vanish, shutdown.

The server runs in its own thread on its own uvloop loop (http_wire.py's
``ServerThread``, which says what its handler answers).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
import pytest
import uvloop

from http_wire import Reader, ServerThread, connect, get, post, wait_until
from edge_agent.errors import MalformedRequest
from edge_agent.transports import httpserver
from edge_agent.transports.http import HttpTransport
from edge_agent.transports.httpserver import CT_JSON, HttpLimits, HttpServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def srv():
    s = ServerThread()
    yield s
    s.stop()


def test_keep_alive_serves_many_requests_on_one_connection(srv):
    s = connect(srv.path)
    r = Reader(s)
    for i in range(3):
        s.sendall(post(f"/echo/{i}", b'{"x": %d}' % i))
        status, headers, body = r.response()
        doc = orjson.loads(body)
        assert status == 200 and headers["content-type"] == "application/json"
        assert (doc["path"], doc["body"], doc["ctype"]) == (f"/echo/{i}", '{"x": %d}' % i, "application/json")
        assert "connection" not in headers  # HTTP/1.1 keeps alive by default
    s.close()


def test_pipelined_requests_are_answered_in_order(srv):
    s = connect(srv.path)
    # The first takes longest; answers must still come back first-to-last.
    s.sendall(get("/sleep?ms=150") + post("/echo/a", b"aaa") + get("/sleep?ms=10") + get("/echo/b?q=1"))
    r = Reader(s)
    paths = [orjson.loads(r.response()[2])["path"] for _ in range(4)]
    assert paths == ["/sleep", "/echo/a", "/sleep", "/echo/b"]
    s.close()


def test_chunked_request_body(srv):
    s = connect(srv.path)
    chunks = [b'{"inputs":', b" [1, 2, 3]", b"}"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body + get("/echo/after"))
    r = Reader(s)
    doc = orjson.loads(r.response()[2])
    assert (doc["len"], doc["body"]) == (21, '{"inputs": [1, 2, 3]}')
    assert orjson.loads(r.response()[2])["path"] == "/echo/after"  # framing kept after the chunks
    s.close()


def test_expect_100_continue(srv):
    s = connect(srv.path)
    body = b"x" * 5000
    s.sendall(f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    r = Reader(s)
    status, _, _ = r.response()
    assert status == 100
    s.sendall(body)
    status, _, data = r.response()
    assert status == 200 and orjson.loads(data)["len"] == 5000
    s.close()


def test_expect_100_continue_with_oversized_body_gets_413_and_close(srv):
    s = connect(srv.path)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\nExpect: 100-continue\r\n\r\n")
    r = Reader(s)
    status, headers, data = r.response()
    assert (status, orjson.loads(data)["code"], headers["connection"]) == (413, "payload_too_large", "close")
    assert r.closed()


def test_http10_closes_unless_keep_alive_asked(srv):
    s = connect(srv.path)
    s.sendall(get("/echo/10", version="1.0"))
    r = Reader(s)
    status, headers, _ = r.response()
    assert status == 200 and headers["connection"] == "close"
    assert r.closed()

    s = connect(srv.path)
    r = Reader(s)
    for _ in range(2):
        s.sendall(get("/echo/10ka", "Connection: keep-alive\r\n", version="1.0"))
        status, headers, _ = r.response()
        assert status == 200 and headers["connection"].lower() == "keep-alive"
    s.close()


def test_connection_close_is_honoured(srv):
    s = connect(srv.path)
    s.sendall(get("/echo", "Connection: close\r\n") + get("/echo/never"))
    r = Reader(s)
    status, headers, _ = r.response()
    assert status == 200 and headers["connection"] == "close"
    assert r.closed()
    assert "/echo/never" not in srv.calls


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /x HTTP/9.7\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /x HTTP/1.1\r\nBad Header Line\r\n\r\n",
])
def test_malformed_http_gets_400_and_close(srv, raw):
    s = connect(srv.path)
    s.sendall(raw)
    r = Reader(s)
    status, headers, data = r.response()
    assert (status, orjson.loads(data)["code"], headers["connection"]) == (400, "malformed_request", "close")
    assert r.closed()
    assert len(srv.errors) == 1 and isinstance(srv.errors[0], MalformedRequest)


def test_malformed_after_pipelined_good_request_keeps_order(srv):
    s = connect(srv.path)
    s.sendall(get("/sleep?ms=50") + b"NOT HTTP AT ALL\r\n\r\n")
    r = Reader(s)
    assert r.response()[0] == 200
    assert r.response()[0] == 400
    assert r.closed()


def test_oversized_header_block_is_refused(srv):
    s = connect(srv.path)
    s.sendall(b"GET /x HTTP/1.1\r\n" + b"X-Filler: " + b"a" * (httpserver.MAX_HEADER_BYTES + 10) + b"\r\n\r\n")
    r = Reader(s)
    status, _, data = r.response()
    assert (status, orjson.loads(data)["code"]) == (431, "header_too_large")
    assert r.closed()


def test_oversized_body_is_drained_and_the_connection_stays_usable(srv):
    s = connect(srv.path)
    big = b"[" + b"0," * 40000 + b"0]"  # 80 kB > 64 kB limit, below the drain bound
    s.sendall(post("/echo/big", big) + get("/echo/next"))
    r = Reader(s)
    status, headers, data = r.response()
    assert (status, orjson.loads(data)["code"]) == (413, "payload_too_large")
    assert "connection" not in headers
    assert orjson.loads(r.response()[2])["path"] == "/echo/next"
    s.close()


def test_oversized_chunked_body_gets_413_and_close(srv):
    s = connect(srv.path)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"y" * 16384
    r = Reader(s)
    try:
        for _ in range(10):  # 160 kB in chunks, past the 64 kB limit
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close while we are still sending
    status, headers, data = r.response()
    assert (status, orjson.loads(data)["code"], headers["connection"]) == (413, "payload_too_large", "close")


def test_client_gone_mid_body_is_harmless(srv):
    s = connect(srv.path)
    s.sendall(b"POST /echo/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    s.close()
    s = connect(srv.path)
    s.sendall(get("/echo/alive"))
    assert Reader(s).response()[0] == 200
    assert "/echo/partial" not in srv.calls  # an incomplete request never reaches a handler
    assert srv.run(_count(srv.server)) == 1  # the gone connection was dropped
    s.close()


async def _count(server) -> int:
    await asyncio.sleep(0.05)
    return len(server.connections)


def test_client_gone_mid_handler_does_not_cancel_shared_work(srv):
    a = connect(srv.path)
    a.sendall(get("/gate"))
    b = connect(srv.path)
    b.sendall(get("/gate"))
    wait_until(lambda: srv.calls.count("/gate") == 2)
    a.close()  # leaves while its handler awaits work it shares with b
    time.sleep(0.1)
    srv.open_gate()
    status, _, data = Reader(b).response()
    assert status == 200 and orjson.loads(data)["path"] == "/gate"
    wait_until(lambda: srv.finished.count("/gate") == 2)  # a's handler ran to the end, not cancelled
    assert not srv.gate.cancelled()
    b.close()


def test_handler_bug_gives_500_and_the_connection_survives(srv):
    s = connect(srv.path)
    s.sendall(get("/boom") + get("/echo/ok"))
    r = Reader(s)
    status, _, data = r.response()
    assert (status, orjson.loads(data)["code"]) == (500, "internal")
    assert r.response()[0] == 200
    s.close()


def test_percent_encoded_path_and_query(srv):
    s = connect(srv.path)
    s.sendall(get("/v2/models/my%20model/infer?a=1&b=2"))
    doc = orjson.loads(Reader(s).response()[2])
    assert (doc["path"], doc["query"]) == ("/v2/models/my model/infer", "a=1&b=2")
    s.close()


def test_slow_reader_pauses_reading_then_gets_every_answer_in_order(srv):
    s = connect(srv.path)
    n = 300  # 300 x 64 kB answers: far more than socket and transport buffers hold
    s.sendall(b"".join(get(f"/big/{i}") for i in range(n)))
    time.sleep(0.3)
    # Nobody reads the answers, so the server stops reading and handling.
    paused, handled = srv.run(_snapshot(srv.server))
    assert paused and handled < n
    r = Reader(s)
    paths = [orjson.loads(r.response()[2][:64])["path"] for _ in range(n)]
    assert paths == [f"/big/{i}" for i in range(n)]
    s.close()


async def _snapshot(server) -> tuple[bool, int]:
    conns = list(server.connections)
    return any(c.read_paused for c in conns), len(srv_calls(server))


def srv_calls(server) -> list[str]:
    return server.respond.__self__.calls


def test_curl_over_the_unix_socket(srv):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    body = orjson.dumps({"inputs": [0.5] * 1000})  # > 1 KiB: curl sends Expect: 100-continue
    out = subprocess.run(
        [curl, "-sS", "--unix-socket", srv.path, "-H", "Content-Type: application/json", "--data-binary", "@-",
         "http://localhost/v2/models/digits/infer", "http://localhost/echo/second"],
        input=body, capture_output=True, check=True, timeout=10,
    ).stdout
    first, second = out.split(b"}{")
    assert orjson.loads(first + b"}")["len"] == len(body)
    assert orjson.loads(b"{" + second)["path"] == "/echo/second"


def test_shutdown_waits_for_in_flight_then_closes_idle_connections(srv):
    busy = connect(srv.path)
    busy.sendall(get("/sleep?ms=300"))
    idle = connect(srv.path)
    idle.sendall(get("/echo"))
    ri = Reader(idle)
    assert ri.response()[0] == 200
    wait_until(lambda: "/sleep" in srv.calls)
    t0 = time.monotonic()
    srv.run(srv.server.shutdown(5))
    assert time.monotonic() - t0 < 3
    status, headers, _ = Reader(busy).response()
    assert status == 200 and headers["connection"] == "close"  # finished, then told to go
    assert ri.closed()
    with pytest.raises(OSError):
        connect(srv.path)


def test_shutdown_timeout_cancels_what_is_left(srv):
    s = connect(srv.path)
    s.sendall(get("/gate"))
    wait_until(lambda: "/gate" in srv.calls)
    t0 = time.monotonic()
    srv.run(srv.server.shutdown(0.2))
    assert time.monotonic() - t0 < 2
    assert Reader(s).closed()
    assert "/gate" not in srv.finished


def test_fast_answers_keep_order_with_pipelined_handler_requests(srv):
    """A Later first, then requests the handler answers, then one answered
    at once: all wait for the Later and come back in request order."""
    s = connect(srv.path)
    s.sendall(get("/fast/sleep?ms=150") + post("/echo/a", b"aa") + post("/fast/now", b"abc") + get("/sleep?ms=10")
              + get("/fast/sleep?ms=1"))
    r = Reader(s)
    paths = [orjson.loads(r.response()[2])["path"] for _ in range(5)]
    assert paths == ["/fast/sleep", "/echo/a", "/fast/now", "/sleep", "/fast/sleep"]
    # ... and the connection goes on as usual afterwards, fast or not.
    for path in ("/fast/now", "/echo/b", "/fast/sleep?ms=1"):
        s.sendall(get(path))
        assert orjson.loads(r.response()[2])["path"] == path.split("?")[0]
    s.close()


def test_fast_route_bugs_give_500_and_the_connection_survives(srv):
    s = connect(srv.path)
    r = Reader(s)
    s.sendall(get("/fast/raise"))
    assert r.response()[0] == 500
    s.sendall(get("/fast/sleep?ms=1"))  # a plain Later works
    assert r.response()[0] == 200
    s.sendall(b"GET /fast/gate?boom HTTP/1.1\r\nHost: x\r\n\r\n" + get("/echo/after"))
    wait_until(lambda: "/fast/gate" in srv.calls)
    srv.open_fast_gate()
    status, _, data = r.response()
    assert (status, orjson.loads(data)["code"]) == (500, "internal")
    assert orjson.loads(r.response()[2])["path"] == "/echo/after"
    s.close()


def test_fast_http10_and_connection_close_are_honoured(srv):
    s = connect(srv.path)
    s.sendall(get("/fast/sleep?ms=1", "Connection: close\r\n"))
    r = Reader(s)
    status, headers, _ = r.response()
    assert status == 200 and headers["connection"] == "close" and r.closed()
    s = connect(srv.path)
    s.sendall(get("/fast/now", version="1.0"))
    r = Reader(s)
    assert r.response()[0] == 200 and r.closed()


def test_client_gone_while_a_later_waits_is_harmless(srv):
    a = connect(srv.path)
    a.sendall(get("/fast/gate"))
    wait_until(lambda: "/fast/gate" in srv.calls)
    a.close()
    time.sleep(0.1)
    srv.open_fast_gate()
    wait_until(lambda: "/fast/gate" in srv.finished)  # finished, its answer dropped
    assert srv.run(_count(srv.server)) == 0 and srv.server.active == 0
    b = connect(srv.path)
    b.sendall(get("/fast/now"))
    assert Reader(b).response()[0] == 200


def test_shutdown_waits_for_a_later_in_flight(srv):
    s = connect(srv.path)
    s.sendall(get("/fast/sleep?ms=300"))
    wait_until(lambda: "/fast/sleep" in srv.calls)
    t0 = time.monotonic()
    srv.run(srv.server.shutdown(5))
    assert time.monotonic() - t0 < 3
    status, headers, _ = Reader(s).response()
    assert status == 200 and headers["connection"] == "close"


def test_shutdown_timeout_cancels_a_later_and_what_waits_behind_it(srv):
    s = connect(srv.path)
    s.sendall(get("/fast/gate") + get("/echo/behind"))
    wait_until(lambda: "/fast/gate" in srv.calls)
    srv.run(srv.server.shutdown(0.2))
    assert Reader(s).closed()
    assert srv.fgate.cancelled() and "/fast/gate" not in srv.finished
    time.sleep(0.1)
    assert "/echo/behind" not in srv.calls and srv.server.active == 0


class _App:
    """The smallest app HttpTransport needs for its health routes."""

    ready = True
    service = None


def test_transport_socket_file_mode_stale_file_and_removal():
    d = Path(tempfile.mkdtemp(prefix="hp-"))
    path = d / "run" / "agent.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # what a killed daemon leaves behind
    stale.close()
    loop = uvloop.new_event_loop()
    try:
        t = HttpTransport(_App(), path, 0o600, "no-such-group-here", None, 1024)
        loop.run_until_complete(t.start())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        loop.run_until_complete(loop.sock_connect(s, str(path)))
        loop.run_until_complete(loop.sock_sendall(s, get("/v2/health/ready")))
        data = loop.run_until_complete(loop.sock_recv(s, 4096))
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b'{"ready":true}')
        t.stop_listening()
        assert t.draining
        loop.run_until_complete(t.shutdown(1))
        s.close()
        assert not path.exists()
    finally:
        loop.close()
        shutil.rmtree(d, ignore_errors=True)


def test_upgrade_request_is_answered_then_closed(srv):
    s = connect(srv.path)
    s.sendall(get("/echo/up", "Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"\x81\x05hello")
    r = Reader(s)
    status, headers, _ = r.response()
    assert status == 200 and headers["connection"] == "close"
    assert r.closed()


def test_transport_refuses_a_socket_a_live_server_answers_on(srv):
    loop = uvloop.new_event_loop()
    try:
        t = HttpTransport(_App(), Path(srv.path), 0o600, None, None, 1024)
        with pytest.raises(OSError, match="another process"):
            loop.run_until_complete(t.start())
        loop.run_until_complete(t.shutdown(0.1))
    finally:
        loop.close()
    s = connect(srv.path)  # the live server kept its socket
    s.sendall(get("/echo"))
    assert Reader(s).response()[0] == 200
    s.close()


def test_shutdown_leaves_a_successors_socket_alone():
    d = Path(tempfile.mkdtemp(prefix="hp-"))
    path = d / "agent.sock"
    loop = uvloop.new_event_loop()
    try:
        t = HttpTransport(_App(), path, 0o600, None, None, 1024)
        loop.run_until_complete(t.start())
        t.stop_listening()
        path.unlink()
        time.sleep(0.02)  # file times tick in jiffies; a real successor starts later still
        successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        successor.bind(str(path))  # a new daemon took the path meanwhile
        loop.run_until_complete(t.shutdown(0.1))
        assert path.is_socket()
        successor.close()
    finally:
        loop.close()
        shutil.rmtree(d, ignore_errors=True)


def test_idle_connections_are_swept_busy_ones_are_not():
    srv = ServerThread(limits=HttpLimits(idle_timeout_s=0.2))
    try:
        idle = connect(srv.path)
        busy = connect(srv.path)
        busy.sendall(get("/sleep?ms=600"))
        assert Reader(idle).closed()  # blocks until the sweep closes it (2 sweeps)
        status, headers, _ = Reader(busy).response()
        assert status == 200 and "connection" not in headers
    finally:
        srv.stop()


def test_tcp_port_is_shared_only_with_reuse_port():
    """Two servers on one TCP port (as several serving processes would share
    it, SO_REUSEPORT) both answer; without reuse_port the second bind fails."""

    async def handle(req):
        return 200, CT_JSON, orjson.dumps({"path": req.path})

    loop = uvloop.new_event_loop()
    servers = [HttpServer(handle, 1024) for _ in range(3)]
    try:
        port = loop.run_until_complete(servers[0].listen_tcp("127.0.0.1", 0, reuse_port=True))
        assert loop.run_until_complete(servers[1].listen_tcp("127.0.0.1", port, reuse_port=True)) == port
        with pytest.raises(OSError):
            loop.run_until_complete(servers[2].listen_tcp("127.0.0.1", port))
        servers[0].close_listeners()  # the port stays served by the other
        loop.run_until_complete(servers[0].shutdown(0.1))

        def ask():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(get("/still-there"))
                return Reader(s).response()

        status, _, body = loop.run_until_complete(loop.run_in_executor(None, ask))
        assert status == 200 and orjson.loads(body) == {"path": "/still-there"}
    finally:
        for s in servers[1:]:
            loop.run_until_complete(s.shutdown(0.1))
        loop.close()
