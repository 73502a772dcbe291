"""Cached value codec (the disk form) and frozen outputs (the memory form).

The memory tier holds the answer itself, so a put costs no encoding and a
memory hit no decoding. An entry is frozen (read-only arrays that own their
bytes) at its first hit, not at put: most misses are never asked for again,
and they should cost as little as possible. Only an entry going to disk is
encoded, and that runs in the disk writer thread.

Disk layout: a small header plus the raw tensor buffers.

Layout (little-endian)::

    b"EAV1" | crc32 u32 (of everything after these 8 bytes) | count u32
    per tensor: name_len u16 | name | kind u8 | ndim u8 | shape u64 * ndim
                | payload_len u64 | zero pad to 8 | payload

Numeric payloads are the array bytes and decode without a copy (read-only
views of the stored value, which also keeps callers from mutating a shared
entry). BYTES payloads are 4-byte length + bytes per element, as in the v2
binary extension. The crc32 is checked only for values read from disk, where
a torn or bit-rotted page is possible; values held in memory were made here.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from ..errors import EdgeError
from ..types import NP_TO_V2, V2_TO_NP

MAGIC = b"EAV1"
_HEAD = struct.Struct("<4sII")
_TENSOR = struct.Struct("<HBB")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

# Kind codes are stored on disk: append only, never renumber.
_KINDS = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
          "FP16", "FP32", "FP64", "BYTES", "STRING")
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}
_DTYPES = {i: V2_TO_NP[k].newbyteorder("<") for i, k in enumerate(_KINDS) if k in V2_TO_NP and k != "BYTES"}


class CorruptCacheValue(EdgeError):
    """A stored cache value does not decode; it is dropped and treated as a miss."""

    code = "cache_value_corrupt"
    http_status = 500


# dtype -> kind code (BYTES for object/str arrays), filled on first sight: a
# dict lookup instead of building a byte-order-swapped dtype per tensor.
_KIND_OF: dict[np.dtype, int | None] = {}
# Per-object bookkeeping of a frozen tensor (array header, dict slot) and of
# each element of a BYTES tensor (the bytes/str object header).
ARRAY_OVERHEAD = 112
ELEMENT_OVERHEAD = 40


def kind_of(dtype: np.dtype) -> int | None:
    """Kind code of a dtype, None when the codec cannot hold it."""
    try:
        return _KIND_OF[dtype]
    except KeyError:
        pass
    if dtype.kind in ("O", "S", "U"):
        kind = _KIND_CODE["BYTES"]
    else:
        # types.v2_datatype knows native byte order only; a '>f4' is still FP32.
        v2 = NP_TO_V2.get(dtype.newbyteorder("="))
        kind = _KIND_CODE.get(v2) if v2 is not None else None
    if len(_KIND_OF) < 256:
        _KIND_OF[dtype] = kind
    return kind


_BYTES_KIND = _KIND_CODE["BYTES"]


# A row of a batch is a view that keeps the whole batch's buffer alive, so
# prepare_outputs copies it: an entry holds its own bytes only, which is what
# the memory bound counts. (Holding views had each entry of a sampled stream,
# one stored request per batch, pin a whole batch: ~8 KB of RSS per ~1 KB
# entry, and fresh pages for every batch.) Puts run on the batcher's worker
# thread, so the copy is not the event loop's.


def prepare_outputs(outputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int] | None:
    """The memory form of a fresh answer and its size in bytes, or None when
    the codec could not store it (so neither tier caches it). Cheap: it runs
    on every miss. The arrays are not made read-only yet (see freeze_outputs)."""
    value = {}
    size = 0
    for name, arr in outputs.items():
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
        kind = _KIND_OF.get(arr.dtype, -1)
        if kind == -1:
            kind = kind_of(arr.dtype)
        if kind is None:
            return None
        base = arr.base
        if base is not None and type(base) is np.ndarray and base.nbytes > arr.nbytes:
            arr = arr.copy()
        size += arr.nbytes + ARRAY_OVERHEAD + len(name)
        if kind == _BYTES_KIND:
            for item in arr.flat:
                size += ELEMENT_OVERHEAD + (len(item) if isinstance(item, (bytes, str)) else 64)
        value[name] = arr
    return value, size


def freeze_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays fit to hand to any number of callers: read-only, and owning their
    bytes (a view into a larger buffer, one row of a batch, is copied)."""
    frozen = {}
    for name, arr in outputs.items():
        base = arr.base
        if base is not None and type(base) is np.ndarray and base.nbytes > arr.nbytes:
            arr = arr.copy()
        if arr.flags.writeable:
            arr.setflags(write=False)
        frozen[name] = arr
    return frozen


