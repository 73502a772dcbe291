"""The HTTP API's routes (transports/http_routes.py) and its one inference
path (transports/http.py).

``parse_route`` is checked against every route and against paths that are
not routes; then, in process on a real Unix socket with the real digits
model, inference requests pipelined on one connection (answered from the
connection's task, behind the first) go through the same
``service.start``/``settle`` as the first (answered from a callback), and
never through ``service.infer``."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest
import uvloop
from daemon_proc import copy_digits, digits_body

from edge_agent.config import load_config
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.service import InferenceService
from edge_agent.transports import http_routes
from edge_agent.transports.http import HttpTransport
from edge_agent.transports.http_routes import (INFER, LIVE, METRICS, MODEL, MODEL_ACTION, MODEL_READY, NOT_FOUND, READY,
                                               RELOAD, REPOSITORY_INDEX, SERVER, STATUS, Route, parse_route)

pytestmark = pytest.mark.timeout(60)

ROUTES = [
    ("POST", "/v2/models/digits/infer", Route(INFER, "digits")),
    ("POST", "/v2/models/digits/versions/2/infer", Route(INFER, "digits", "2")),
    ("POST", "/v2/models/my model/infer", Route(INFER, "my model")),  # the path comes percent-decoded
    ("GET", "/v2/models/digits", Route(MODEL, "digits")),
    ("GET", "/v2/models/digits/versions/2", Route(MODEL, "digits", "2")),
    ("GET", "/v2/models/digits/ready", Route(MODEL_READY, "digits")),
    ("GET", "/v2/models/digits/versions/2/ready", Route(MODEL_READY, "digits", "2")),
    ("GET", "/v2/models/digits/versions/infer", Route(MODEL, "digits", "infer")),  # a version named "infer"
    ("GET", "/v2/health/live", Route(LIVE)),
    ("GET", "/v2/health/ready", Route(READY)),
    ("GET", "/v2", Route(SERVER)),
    ("GET", "/metrics", Route(METRICS)),
    ("GET", "/edge/status", Route(STATUS)),
    ("POST", "/v2/repository/index", Route(REPOSITORY_INDEX)),
    ("POST", "/edge/reload", Route(RELOAD, control=True)),
    ("POST", "/edge/models/digits/rollback", Route(MODEL_ACTION, "digits", action="rollback", control=True)),
    ("POST", "/edge/models/digits/promote", Route(MODEL_ACTION, "digits", action="promote", control=True)),
    ("POST", "/v2/repository/models/digits/load", Route(MODEL_ACTION, "digits", action="load", control=True)),
    ("POST", "/v2/repository/models/digits/unload", Route(MODEL_ACTION, "digits", action="unload", control=True)),
]

NOT_ROUTES = [
    ("GET", "/v2/models/digits/infer"),  # infer is POST only
    ("PUT", "/v2/models/digits/infer"),
    ("POST", "/v2/models/digits"),  # metadata is GET only
    ("POST", "/v2/models/digits/ready"),
    ("POST", "/v2/models/digits/versions/2"),
    ("POST", "/v2/models/digits/versions/infer"),
    ("GET", "/v2/models/digits/versions"),
    ("POST", "/v2/models/digits/infer/more"),
    ("POST", "/v2/models/digits/versions/2/infer/more"),
    ("GET", "/v2/models/digits/explain"),
    ("POST", "/v2/health/live"),
    ("GET", "/v2/"),
    ("GET", "/metrics/"),
    ("DELETE", "/metrics"),
    ("GET", "/"),
    ("GET", ""),
    ("GET", "/edge/reload"),  # control is POST only
    ("GET", "/v2/repository/index"),
]

# POSTs under /edge/ that are no route still need authority first (a
# caller without it learns nothing about which control routes exist).
CONTROL_NOT_ROUTES = ["/edge/", "/edge/nothing", "/edge/models/digits", "/edge/models/digits/rollback/now",
                      "/edge/reload/", "/edge/status", "/v2/repository/models/", "/v2/repository/models/digits",
                      "/v2/repository/models/digits/explode", "/v2/repository/models/digits/load/now"]


@pytest.mark.parametrize("method,path,route", ROUTES)
def test_every_route_parses_to_its_kind_and_parts(method, path, route):
    assert parse_route(method, path) == route


@pytest.mark.parametrize("method,path", NOT_ROUTES)
def test_paths_that_are_not_routes(method, path):
    assert parse_route(method, path) == Route(NOT_FOUND)


@pytest.mark.parametrize("path", CONTROL_NOT_ROUTES)
def test_unknown_control_paths_still_need_authority(path):
    assert parse_route("POST", path) == Route(NOT_FOUND, control=True)


def test_only_posts_under_edge_and_the_repository_models_are_control():
    for method, path, route in ROUTES:
        assert route.control == (method == "POST" and path.startswith(("/edge/", "/v2/repository/models/"))), (method, path)


def test_a_path_seen_with_one_method_keeps_its_route_per_method():
    for _ in range(2):  # the second time from what was kept
        assert parse_route("POST", "/v2/models/digits/infer") == Route(INFER, "digits")
        assert parse_route("GET", "/v2/models/digits/infer") == Route(NOT_FOUND)
        assert parse_route("GET", "/v2/models/digits") == Route(MODEL, "digits")
        assert parse_route("POST", "/v2/models/digits") == Route(NOT_FOUND)


def test_routes_kept_for_seen_paths_are_bounded():
    seen = http_routes._SEEN["POST"]
    for i in range(3 * http_routes.SEEN_MAX):
        assert parse_route("POST", f"/v2/models/m{i}/infer") == Route(INFER, f"m{i}")
        assert len(seen) <= http_routes.SEEN_MAX
    long = "/v2/models/" + "x" * http_routes.SEEN_PATH_MAX + "/infer"
    assert parse_route("POST", long) == Route(INFER, "x" * http_routes.SEEN_PATH_MAX)
    assert long not in seen


# --- one inference path ---------------------------------------------------------------

X = np.random.default_rng(16).uniform(0, 16, (3, 64)).astype(np.float32)


class _App:
    ready = True

    def __init__(self, service, repo) -> None:
        self.service = service
        self.repo = repo


def _counting(service: InferenceService, calls: dict) -> None:
    """Wrap the service's entry points (the real ones run) to count their calls."""
    for name in ("start", "settle", "infer"):
        real = getattr(service, name)

        def counted(*args, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*args, **kw)

        setattr(service, name, counted)


