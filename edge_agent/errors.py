"""The project's error hierarchy.

Errors travel as data: every error has a stable ``code`` (part of the wire
contract, never renamed), a human message, and the HTTP status the socket
transport maps it to. Third-party exceptions are turned into these where they
enter the project.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class; ``code`` is stable and documented in docs/PROTOCOL.md."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict:
        body = {"error": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class MalformedRequest(EdgeError):
    """The body is not a valid inference request (bad JSON, missing fields)."""

    code = "malformed_request"
    http_status = 400


class InvalidInput(EdgeError):
    """A tensor does not match the model signature (name, shape, datatype)."""

    code = "invalid_input"
    http_status = 400


class PayloadTooLarge(EdgeError):
    """The request body or MQTT payload is over the configured limit."""

    code = "payload_too_large"
    http_status = 413


class UriTooLong(EdgeError):
    """The request line's URL is over server.limits.max_url_bytes; refused as its bytes arrive."""

    code = "uri_too_long"
    http_status = 414


class HeaderTooLarge(EdgeError):
    """The request head (request line and headers) is over server.limits.max_head_bytes."""

    code = "header_too_large"
    http_status = 431


class RequestTimeout(EdgeError):
    """The client sent its request too slowly (head not complete in time, or a stalled body)."""

    code = "request_timeout"
    http_status = 408


class UnknownModel(EdgeError):
    """No model of that name is served."""

    code = "unknown_model"
    http_status = 404


class UnknownVersion(EdgeError):
    """The model is served, but not in that version."""

    code = "unknown_version"
    http_status = 404


class NotFound(EdgeError):
    """No such endpoint (method + path)."""

    code = "not_found"
    http_status = 404


class ModelNotReady(EdgeError):
    """The model or version exists on disk but failed to load."""

    code = "model_not_ready"
    http_status = 503


class Overloaded(EdgeError):
    """The daemon cannot take the request now (a model's queue is full, the event loop lags, the request arrived too late to make its deadline, or too many connections are open); it was refused at once, not run."""

    code = "overloaded"
    http_status = 503
    # Why, for the metrics (edge_agent_request_errors_total{reason}): queue_full, loop_lag, late.
    reason = ""

    def __init__(self, message: str, reason: str | None = None, **details: object) -> None:
        super().__init__(message, **details)
        if reason is not None:
            self.reason = reason


class DeadlineExceeded(EdgeError):
    """The request's deadline passed before it could run; it was not run."""

    code = "deadline_exceeded"
    http_status = 504


class ShuttingDown(EdgeError):
    """The daemon is draining for a stop, or the version is being unloaded."""

    code = "shutting_down"
    http_status = 503


class RateLimited(EdgeError):
    """The client sent more than its token bucket allows (MQTT)."""

    code = "rate_limited"
    http_status = 429


class ReplyTopicRefused(EdgeError):
    """An MQTT request named a reply topic answers may not go to (wildcard, $-topic, too long, a
    device's command/status topic, fleet/..., or outside mqtt.reply_topics); answered on the default
    response topic instead."""

    code = "reply_topic_refused"
    http_status = 403


class InvalidText(EdgeError):
    """A BYTES input is not valid UTF-8."""

    code = "invalid_utf8"
    http_status = 400


class SequenceTooLong(EdgeError):
    """A text is longer than the model's max_length and model.yaml says on_overflow: error."""

    code = "sequence_too_long"
    http_status = 400


class InferenceFailed(EdgeError):
    """ONNX Runtime raised while running a batch."""

    code = "inference_failed"
    http_status = 500


class ConfigError(EdgeError):
    """Configuration is invalid; the message names the key path and line."""

    code = "config_invalid"
    http_status = 400


class ModelLoadError(EdgeError):
    """A model directory could not be loaded (bad graph, model.yaml mismatch)."""

    code = "model_load_failed"
    http_status = 500


class Unauthorized(EdgeError):
    """A control endpoint was asked without a valid credential (TCP: no or a wrong bearer token)."""

    code = "unauthorized"
    http_status = 401


class Forbidden(EdgeError):
    """The caller is known but may not use control endpoints (socket: not root, the daemon's user or
    in server.admin_group; TCP: no server.tcp.token_file configured)."""

    code = "forbidden"
    http_status = 403


class InsufficientMemory(ModelLoadError):
    """Loading a model version (start-up, reload, OTA staging or canary) or building its TensorRT engine
    would leave less memory available than memory.min_available_mb: refused before loading, the versions
    already loaded keep serving (runtime/memory.py). A load error, so OTA ends the update failed with it."""

    code = "insufficient_memory"
    http_status = 503


class InputTooLarge(EdgeError):
    """A request's tensors are over a limit of the model's model.yaml `limits` (elements, pixels, text
    bytes, tokens); refused before it is queued, the message names the limit and the input."""

    code = "input_too_large"
    http_status = 413


class InvalidImage(EdgeError):
    """An image input is not an image the daemon decodes: zero bytes, not an accepted format,
    a corrupt or truncated file, or a colour mode / channel count the model does not take."""

    code = "invalid_image"
    http_status = 400


class ImageTooLarge(EdgeError):
    """An image input is over its model's limits (model.yaml ``image``: max_bytes of encoded
    data, or max_pixels / max_side as its header claims, checked before decoding)."""

    code = "image_too_large"
    http_status = 413


class RolloutLeaseHeld(EdgeError):
    """`edge-agent fleet`: another controller holds the rollout's lease (in its retained record,
    fleet/{group}/rollouts/{id}) and renewed it recently; two controllers never drive one rollout."""

    code = "rollout_lease_held"
    http_status = 409


class RolloutNotFound(EdgeError):
    """`edge-agent fleet`: no rollout of that id, neither in the local state directory nor retained
    on the broker."""

    code = "rollout_not_found"
    http_status = 404


class BrokerLost(EdgeError):
    """`edge-agent fleet`: the controller lost its broker connection mid-rollout (or its
    publishes went unacknowledged for a lease) and stopped rather than decide on what it no
    longer hears; the rollout record is saved and `fleet resume` continues it."""

    code = "broker_lost"
    http_status = 503
