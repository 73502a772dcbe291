"""The cache key: a full BLAKE2b-256 digest of everything that decides an answer.

Every field is framed as tag + 8-byte length + bytes, so no two different
requests can produce the same preimage (no "ab"+"c" == "a"+"bc"). The model's
exact version digest is part of the key: a new version can never read another
version's entries, and after a rollback the older version's entries match again.

The key is computed for every request the cache looks up, hit or miss (all
of them unless the model samples, governor.py), so the common shapes are
precomputed: the hasher state after (scheme, model, version), the framed
name + datatype of each input, the tail of a request with no outputs listed and
no parameters. The preimage is byte for byte the same as the plain framing
(tests/cache/test_keys.py checks it), so existing disk entries stay valid.

A cheaper digest lives here too: ``input_fingerprint`` (which requests the
governor samples). The memo's key is memo.memo_key, framed the same way.
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
# Memo bounds: models x versions, input names x dtypes. Past them a memo is
# dropped and refilled, which only costs the slow path once per entry.
_MEMO_MAX = 256


def _frame(tag: bytes, data: bytes) -> bytes:
    return tag + _LEN.pack(len(data)) + data


def _field(h, tag: bytes, data: bytes | memoryview) -> None:
    h.update(tag)
    h.update(_LEN.pack(len(data)))
    h.update(data)


# dtype -> (V2 datatype, little-endian dtype to hash, or None when the array's
# bytes already are little-endian). '>f4' is still FP32, and hashes like '<f4'.
def _dtype_info(dtype: np.dtype) -> tuple[str, np.dtype | None]:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES", None
    datatype = NP_TO_V2[dtype.newbyteorder("=")]
    le = dtype.newbyteorder("<")
    return datatype, (None if le == dtype and le.isnative else le)


_DTYPES: dict[np.dtype, tuple[str, np.dtype | None]] = {}
_HEADS: dict[tuple[str, np.dtype], tuple[bytes, str, np.dtype | None]] = {}
_PREFIXES: dict[tuple[str, str], object] = {}
_SHAPES = [struct.Struct(f"<{n + 1}Q") for n in range(9)]
_EMPTY_TAIL_ALL_OUTPUTS = b"O*" + _frame(b"P", b"")


def _head(name: str, dtype: np.dtype) -> tuple[bytes, str, np.dtype | None]:
    """Framed name + datatype + the shape tag, for one (input name, dtype)."""
    found = _HEADS.get((name, dtype))
    if found is None:
        info = _DTYPES.get(dtype)
        if info is None:
            info = _DTYPES[dtype] = _dtype_info(dtype)
        datatype, le = info
        if len(_HEADS) >= _MEMO_MAX:
            _HEADS.clear()
        found = _HEADS[(name, dtype)] = (
            _frame(b"N", name.encode("utf-8")) + _frame(b"T", datatype.encode("ascii")) + b"S", datatype, le)
    return found


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
    head, datatype, le = _head(name, arr.dtype)
    shape = arr.shape
    ndim = len(shape)
    dims = _SHAPES[ndim].pack(8 * ndim, *shape) if ndim < len(_SHAPES) else (
        _LEN.pack(8 * ndim) + b"".join(_LEN.pack(d) for d in shape))
    if datatype == "BYTES":
        flat = arr.ravel()
        h.update(head + dims + b"B" + _LEN.pack(flat.size))
        for item in flat:
            b = _element_bytes(item)
            h.update(_LEN.pack(len(b)))
            h.update(b)
        return
    # Same values must give the same key whatever the sender's byte order or layout.
    if le is not None or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=le)
    h.update(head + dims + b"D" + _LEN.pack(arr.nbytes))
    h.update(arr.data if arr.ndim else arr.tobytes())


def _parameters(params: dict) -> bytes:
    kept = {k: v for k, v in params.items() if k not in IGNORED_PARAMETERS}
    if not kept:
        return b""
    # Canonical JSON: sorted keys, so {"a":1,"b":2} and {"b":2,"a":1} agree.
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)


def _prefix(model: str, version_digest: str):
    h = _PREFIXES.get((model, version_digest))
    if h is None:
        h = hashlib.blake2b(digest_size=32)
        _field(h, b"K", KEY_SCHEME)
        _field(h, b"M", model.encode("utf-8"))
        _field(h, b"V", version_digest.encode("utf-8"))
        if len(_PREFIXES) >= _MEMO_MAX:
            _PREFIXES.clear()
        _PREFIXES[(model, version_digest)] = h
    return h.copy()


def request_key(model: str, version_digest: str, req: InferRequest) -> bytes:
    """32-byte key of (model, exact version, inputs, requested outputs, answer-changing parameters)."""
    h = _prefix(model, version_digest)
    inputs = req.inputs
    h.update(b"I" + _LEN.pack(len(inputs)))
    if len(inputs) == 1:
        for name, arr in inputs.items():
            _tensor(h, name, arr)
    else:
        for name in sorted(inputs):
            _tensor(h, name, inputs[name])
    if req.outputs is None and not req.parameters:
        h.update(_EMPTY_TAIL_ALL_OUTPUTS)
        return h.digest()
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


# Native little-endian numeric dtypes: their arrays' bytes are hashed as they are.
_PLAIN: set[np.dtype] = set()
_MASK32 = 0xFFFFFFFF


def input_fingerprint(req: InferRequest) -> int:
    """A cheap 32-bit hash of the input tensors' values, for the cache
    governor's sample (governor.py): it decides, before any digest, whether
    a request is looked up at all. Not a key: it holds no model, shape or
    parameters, and collides. The same inputs always give the same value in
    one process, as they give the same key (byte order and layout normalised
    alike). Python's own hash of the bytes (SipHash): with zlib's CRC-32
    (table-driven) in its place, the loaded daemon's event loop spent about
    twice the CPU per request over the cache off (A/B runs), more than the
    0.3 us call itself, perhaps its tables evicting the loop's data from L1."""
    inputs = req.inputs
    if len(inputs) == 1:  # the common case, in ~0.2 us
        for arr in inputs.values():
            if arr.dtype in _PLAIN:
                return hash(arr.tobytes()) & _MASK32  # C order, whatever the layout
    parts = []
    for name in (inputs if len(inputs) == 1 else sorted(inputs)):
        arr = inputs[name]
        info = _DTYPES.get(arr.dtype)
        if info is None:
            info = _DTYPES[arr.dtype] = _dtype_info(arr.dtype)
        if info[0] == "BYTES":
            elements = [_element_bytes(item) for item in arr.ravel()]
            parts.append(b"".join(_LEN.pack(len(b)) + b for b in elements))
        elif info[1] is None:
            _PLAIN.add(arr.dtype)
            parts.append(arr.tobytes())
        else:
            parts.append(arr.astype(info[1]).tobytes())
    return hash(parts[0] if len(parts) == 1 else tuple(parts)) & _MASK32


__all__ = ["IGNORED_PARAMETERS", "input_fingerprint", "request_key"]
