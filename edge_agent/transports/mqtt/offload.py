"""Edge side of companion offload: send a request to a companion host over MQTT.

The request goes to ``{offload.prefix}/offload/{model}[/{version}]``, which the
companion daemons share through ``$share/{group}/...`` (the broker hands each
message to one of them), with MQTT 5 ResponseTopic ``{mqtt.prefix}/{device}/offload-replies``
and a fresh CorrelationData. Tensors travel in the binary-tensor extension both
ways, so the numbers that come back are bit for bit the companion's.

``InferenceService`` asks ``wants(mv)`` (is the local queue too deep?) or
``wants_unavailable(model)`` (not served here) and then awaits ``offload(req)``:
an InferResponse with ``parameters.offloaded_to = "companion"``, or None meaning
"run it locally after all", or, for a model that cannot run here, the routing
error again with the reason offloading failed. docs/MQTT.md has the wire details.

A circuit breaker (breaker.py, ``offload.breaker``) stands in front: after
``failures`` offloads nobody answered within ``window_s`` it opens, and for
``open_s`` no request is offloaded: busy models run here at once, models that
cannot run here get their routing error at once. Then one request probes.
Only an unanswered offload (timeout, broker unreachable) is a failure: an
answer, an error answer included, shows a companion is there.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson
from prometheus_client import Counter, Gauge

from ...breaker import GAUGE_VALUE, Breaker, BreakerState
from ...config import OffloadConfig
from ...errors import EdgeError, MalformedRequest
from ...serving.codec import decode_request, encode_bytes_tensor
from ...types import PRIORITY_HIGH, InferRequest, InferResponse, v2_datatype
from .topics import offload_topic

log = logging.getLogger(__name__)

OFFLOADS = Counter(
    "edge_agent_offload_total",
    "Requests sent to a companion, by model and outcome: ok, timeout_fallback (ran locally), "
    "timeout (could not run locally), error (companion error or broker unreachable), "
    "breaker_open (not sent: the breaker is open; answered with the routing error).",
    ["model", "outcome"],
)
BREAKER_STATE = Gauge(
    "edge_agent_offload_breaker_state",
    "The offload circuit breaker: 0 closed (offloading), 1 half-open (one probe out), 2 open (not offloading).",
)
BREAKER_OPENED = Counter("edge_agent_offload_breaker_opened_total", "Times the offload circuit breaker opened.")
OFFLOADED_TO = "companion"
# Parameters that steer this hop only; the rest (post-processing options) travels on.
_HOP_PARAMETERS = frozenset({"reply_to", "id", "binary_data_output", "timeout_ms", "priority"})
# Bound on distinct model labels: unknown model names come from clients.
_MAX_LABELS = 64


def _error_classes() -> dict[str, type[EdgeError]]:
    out: dict[str, type[EdgeError]] = {}
    todo = [EdgeError]
    while todo:
        cls = todo.pop()
        out.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return out


def remote_error(doc: dict) -> EdgeError:
    """The companion's {"error", "code"} as the EdgeError of that code (same HTTP status)."""
    code = doc.get("code") if isinstance(doc.get("code"), str) else "internal"
    cls = _error_classes().get(code)
    err = (cls or EdgeError)(f"companion: {doc.get('error')}")
    if cls is None:
        err.code = code  # a code this version does not know still travels unchanged
    return err


