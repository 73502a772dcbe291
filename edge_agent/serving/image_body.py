"""An encoded image sent as a whole body, and request parameters given as text.

Cameras send a JPEG, not a KServe v2 body: an HTTP body with ``Content-Type: image/*``
(its parameters in the query), an MQTT payload with an image content type or topic suffix.
``image_request`` makes it an InferRequest whose one input is ``types.IMAGE_BODY``; the
model gives it its image input's name (runtime/image_model.py). Nothing is decoded here:
decoding happens on the model's batcher thread. ``priority_from_text`` and
``timeout_ms_from_text`` read parameters given as text (the query, MQTT 5 user properties).
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

import numpy as np

from ..errors import MalformedRequest
from ..types import IMAGE_BODY, InferRequest
from .codec import MAX_NAME, _brief, parse_priority

# Query parameters an HTTP image body may carry (it has no JSON ``parameters``).
IMAGE_QUERY_KEYS = ("priority", "timeout_ms", "cache", "id")


def image_request(body: bytes, model: str, version: str | None, query: bytes = b"") -> InferRequest:
    """An encoded image sent as the whole body (HTTP ``Content-Type: image/*``, an MQTT payload
    with an image content type or topic suffix): one BYTES element under ``IMAGE_BODY``, which
    the model names as its image input (runtime/image_model.py). Nothing is decoded here.
    ``query`` (HTTP): ``priority=high&timeout_ms=50&cache=false&id=cam7-1042``."""
    arr = np.empty(1, dtype=object)
    arr[0] = body if type(body) is bytes else bytes(body)
    req = InferRequest(model=model, inputs={IMAGE_BODY: arr}, version=version)
    if query:
        _image_query(req, query)
    return req


def _image_query(req: InferRequest, query: bytes) -> None:
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=True, max_num_fields=len(IMAGE_QUERY_KEYS))
    except (UnicodeDecodeError, ValueError):
        raise MalformedRequest(f"the query must be at most {len(IMAGE_QUERY_KEYS)} of {'&'.join(k + '=...' for k in IMAGE_QUERY_KEYS)}") from None
    for key, value in pairs:
        if key == "priority":
            req.priority = priority_from_text(value, "query priority")
        elif key == "timeout_ms":
            req.timeout_s = timeout_ms_from_text(value, "query timeout_ms") / 1000.0
        elif key == "cache" and value in ("false", "true"):
            req.use_cache = value == "true"
        elif key == "id" and len(value) <= MAX_NAME:
            req.id = value
        else:
            raise MalformedRequest(f"query parameter {_brief(key)}={_brief(value)} is not one of {list(IMAGE_QUERY_KEYS)} "
                                   "(cache: true|false; id: at most 256 characters)")


def priority_from_text(value: str, what: str) -> int:
    """A priority given as text (an MQTT user property, an HTTP query): a name or ASCII digits."""
    if value.isascii() and value.isdigit():  # "²".isdigit() is True and int("²") raises
        try:
            return parse_priority(int(value))
        except ValueError:  # more digits than int() takes
            raise MalformedRequest(f"{what} is not a valid number: {value[:40]!r}...") from None
    return parse_priority(value)


def timeout_ms_from_text(value: str, what: str) -> float:
    """A positive, finite number of milliseconds given as text."""
    try:
        tm = float(value)
    except ValueError:
        tm = -1.0
    if not (tm > 0 and math.isfinite(tm)):
        raise MalformedRequest(f"{what} must be a positive number, got {value[:40]!r}")
    return tm
