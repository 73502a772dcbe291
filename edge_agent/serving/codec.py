"""KServe v2 (Open Inference Protocol) body <-> InferRequest / InferResponse.

Shared by every transport. Handles the JSON form and the binary-tensor
extension (``Inference-Header-Content-Length``: the first N bytes are the JSON
header, binary tensors follow in input order). Decoding checks structure and
turns data into numpy arrays; checking against a model signature is the
service's job (validation.py).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson

from ..errors import InvalidInput, MalformedRequest
from ..types import PRIORITY_HIGH, PRIORITY_NAMES, V2_TO_NP, InferRequest, InferResponse, v2_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
_OPT = orjson.OPT_SERIALIZE_NUMPY


def parse_priority(value) -> int:
    if isinstance(value, str):
        try:
            return PRIORITY_NAMES[value.lower()]
        except KeyError:
            raise MalformedRequest(f"parameters.priority must be one of {sorted(PRIORITY_NAMES)}, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        # 0 is the highest level; everything above high is normal.
        return PRIORITY_HIGH if value == PRIORITY_HIGH else PRIORITY_NAMES["normal"]
    raise MalformedRequest(f"parameters.priority must be 'high', 'normal' or an integer >= 0, got {value!r}")


def decode_bytes_tensor(raw: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Binary BYTES: each element is a 4-byte little-endian length then the bytes."""
    out = np.empty(count, dtype=object)
    pos = 0
    raw = bytes(raw)
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input '{name}': binary BYTES data ends early at element {i}")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidInput(f"input '{name}': binary BYTES element {i} overruns the data")
        out[i] = raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise InvalidInput(f"input '{name}': {len(raw) - pos} trailing bytes after {count} BYTES elements")
    return out