def _pad(n: int) -> int:
    return -n % 8


def _bytes_payload(arr: np.ndarray) -> tuple[int, bytes]:
    flat = arr.ravel()
    # ONNX Runtime hands back str for string tensors; keep that type on a hit.
    as_str = flat.size > 0 and all(isinstance(x, str) for x in flat)
    parts = []
    for item in flat:
        if isinstance(item, str):
            b = item.encode("utf-8", "surrogatepass")
        elif isinstance(item, (bytes, bytearray, memoryview)):
            b = bytes(item)
        else:
            b = str(item).encode("utf-8")
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return _KIND_CODE["STRING" if as_str else "BYTES"], b"".join(parts)


def encode_outputs(outputs: dict[str, np.ndarray]) -> bytes:
    parts: list = []
    pos = _HEAD.size
    for name, arr in outputs.items():
        arr = np.asarray(arr)
        kind = kind_of(arr.dtype)
        if kind is None:
            raise TypeError(f"output '{name}': dtype {arr.dtype} has no KServe v2 datatype")
        if kind == _BYTES_KIND:
            kind, payload = _bytes_payload(arr)
        else:
            payload = np.ascontiguousarray(arr, dtype=_DTYPES[kind]).reshape(-1).view(np.uint8)
        bname = name.encode("utf-8")
        ndim = arr.ndim
        head = _TENSOR.pack(len(bname), kind, ndim) + bname
        head += struct.pack(f"<{ndim + 1}Q", *arr.shape, len(payload))
        head += b"\0" * _pad(pos + len(head))
        parts.append(head)
        parts.append(payload)
        pos += len(head) + len(payload)
    tail = _U32.pack(len(outputs)) + b"".join(parts)
    return MAGIC + _U32.pack(zlib.crc32(tail)) + tail


def _decode_bytes(buf: memoryview, count: int, as_str: bool) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        (n,) = _U32.unpack_from(buf, pos)
        pos += 4
        if pos + n > len(buf):
            raise CorruptCacheValue(f"BYTES element {i} overruns its tensor")
        b = bytes(buf[pos : pos + n])
        out[i] = b.decode("utf-8", "surrogatepass") if as_str else b
        pos += n
    if pos != len(buf):
        raise CorruptCacheValue("trailing bytes after BYTES elements")
    return out


def decode_outputs(blob: bytes, verify: bool = True) -> dict[str, np.ndarray]:
    """Inverse of encode_outputs. Raises CorruptCacheValue on any inconsistency."""
    try:
        magic, crc, count = _HEAD.unpack_from(blob, 0)
        if magic != MAGIC:
            raise CorruptCacheValue("bad magic")
        if verify and zlib.crc32(memoryview(blob)[8:]) != crc:
            raise CorruptCacheValue("checksum mismatch")
        view = memoryview(blob)
        pos = _HEAD.size
        out: dict[str, np.ndarray] = {}
        for _ in range(count):
            name_len, kind, ndim = _TENSOR.unpack_from(blob, pos)
            pos += _TENSOR.size
            name = bytes(view[pos : pos + name_len]).decode("utf-8")
            pos += name_len
            shape = struct.unpack_from(f"<{ndim}Q", blob, pos)
            pos += 8 * ndim
            (size,) = _U64.unpack_from(blob, pos)
            pos += 8
            pos += _pad(pos)
            if pos + size > len(blob) or kind >= len(_KINDS):
                raise CorruptCacheValue(f"tensor '{name}' overruns the value")
            n = math.prod(shape)
            if kind in _DTYPES:
                dtype = _DTYPES[kind]
                if n * dtype.itemsize != size:
                    raise CorruptCacheValue(f"tensor '{name}' size does not match its shape")
                arr = np.frombuffer(blob, dtype=dtype, count=n, offset=pos).reshape(shape)
            else:
                arr = _decode_bytes(view[pos : pos + size], n, _KINDS[kind] == "STRING").reshape(shape)
            out[name] = arr
            pos += size
        if pos != len(blob):
            raise CorruptCacheValue("trailing bytes after the last tensor")
        return out
    except CorruptCacheValue:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise CorruptCacheValue(f"undecodable cache value: {exc}") from exc


__all__ = ["CorruptCacheValue", "decode_outputs", "encode_outputs", "freeze_outputs", "kind_of", "prepare_outputs"]
