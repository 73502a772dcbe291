"""The daemon's HTTP routes, parsed in one place: ``parse_route(method,
path)`` gives a ``Route`` naming what is asked for and of which model,
version or action. The transport (http.py) parses each request once and
dispatches on ``Route.kind``; to add a route, add its kind here and its
answer there.

Inference is checked first: at ~10k requests/s on two cores every
microsecond per request counts.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

# Route kinds.
INFER = "infer"  # POST /v2/models/{model}[/versions/{version}]/infer
MODEL = "model"  # GET /v2/models/{model}[/versions/{version}]
MODEL_READY = "model_ready"  # GET /v2/models/{model}[/versions/{version}]/ready
LIVE = "live"  # GET /v2/health/live
READY = "ready"  # GET /v2/health/ready
SERVER = "server"  # GET /v2
METRICS = "metrics"  # GET /metrics
STATUS = "status"  # GET /edge/status
REPOSITORY_INDEX = "repository_index"  # POST /v2/repository/index
RELOAD = "reload"  # POST /edge/reload (control)
MODEL_ACTION = "model_action"  # POST /edge/models/{model}/{action}, /v2/repository/models/{model}/load|unload (control)
NOT_FOUND = "not_found"


class Route(NamedTuple):
    """What a request asks for. ``control``: a POST under ``/edge/`` or
    ``/v2/repository/models/``, which changes state and needs authority
    (transports/authority.py) before anything else, a route that does not
    exist included."""

    kind: str
    model: Optional[str] = None
    version: Optional[str] = None
    action: Optional[str] = None
    control: bool = False


_NOT_FOUND = Route(NOT_FOUND)
_CONTROL_NOT_FOUND = Route(NOT_FOUND, control=True)
_GET = {
    "/v2/health/live": Route(LIVE),
    "/v2/health/ready": Route(READY),
    "/v2": Route(SERVER),
    "/metrics": Route(METRICS),
    "/edge/status": Route(STATUS),
}
_RELOAD = Route(RELOAD, control=True)
_REPOSITORY_INDEX = Route(REPOSITORY_INDEX)


# Routes of recent GET and POST paths. Clients ask for the same few paths
# over and over: a look-up here costs a quarter of parsing (~0.5 us a
# request less on the inference path). Bounded, and paths longer than a
# model name needs are not kept, so hostile paths cannot fill memory.
_SEEN: dict[str, dict[str, Route]] = {"GET": {}, "POST": {}}
SEEN_MAX = 256
SEEN_PATH_MAX = 256


def parse_route(method: str, path: str) -> Route:
    """The route of ``method`` ``path`` (already percent-decoded, without
    the query); ``kind`` NOT_FOUND when there is none."""
    seen = _SEEN.get(method)
    if seen is None:
        return _parse(method, path)
    route = seen.get(path)
    if route is None:
        route = _parse(method, path)
        if len(path) <= SEEN_PATH_MAX:
            if len(seen) >= SEEN_MAX:
                seen.clear()
            seen[path] = route
    return route


def _parse(method: str, path: str) -> Route:
    if path.startswith("/v2/models/"):
        parts = path[11:].split("/")
        if len(parts) == 2 and parts[1] == "infer":  # the hot path
            return Route(INFER, parts[0]) if method == "POST" else _NOT_FOUND
        name = parts[0]
        version = None
        rest = parts[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            version = rest[1]
            rest = rest[2:]
        if not rest:
            if method == "GET":
                return Route(MODEL, name, version)
        elif len(rest) == 1:
            if rest[0] == "infer" and method == "POST":
                return Route(INFER, name, version)
            if rest[0] == "ready" and method == "GET":
                return Route(MODEL_READY, name, version)
        return _NOT_FOUND
    if method == "GET":
        return _GET.get(path, _NOT_FOUND)
    if method == "POST":
        if path == "/v2/repository/index":
            return _REPOSITORY_INDEX
        if path.startswith("/v2/repository/models/"):  # the KServe/Triton repository extension
            parts = path[22:].split("/")
            if len(parts) == 2 and parts[1] in ("load", "unload"):
                return Route(MODEL_ACTION, parts[0], action=parts[1], control=True)
            return _CONTROL_NOT_FOUND
        if path.startswith("/edge/"):
            if path == "/edge/reload":
                return _RELOAD
            if path.startswith("/edge/models/"):
                parts = path[13:].split("/")
                if len(parts) == 2:
                    return Route(MODEL_ACTION, parts[0], action=parts[1], control=True)
            return _CONTROL_NOT_FOUND
    return _NOT_FOUND