def encode_offload_request(req: InferRequest, budget_s: float) -> tuple[bytes, int]:
    """The v2 body of ``req`` for the companion: every tensor binary, outputs asked binary."""
    inputs, blobs = [], []
    for name, arr in req.inputs.items():
        dt = v2_datatype(arr)
        blob = encode_bytes_tensor(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes()
        inputs.append({"name": name, "datatype": dt, "shape": list(arr.shape), "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    params = {k: v for k, v in req.parameters.items() if k not in _HOP_PARAMETERS}
    params["priority"] = "high" if req.priority == PRIORITY_HIGH else "normal"
    params["timeout_ms"] = max(1, int(budget_s * 1000))
    params["binary_data_output"] = True
    if not req.use_cache:
        params["cache"] = False
    doc: dict = {"inputs": inputs, "parameters": params}
    if req.id is not None:
        doc["id"] = req.id
    if req.outputs is not None:
        doc["outputs"] = [{"name": n} for n in req.outputs]
    head = orjson.dumps(doc)
    return head + b"".join(blobs), len(head)


def decode_offload_answer(payload: bytes, header_length: int | None, req: InferRequest) -> InferResponse:
    """The companion's answer as an InferResponse; its error answer raised as EdgeError."""
    try:
        head = payload[:header_length] if header_length is not None else payload
        if header_length is not None and not 0 <= header_length <= len(payload):
            raise ValueError(f"header length {header_length} outside the answer")
        doc = orjson.loads(head)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise MalformedRequest(f"companion answer is not a v2 response: {e}") from None
    if "error" in doc:
        raise remote_error(doc)
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or not isinstance(doc.get("model_name"), str):
        raise MalformedRequest("companion answer has no 'outputs' list or 'model_name'")
    # An output entry has the shape of an input entry: reuse the codec's decoder
    # (binary tensors, BYTES, every size check) by presenting them as inputs.
    relabel = orjson.dumps({"inputs": outputs})
    blobs = payload[header_length:] if header_length is not None else b""
    decoded = decode_request(relabel + blobs, doc["model_name"], None, len(relabel) if header_length is not None else None)
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    cached = bool(params.pop("cached", False))
    params["offloaded_to"] = OFFLOADED_TO
    return InferResponse(
        model=doc["model_name"], version=str(doc.get("model_version", "")), outputs=decoded.inputs,
        id=req.id, cached=cached, parameters=params,
    )


class Offloader:
    """Decides which requests leave the unit and carries them (one per daemon)."""

    def __init__(self, cfg: OffloadConfig, transport) -> None:
        self.cfg = cfg
        self.transport = transport
        self._models = frozenset(cfg.models)
        b = cfg.breaker
        self.breaker = Breaker(b.failures, b.window_s, b.open_s, probe_timeout_s=cfg.timeout_s + 1.0,
                               on_change=self._breaker_moved)
        BREAKER_STATE.set(0)
        self._labels: set[str] = set()
        transport.enable_offload_replies()

    def _covers(self, model: str) -> bool:
        return not self._models or model in self._models

    def wants(self, mv) -> bool:
        """Offload instead of queueing on ``mv`` (a served ModelVersion)?"""
        return (
            mv.batcher.queued > self.cfg.queue_depth_over
            and self._covers(mv.name)
            and self.transport.connected
            and self.breaker.allow()  # last: in half-open, a True makes this request the probe
        )

    def wants_unavailable(self, model: str) -> bool:
        """Offload a request for a model or version not served here?"""
        return self.cfg.also_when_unavailable and self._covers(model)

    def _count(self, model: str, outcome: str) -> None:
        if model not in self._labels:
            if len(self._labels) >= _MAX_LABELS:
                model = "other"
            else:
                self._labels.add(model)
        OFFLOADS.labels(model, outcome).inc()

    @staticmethod
    def _breaker_moved(state: BreakerState) -> None:
        BREAKER_STATE.set(GAUGE_VALUE[state])
        if state is BreakerState.OPEN:
            BREAKER_OPENED.inc()
        log.warning("offload: circuit breaker %s", state.value)

    def status(self) -> dict:
        """The daemon's status ``offload`` section."""
        return {"breaker": self.breaker.status()}

    async def offload(self, req: InferRequest, unavailable: EdgeError | None = None) -> InferResponse | None:
        """The companion's answer; None = run locally; raises when it cannot run locally.

        ``unavailable`` is the routing error the request got here (it cannot
        run locally): when offloading fails it is raised again, saying why.
        """
        budget = self.cfg.timeout_s
        if req.timeout_s is not None:
            budget = min(budget, req.timeout_s)
        if req.deadline is not None:
            budget = min(budget, req.deadline - time.monotonic())
        topic = offload_topic(self.cfg.prefix, req.model, req.version)
        if unavailable is not None and not self.breaker.allow():  # wants() asked it for busy models
            self._count(req.model, "breaker_open")
            raise type(unavailable)(f"{unavailable.message}; not offloaded: companions did not answer lately "
                                    f"(offload breaker {self.breaker.state.value})") from None
        try:
            if budget <= 0:
                raise TimeoutError("no time left before the request's deadline")
            payload, header_length = encode_offload_request(req, budget)
            try:
                answer, answer_hl = await self.transport.request(topic, payload, header_length, budget)
            except (TimeoutError, ConnectionError):
                self.breaker.failure()
                raise
            self.breaker.success()  # an answer, even an error, shows a companion is there
            resp = decode_offload_answer(answer, answer_hl, req)
        except TimeoutError:
            if unavailable is None:
                self._count(req.model, "timeout_fallback")
                log.warning("offload: no companion answered %s within %.3g s; running it here (breaker %s)",
                            topic, budget, self.breaker.state.value)
                return None
            self._count(req.model, "timeout")
            raise type(unavailable)(f"{unavailable.message}; no companion answered on {topic} within {budget:.3g} s") from None
        except ConnectionError as e:
            self._count(req.model, "error")
            if unavailable is None:
                return None
            raise type(unavailable)(f"{unavailable.message}; cannot offload it: {e}") from None
        except EdgeError as e:
            self._count(req.model, "error")
            if unavailable is None:
                # Validated here, so the companion's model or load is at fault: run it locally.
                log.warning("offload: companion answered %s with %s (%s); running it here", topic, e.code, e.message)
                return None
            raise
        self._count(req.model, "ok")
        return resp