def encode_bytes_tensor(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.ravel():
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_bytes_data(data, count: int, name: str) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(f"input '{name}': shape needs {count} elements, data has {len(flat)}")
    out = np.empty(count, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            out[i] = item.encode("utf-8", "surrogatepass")
        elif isinstance(item, (bytes, bytearray)):
            out[i] = bytes(item)
        else:
            raise InvalidInput(f"input '{name}': BYTES data must be strings, element {i} is {type(item).__name__}")
    return out


def _flatten(data) -> list:
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        out: list = []
        for d in data:
            out.extend(_flatten(d))
        return out
    return data


def decode_request(
    body: bytes,
    model: str,
    version: str | None = None,
    header_length: int | None = None,
) -> InferRequest:
    """Decode a v2 infer body. Raises MalformedRequest / InvalidInput."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise MalformedRequest(f"{HEADER_LENGTH} {header_length} is outside the body of {len(body)} bytes")
        json_part = body[:header_length]
        binary = memoryview(body)[header_length:]
    else:
        json_part = body
        binary = None
    try:
        doc = orjson.loads(json_part)
    except orjson.JSONDecodeError as e:
        raise MalformedRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise MalformedRequest("body must be a JSON object")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise MalformedRequest("'inputs' must be a non-empty list")

    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise MalformedRequest("'parameters' must be an object")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for idx, t in enumerate(inputs_doc):
        if not isinstance(t, dict):
            raise MalformedRequest(f"inputs[{idx}] must be an object")
        name = t.get("name")
        shape = t.get("shape")
        datatype = t.get("datatype")
        if not isinstance(name, str):
            raise MalformedRequest(f"inputs[{idx}].name must be a string")
        if name in inputs:
            raise MalformedRequest(f"input '{name}' given twice")
        # type() is int: True and False are ints to isinstance.
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise MalformedRequest(f"input '{name}': shape must be a list of non-negative integers")
        dtype = V2_TO_NP.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise InvalidInput(f"input '{name}': unknown datatype {datatype!r}")
        count = math.prod(shape)
        tparams = t.get("parameters") or {}
        bsize = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if bsize is not None:
            if binary is None:
                raise MalformedRequest(f"input '{name}' has binary_data_size but the request has no {HEADER_LENGTH}")
            if not isinstance(bsize, int) or bsize < 0 or offset + bsize > len(binary):
                raise MalformedRequest(f"input '{name}': binary_data_size {bsize} overruns the binary data")
            raw = binary[offset : offset + bsize]
            offset += bsize
            if datatype == "BYTES":
                arr = decode_bytes_tensor(raw, count, name)
            else:
                if bsize != count * dtype.itemsize:
                    raise InvalidInput(
                        f"input '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {bsize}"
                    )
                arr = np.frombuffer(raw, dtype=dtype).copy()
        else:
            data = t.get("data")
            if data is None:
                raise MalformedRequest(f"input '{name}' has neither 'data' nor binary_data_size")
            if datatype == "BYTES":
                arr = _json_bytes_data(data, count, name)
            else:
                try:
                    arr = np.asarray(data, dtype=dtype)
                except (ValueError, TypeError, OverflowError) as e:
                    raise InvalidInput(f"input '{name}': data does not fit datatype {datatype}: {e}") from None
                if arr.size != count:
                    raise InvalidInput(f"input '{name}': shape {shape} needs {count} elements, data has {arr.size}")
        inputs[name] = arr.reshape(shape)
    if binary is not None and offset != len(binary):
        raise MalformedRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    outputs = None
    binary_outputs: set[str] = set()
    out_doc = doc.get("outputs")
    if out_doc is not None:
        if not isinstance(out_doc, list):
            raise MalformedRequest("'outputs' must be a list")
        outputs = []
        for o in out_doc:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise MalformedRequest("each entry of 'outputs' needs a string 'name'")
            outputs.append(o["name"])
            op = o.get("parameters") or {}
            if isinstance(op, dict) and op.get("binary_data"):
                binary_outputs.add(o["name"])
    all_binary = bool(params.get("binary_data_output"))

    req = InferRequest(model=model, version=version, inputs=inputs, outputs=outputs)
    rid = doc.get("id")
    if rid is not None:
        req.id = str(rid)
    if "priority" in params:
        req.priority = parse_priority(params["priority"])
    if "timeout_ms" in params:
        tm = params["timeout_ms"]
        if not isinstance(tm, (int, float)) or isinstance(tm, bool) or tm <= 0:
            raise MalformedRequest("parameters.timeout_ms must be a positive number")
        req.timeout_s = tm / 1000.0
    if params.get("cache") is False:
        req.use_cache = False
    req.binary_outputs = frozenset(binary_outputs) if not all_binary else frozenset({"*"})
    req.parameters = params
    return req


def response_dict(resp: InferResponse, binary: frozenset[str] = frozenset()) -> tuple[dict, list[bytes]]:
    outs = []
    blobs: list[bytes] = []
    all_binary = "*" in binary
    for name, arr in resp.outputs.items():
        dt = v2_datatype(arr)
        # orjson writes the shape tuple as a JSON list.
        entry: dict = {"name": name, "datatype": dt, "shape": arr.shape}
        if binary and (all_binary or name in binary):
            blob = encode_bytes_tensor(arr) if dt == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif dt == "BYTES":
            entry["data"] = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in arr.ravel()]
        else:
            entry["data"] = arr.ravel()  # C order, contiguous: orjson writes it as a flat list
        outs.append(entry)
    doc: dict = {"model_name": resp.model, "model_version": resp.version, "outputs": outs}
    if resp.id is not None:
        doc["id"] = resp.id
    if resp.cached:
        doc["parameters"] = {**resp.parameters, "cached": True}
    elif resp.parameters:
        doc["parameters"] = dict(resp.parameters)
    return doc, blobs


def encode_response(resp: InferResponse, binary: frozenset[str] = frozenset()) -> tuple[bytes, int | None]:
    """Returns (body, header_length); header_length is None for plain JSON."""
    doc, blobs = response_dict(resp, binary)
    head = orjson.dumps(doc, option=_OPT)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def encode_error(err) -> bytes:
    return orjson.dumps(err.to_dict())
