"""KServe v2 (Open Inference Protocol) body <-> InferRequest / InferResponse.

Shared by every transport. Handles the JSON form and the binary-tensor
extension (``Inference-Header-Content-Length``: the first N bytes are the JSON
header, binary tensors follow in input order). Decoding checks structure and
turns data into numpy arrays; checking against a model's signature is
``LoadedModel.prepare``'s job (runtime/session.py).

The body is hostile until decoded: every size it claims (a shape's element
count, ``binary_data_size``, the JSON header's length) is checked against the
bytes actually present before anything is allocated for it, JSON nesting is
walked without recursion and bounded, and what numpy or Python would raise on
a hostile value becomes a coded 4xx ``EdgeError``. So what one request can make
the daemon allocate is a small multiple of its body (itself capped by
``server.max_body_bytes`` / ``mqtt.max_payload_bytes``), never what it claims.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson

from ..errors import InvalidInput, MalformedRequest, PayloadTooLarge
from ..types import IMAGE_BODY, PRIORITY_HIGH, PRIORITY_NAMES, V2_TO_NP, InferRequest, InferResponse, v2_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"
_OPT = orjson.OPT_SERIALIZE_NUMPY

# Dimensions of one tensor. numpy's own limit is 64 (32 before numpy 2); no
# served model comes near. Checked first, so a shape of a million entries
# costs one len() before it is refused.
MAX_RANK = 32
# Nesting of a tensor's JSON ``data`` and of request ``parameters``: data can
# nest no deeper than a tensor's rank; parameters are echoed and hashed
# (orjson refuses to write past depth 255, Python's repr() recurses).
MAX_DEPTH = MAX_RANK
# An input's name is echoed in error messages and logs: names are identifiers.
MAX_NAME = 256
# Each binary BYTES element carries at least its 4-byte length.
_BYTES_LEN = 4
# BYTES elements of one input: each costs a Python step on the event loop
# (~0.25 us binary, ~0.13 us JSON); 2 million empty ones in an 8 MiB body
# held the loop 0.5 s (review of issue 15). At this bound, ~16 ms at most.
# Texts and images come a few to a few hundred per request.
MAX_BYTES_ELEMENTS = 65536


def _check_bytes_count(count: int, name: str) -> None:
    if count > MAX_BYTES_ELEMENTS:
        raise InvalidInput(f"input '{name}': {count} BYTES elements, more than the {MAX_BYTES_ELEMENTS} one request may carry")


def _brief(value, limit: int = 64) -> str:
    """repr() of a client's value for an error message: scalars only, and cut
    short. A container is named by its type, because repr() of data nested
    hundreds deep raises RecursionError and of megabytes makes a megabyte
    message (that is logged)."""
    if isinstance(value, (dict, list)):
        return f"<{type(value).__name__}>"
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _too_deep(value, limit: int) -> bool:
    """True when lists/objects in ``value`` nest more than ``limit`` deep.
    Iterative: hostile JSON may be nested 1,000 deep (orjson's own limit is
    1,024), past Python's recursion limit."""
    if not isinstance(value, (list, dict)):
        return False
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for item in v.values() if isinstance(v, dict) else v:
            if isinstance(item, (list, dict)):
                stack.append((item, depth + 1))
    return False


def parse_priority(value) -> int:
    if isinstance(value, str):
        try:
            return PRIORITY_NAMES[value.lower()]
        except KeyError:
            raise MalformedRequest(f"parameters.priority must be one of {sorted(PRIORITY_NAMES)}, got {_brief(value)}") from None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        # 0 is the highest level; everything above high is normal.
        return PRIORITY_HIGH if value == PRIORITY_HIGH else PRIORITY_NAMES["normal"]
    raise MalformedRequest(f"parameters.priority must be 'high', 'normal' or an integer >= 0, got {_brief(value)}")


def image_request(body: bytes, model: str, version: str | None) -> InferRequest:
    """An encoded image sent as the whole body (HTTP ``Content-Type: image/*``, an MQTT payload
    with an image content type or topic suffix): one BYTES element under ``IMAGE_BODY``, which
    the model names as its image input (runtime/image_model.py). Nothing is decoded here."""
    arr = np.empty(1, dtype=object)
    arr[0] = body if type(body) is bytes else bytes(body)
    return InferRequest(model=model, inputs={IMAGE_BODY: arr}, version=version)


