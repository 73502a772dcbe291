"""The one request/response pair every transport decodes into and encodes from.

No transport knows about batching, caching or models; the core knows nothing of
MQTT or HTTP. Tensors are numpy arrays already in the model's dtype; BYTES
tensors are object arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import field

import numpy as np

from .compat import slotted_dataclass

PRIORITY_HIGH = 0
PRIORITY_NORMAL = 1
PRIORITY_NAMES = {"high": PRIORITY_HIGH, "normal": PRIORITY_NORMAL}

# KServe v2 datatype <-> numpy dtype.
V2_TO_NP: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NP_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NP.items()}

# The input name of an image sent as the whole body (HTTP ``Content-Type: image/png``, an MQTT
# payload with an image content type): a one-element BYTES array the model gives its own image
# input's name (runtime/image_model.py ``resolve_image_body``). Not a name a model can declare.
IMAGE_BODY = "$image"


# Each dtype seen so far -> its datatype: a response names the datatype of
# each output, so this is on the request path. Fixed-width strings ('<U7')
# are a dtype per width, so they are not remembered: the rest are a handful.
_V2_SEEN: dict[np.dtype, str] = {np.dtype(object): "BYTES"}


def v2_datatype(arr: np.ndarray) -> str:
    dt = arr.dtype
    name = _V2_SEEN.get(dt)
    if name is None:
        if dt.kind in ("O", "S", "U"):
            return "BYTES"
        # Byte order does not change the datatype ('>f4' is still FP32).
        # An unsupported dtype raises KeyError, and is not remembered.
        name = _V2_SEEN[dt] = NP_TO_V2[dt.newbyteorder("=")]
    return name


@slotted_dataclass
class InferRequest:
    model: str
    inputs: dict[str, np.ndarray]
    version: str | None = None
    id: str | None = None
    # Names of outputs asked for; None means all.
    outputs: list[str] | None = None
    # Outputs the client wants in the binary-tensor extension (transport detail
    # carried through so the response encoder can honour it).
    binary_outputs: frozenset[str] = frozenset()
    priority: int = PRIORITY_NORMAL
    # Absolute time.monotonic() after which the request must not run; the
    # service fills in the priority's default when None.
    deadline: float | None = None
    # parameters.timeout_ms: may shorten, never lengthen, the priority's default.
    timeout_s: float | None = None
    # parameters: {"cache": false} bypasses the response cache.
    use_cache: bool = True
    parameters: dict = field(default_factory=dict)
    # Client identity for rate limiting and logs (MQTT client id, socket peer).
    client: str | None = None
    # time.monotonic() when the request arrived (HTTP: its first byte was
    # parsed; MQTT: the message was received). Deadlines count from here,
    # not from decoding, so time spent behind other work on the event loop
    # is part of the budget. None: the service counts from when it sees it.
    arrived: float | None = None


@slotted_dataclass
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    cached: bool = False
    parameters: dict = field(default_factory=dict)
    # The cache key a cached answer was found under (for the memo of encoded answers).
    cache_key: bytes | None = None
