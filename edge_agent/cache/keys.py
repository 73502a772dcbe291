"""The cache key: a full BLAKE2b-256 digest of everything that decides an answer.

Every field is framed as tag + 8-byte length + bytes, so no two different
requests can produce the same preimage (no "ab"+"c" == "a"+"bc"). The model's
exact version digest is part of the key: a new version can never read another
version's entries, and after a rollback the older version's entries match again.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import orjson

from ..types import NP_TO_V2, InferRequest

# Request parameters that only steer delivery or scheduling, never the answer.
# Any other parameter (post-processing such as top_k, thresholds) is keyed.
IGNORED_PARAMETERS = frozenset({"cache", "priority", "timeout_ms", "binary_data_output", "reply_to", "id"})

_LEN = struct.Struct("<Q")
KEY_SCHEME = b"edge-agent/cache-key/v1"


def _datatype(arr: np.ndarray) -> str:
    if arr.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    # types.v2_datatype knows native byte order only; a '>f4' is still FP32.
    return NP_TO_V2[arr.dtype.newbyteorder("=")]


def _field(h, tag: bytes, data: bytes | memoryview) -> None:
    h.update(tag)
    h.update(_LEN.pack(len(data)))
    h.update(data)


def _element_bytes(item) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        # Over the wire a BYTES element is bytes; a str holds the same UTF-8.
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")


def _tensor(h, name: str, arr: np.ndarray) -> None:
    datatype = _datatype(arr)
    _field(h, b"N", name.encode("utf-8"))
    _field(h, b"T", datatype.encode("ascii"))
    _field(h, b"S", b"".join(_LEN.pack(d) for d in arr.shape))
    if datatype == "BYTES":
        flat = arr.ravel()
        h.update(b"B")
        h.update(_LEN.pack(flat.size))
        for item in flat:
            b = _element_bytes(item)
            h.update(_LEN.pack(len(b)))
            h.update(b)
        return
    # Same values must give the same key whatever the sender's byte order.
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    _field(h, b"D", data.reshape(-1).view(np.uint8))


def _parameters(params: dict) -> bytes:
    kept = {k: v for k, v in params.items() if k not in IGNORED_PARAMETERS}
    if not kept:
        return b""
    # Canonical JSON: sorted keys, so {"a":1,"b":2} and {"b":2,"a":1} agree.
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)


def request_key(model: str, version_digest: str, req: InferRequest) -> bytes:
    """32-byte key of (model, exact version, inputs, requested outputs, answer-changing parameters)."""
    h = hashlib.blake2b(digest_size=32)
    _field(h, b"K", KEY_SCHEME)
    _field(h, b"M", model.encode("utf-8"))
    _field(h, b"V", version_digest.encode("utf-8"))
    names = sorted(req.inputs)
    h.update(b"I")
    h.update(_LEN.pack(len(names)))
    for name in names:
        _tensor(h, name, req.inputs[name])
    if req.outputs is None:
        # None (all outputs) must differ from an explicit empty list.
        h.update(b"O*")
    else:
        wanted = sorted(set(req.outputs))
        h.update(b"O")
        h.update(_LEN.pack(len(wanted)))
        for name in wanted:
            _field(h, b"n", name.encode("utf-8"))
    _field(h, b"P", _parameters(req.parameters or {}))
    return h.digest()


__all__ = ["IGNORED_PARAMETERS", "request_key"]