def decode_bytes_tensor(raw: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Binary BYTES: each element is a 4-byte little-endian length then the bytes.

    ``count`` comes from the client's shape: refused before the object array
    is allocated when ``raw`` cannot hold that many length prefixes."""
    if count * _BYTES_LEN > len(raw):
        raise InvalidInput(
            f"input '{name}': {count} BYTES elements need at least {count * _BYTES_LEN} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    _check_bytes_count(count, name)
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
    _check_bytes_count(count, name)
    flat = _flatten(data, name)
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


def _flatten(data, name: str) -> list:
    """The leaves of nested lists, row-major; iterative, and refused past
    MAX_DEPTH (hostile JSON nests deeper than Python can recurse)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data  # flat already: the common case costs nothing
    out: list = []
    stack = [(iter(data), 1)]
    while stack:
        it, depth = stack[-1]
        for item in it:
            if isinstance(item, list):
                if depth >= MAX_DEPTH:
                    raise InvalidInput(f"input '{name}': data is nested deeper than {MAX_DEPTH} levels")
                stack.append((iter(item), depth + 1))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _numeric_data(data, dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    """JSON numbers -> an array of ``dtype``. numpy builds it from the leaves
    present (so its size is bounded by the body, whatever the shape claims)
    and stops at its own dimension limit; what it raises on a hostile value
    (ragged or too deep nesting, strings, objects, out-of-range integers)
    becomes invalid_input."""
    try:
        if dtype.kind in "iu":
            # numpy < 2 (the JetPack 5 stack) wraps an out-of-range Python
            # int (-1 as UINT8 is 255) where numpy 2 raises: check the range
            # the same way on both. Integer inputs only; floats pay nothing.
            wide = np.asarray(data)
            if wide.dtype.kind in "iu" and wide.size:
                info = np.iinfo(dtype)
                if wide.min() < info.min or wide.max() > info.max:
                    raise OverflowError(f"a value is outside {datatype}'s range {info.min}..{info.max}")
            return wide.astype(dtype) if wide.dtype.kind in "iub" else np.asarray(data, dtype=dtype)
        return np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise InvalidInput(f"input '{name}': data does not fit datatype {datatype}: {str(e)[:200]}") from None


def decode_request(
    body: bytes,
    model: str,
    version: str | None = None,
    header_length: int | None = None,
) -> InferRequest:
    """Decode a v2 infer body. Raises MalformedRequest / InvalidInput, and
    only those (PayloadTooLarge should memory still run out)."""
    try:
        return _decode_request(body, model, version, header_length)
    except RecursionError:
        # Every walk of client data here is iterative; this is the net under them.
        raise MalformedRequest("request is nested too deeply") from None
    except MemoryError:
        raise PayloadTooLarge("request needs more memory to decode than is available") from None


def _decode_request(body: bytes, model: str, version: str | None, header_length: int | None) -> InferRequest:
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
    for v in params.values():  # scalars (priority, timeout_ms) cost one isinstance each
        if isinstance(v, (list, dict)) and _too_deep(v, MAX_DEPTH - 1):
            raise MalformedRequest(f"'parameters' is nested deeper than {MAX_DEPTH} levels")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for idx, t in enumerate(inputs_doc):
        if not isinstance(t, dict):
            raise MalformedRequest(f"inputs[{idx}] must be an object")
        name = t.get("name")
        shape = t.get("shape")
        datatype = t.get("datatype")
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise MalformedRequest(f"inputs[{idx}].name must be a string of at most {MAX_NAME} characters")
        if name in inputs:
            raise MalformedRequest(f"input '{name}' given twice")
        if isinstance(shape, list) and len(shape) > MAX_RANK:  # before a walk of its entries
            raise MalformedRequest(f"input '{name}': shape has {len(shape)} dimensions, at most {MAX_RANK}")
        # type() is int: True and False are ints to isinstance.
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise MalformedRequest(f"input '{name}': shape must be a list of non-negative integers")
        dtype = V2_TO_NP.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise InvalidInput(f"input '{name}': unknown datatype {_brief(datatype)}")
        # A Python int: exact however large the dims (no numpy overflow).
        count = math.prod(shape)
        tparams = t.get("parameters") or {}
        bsize = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if bsize is not None:
            if binary is None:
                raise MalformedRequest(f"input '{name}' has binary_data_size but the request has no {HEADER_LENGTH}")
            if type(bsize) is not int or bsize < 0 or offset + bsize > len(binary):
                raise MalformedRequest(f"input '{name}': binary_data_size {_brief(bsize)} overruns the binary data")
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
            # Every JSON leaf takes at least one byte of the document: a shape
            # claiming more elements than that is refused before the data is
            # looked at. (What is built below is built from leaves present.)
            if count > len(json_part):
                raise InvalidInput(
                    f"input '{name}': shape {shape} needs {count} elements, more than the {len(json_part)}-byte JSON can hold"
                )
            if datatype == "BYTES":
                arr = _json_bytes_data(data, count, name)
            else:
                arr = _numeric_data(data, dtype, datatype, name)
                if arr.ndim > MAX_DEPTH:
                    raise InvalidInput(f"input '{name}': data is nested deeper than {MAX_DEPTH} levels")
                if arr.size != count:
                    raise InvalidInput(f"input '{name}': shape {shape} needs {count} elements, data has {arr.size}")
        # The sizes agree (count elements present), so only an empty shape
        # with a dimension past numpy's index range ([0, 2**62]) can still
        # upset numpy here; it allocates nothing for it either way.
        try:
            inputs[name] = arr.reshape(shape)
        except ValueError as e:
            raise InvalidInput(f"input '{name}': shape {shape}: {e}") from None
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
        if isinstance(rid, (dict, list)):
            raise MalformedRequest("'id' must be a string or a number")
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