async def _responses(reader: asyncio.StreamReader, n: int) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(n):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next(int(ln.split(":")[1]) for ln in lines if ln.lower().startswith("content-length:"))
        out.append((int(lines[0].split()[1]), await reader.readexactly(length)))
    return out


def test_pipelined_inference_goes_through_start_and_settle_like_the_first():
    d = Path(tempfile.mkdtemp(prefix="hr-"))
    copy_digits(d / "models")
    cfg = load_config(None)
    cfg.paths.models_dir = d / "models"
    cfg.cache.enabled = False
    calls = {"start": 0, "settle": 0, "infer": 0}

    async def main():
        repo = ModelRepository(cfg, asyncio.get_running_loop())
        await repo.sync()
        service = InferenceService(cfg, repo)
        _counting(service, calls)
        http = HttpTransport(_App(service, repo), d / "s.sock", 0o600, None, None, 1 << 20)
        await http.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(d / "s.sock"))
            paths = ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer", "/v2/models/digits/infer"]
            writer.write(b"".join(
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (p.encode(), len(body), body)
                for p, body in ((p, orjson.dumps(digits_body(X[i : i + 1]))) for i, p in enumerate(paths))))
            answers = await asyncio.wait_for(_responses(reader, 3), 10)
            writer.close()
            return answers, repo.route("digits", None).model.session, service.inflight
        finally:
            await http.shutdown(1)
            service.close()
            await repo.close(5)

    loop = uvloop.new_event_loop()
    try:
        answers, session, inflight = loop.run_until_complete(main())
    finally:
        loop.close()
        shutil.rmtree(d, ignore_errors=True)
    for i, (status, body) in enumerate(answers):
        assert status == 200, body
        probs = next(o for o in orjson.loads(body)["outputs"] if o["name"] == "probabilities")
        np.testing.assert_allclose(probs["data"], session.run(None, {"input": X[i : i + 1]})[1].ravel(), rtol=1e-5, atol=1e-6)
    assert calls == {"start": 3, "settle": 3, "infer": 0} and inflight == 0
