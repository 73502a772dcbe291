"""Hypothesis strategies for hostile KServe v2 bodies and raw HTTP requests,
shared by the codec fuzzer and the HTTP fuzzer (issue 15).

Bodies are mostly well-formed documents with one thing wrong in them, so the
fuzzer reaches past the JSON parser into every size check: shapes honest,
huge (2**62, 2**64-1) or not shapes at all; datatypes real or not; data that
fills its shape, misses by one, nests past Python's recursion limit, or holds
values numpy cannot take; binary sections whose sizes and BYTES length
prefixes tell the truth or lie; and, for some, a mutated byte stream.
"""

from __future__ import annotations

import math
import random
import re
import struct

import numpy as np
import orjson
from hypothesis import strategies as st

from edge_agent.types import V2_TO_NP

DATATYPES = list(V2_TO_NP)
HUGE = [2**31, 2**32, 10**8, 2 * 10**8, 2**62, 2**63 - 1, 2**64 - 1]

# orjson writes no deeper than 255 levels but reads 1,024: deep data is spliced
# into the serialized document in place of this marker.
_DEEP = re.compile(rb'"@@deep:(\d+):([sn])@@"')


def deep(depth: int, leaf: str = "n") -> str:
    return f"@@deep:{depth}:{leaf}@@"


def splice_deep(raw: bytes) -> bytes:
    def repl(m: re.Match) -> bytes:
        d = int(m.group(1))
        return b"[" * d + (b'"a"' if m.group(2) == b"s" else b"1") + b"]" * d

    return _DEEP.sub(repl, raw)


# Values of the wrong kind for wherever they land. A fixed list (one draw
# each) rather than a recursive strategy: ten times fewer draws per case keeps
# 10,000 structured cases within seconds.
SCALARS = [None, True, False, 0, -1, 1, 7, 64, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -0.0, 1e39, 1e308,
           "", "x", "FP32", "high", "²", "\u0000", "n" * 300, "1e3"]
VALUES = SCALARS + [[], {}, [1], [[1]], [None], ["a", 1], [1, [2]], [[1, 2], [3]], {"a": 1}, {"": []},
                    {"binary_data_size": 4}, [{"name": "x"}], [[[[[[]]]]]]]
json_scalars = st.sampled_from(SCALARS)
json_values = st.sampled_from(VALUES)
deep_markers = st.builds(deep, st.sampled_from([2, 31, 32, 33, 64, 65, 256, 600, 1000, 1020]), st.sampled_from("sn"))


def _leaves(datatype: str, count: int, rng: random.Random, odd: bool) -> list:
    """``count`` values for ``datatype`` from a seeded RNG (one hypothesis draw
    instead of one per element keeps 10,000 cases in seconds); ``odd`` mixes
    in values at or past the datatype's range and of the wrong JSON type."""
    if datatype == "BOOL":
        out = [rng.random() < 0.5 for _ in range(count)]
    elif datatype.startswith(("UINT", "INT")):
        out = [rng.randint(0, 100) for _ in range(count)]
    elif datatype.startswith("FP"):
        out = [rng.uniform(-16, 16) for _ in range(count)]
    else:
        out = ["".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 5))) for _ in range(count)]
    if odd and out:
        out[rng.randrange(len(out))] = rng.choice(
            [2**64 - 1, -(2**63), -1, 256, 70_000, 1e39, -1e39, 1e308, None, "x", "1.5", True, [], {}, [1, 2]])
    return out


def _nest(flat: list, shape: list) -> list:
    """``flat`` in nested lists following ``shape`` (row-major)."""
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    if step == 0:
        return [[] for _ in range(shape[0])]
    return [_nest(flat[i : i + step], shape[1:]) for i in range(0, len(flat), step)]


def _binary(datatype: str, leaves: list, lie: str) -> bytes:
    """The binary form of ``leaves`` (little-endian; BYTES as 4-byte length +
    bytes, where ``lie`` may make the last length prefix lie)."""
    if datatype == "BYTES":
        out = b""
        for i, s in enumerate(leaves):
            b = str(s).encode()
            n = len(b)
            if i == len(leaves) - 1:
                n = {"plus1": n + 1, "zero": 0, "max": 2**32 - 1}.get(lie, n)
            out += struct.pack("<I", n) + b
        return out
    try:
        with np.errstate(all="ignore"):
            return np.asarray(leaves, dtype=V2_TO_NP[datatype]).astype(V2_TO_NP[datatype].newbyteorder("<")).tobytes()
    except (ValueError, TypeError, OverflowError):
        return b"\0" * (len(leaves) * V2_TO_NP[datatype].itemsize)


# What may be wrong with one input; "none" most often, so most documents are
# valid or wrong in exactly one place and every check past it is reached.
TENSOR_FAULTS = ["none"] * 12 + [
    "name", "datatype", "shape_huge", "shape_zero_huge", "shape_rank", "shape_junk", "count", "odd_leaf",
    "data_deep", "data_junk", "data_scalar", "data_missing", "ragged", "bsize", "bytes_prefix",
]


@st.composite
def tensors(draw, binary: bool, name: str):
    """One input entry, honest but for at most one fault: (JSON header entry, binary part)."""
    fault = draw(st.sampled_from(TENSOR_FAULTS))
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    count = math.prod(shape)
    rng = random.Random(draw(st.integers(0, 2**32)))
    leaves = _leaves(datatype, count, rng, fault == "odd_leaf")
    entry: dict = {"name": name, "shape": shape, "datatype": datatype}
    if fault == "name":
        entry["name"] = draw(json_scalars)
    elif fault == "datatype":
        entry["datatype"] = draw(st.sampled_from(["FP128", "", "fp32", "STRING"]) | json_values | deep_markers)
    elif fault == "shape_huge":
        entry["shape"] = shape + [draw(st.sampled_from(HUGE))]
    elif fault == "shape_zero_huge":
        entry["shape"] = [0, draw(st.sampled_from(HUGE))]
        leaves = []
    elif fault == "shape_rank":
        entry["shape"] = [1] * draw(st.sampled_from([32, 33, 64, 65, 1000]))
        leaves = leaves[:1] or _leaves(datatype, 1, rng, False)
    elif fault == "shape_junk":
        entry["shape"] = draw(json_values | st.just([1, True]) | st.just([1, -1]) | st.just([2.0]))
    elif fault == "count":
        leaves = leaves[:-1] if leaves and draw(st.booleans()) else leaves + _leaves(datatype, 1, rng, False)
    if binary and fault not in ("data_deep", "data_junk", "data_scalar", "data_missing", "ragged"):
        blob = _binary(datatype, leaves, draw(st.sampled_from(["plus1", "zero", "max"])) if fault == "bytes_prefix" else "")
        bsize = len(blob)
        if fault == "bsize":
            bsize = draw(st.sampled_from([0, len(blob) + 1, len(blob) - 1, 2**62, True, "8", [len(blob)], None]))
        entry["parameters"] = {"binary_data_size": bsize}
        return entry, blob
    if fault == "data_deep":
        entry["data"] = draw(deep_markers)
    elif fault == "data_junk":
        entry["data"] = draw(json_values)
    elif fault == "data_scalar":
        entry["data"] = leaves[0] if leaves else 0
    elif fault == "data_missing":
        pass
    elif fault == "ragged" and len(shape) >= 2 and count:
        nested = _nest(leaves, shape)
        nested[0] = nested[0][:-1]
        entry["data"] = nested
    else:
        entry["data"] = _nest(leaves, shape) if draw(st.booleans()) else leaves
    return entry, b""


DOC_FAULTS = ["none"] * 10 + ["inputs", "id", "params", "outputs", "header_length", "trailing", "cut", "flip", "duplicate"]


@st.composite
def v2_bodies(draw):
    """(body bytes, Inference-Header-Content-Length or None): a v2 document,
    JSON or with binary tensors, honest but for at most one fault in each
    input and one in the document."""
    binary = draw(st.booleans())
    fault = draw(st.sampled_from(DOC_FAULTS))
    names = draw(st.lists(st.sampled_from(["input", "x", "text", "y", ""]) | st.text(st.characters(codec="utf-8"), max_size=3),
                          min_size=1, max_size=3, unique=True))
    if fault == "duplicate":
        names.append(names[0])
    entries = [draw(tensors(binary, n)) for n in names]
    doc: dict = {"inputs": [e for e, _ in entries]}
    blob = b"".join(b for _, b in entries)
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=8) | st.integers(0, 100))
    if draw(st.booleans()):
        doc["parameters"] = draw(st.fixed_dictionaries({}, optional={
            "priority": st.sampled_from(["high", "normal", 0, 1]), "timeout_ms": st.sampled_from([1, 50, 2.5]),
            "cache": st.booleans(), "binary_data_output": st.booleans()}))
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["label", "probabilities"])},
            optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans()})}), max_size=2))
    if fault == "inputs":
        doc["inputs"] = draw(json_values)
    elif fault == "id":
        doc["id"] = draw(json_values | deep_markers)
    elif fault == "params":
        junk = draw(st.sampled_from(["priority", "timeout_ms", "tag", "whole"]))
        value = draw(st.sampled_from(["HIGH", "²", -1, 2**64 - 1, True, 0, -5, 1e308, "10"]) | json_values | deep_markers)
        if junk == "whole":
            doc["parameters"] = value
        else:
            doc["parameters"] = {junk: value}
    elif fault == "outputs":
        doc["outputs"] = draw(json_values | st.lists(json_values, max_size=2))
    if fault == "trailing":
        blob += b"\0\1"
    head = splice_deep(orjson.dumps(doc))
    body = head + blob
    hl = len(head) if binary else None
    if fault == "header_length":
        hl = draw(st.sampled_from([None, -1, 0, len(body) + 1, max(len(head) - 1, 0), 2**63]))
    elif fault == "cut" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif fault == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]
    return body, hl


# --- raw HTTP requests -----------------------------------------------------------

# Control endpoints (reload, promote/rollback, load/unload) change the daemon's
# state: not fuzzed here; a generated path that would reach one is replaced.
_CONTROL = re.compile(r"edge/(reload|models)", re.I)
# (method, path) of the daemon's routes, inference most often.
_ROUTES = [(b"POST", b"/v2/models/digits/infer")] * 8 + [
    (b"POST", b"/v2/models/digits/versions/1/infer"), (b"POST", b"/v2/models/nope/infer"),
    (b"GET", b"/v2/health/live"), (b"GET", b"/v2/health/ready"), (b"GET", b"/v2"), (b"GET", b"/v2/models/digits"),
    (b"GET", b"/v2/models/digits/ready"), (b"POST", b"/v2/repository/index"), (b"GET", b"/metrics"),
    (b"GET", b"/edge/status"),
]
_PATHS = [
    "/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/digits", "/v2/models/digits/ready",
    "/v2/models/digits/versions/1", "/v2/models/digits/versions/9/ready", "/v2/models/digits/infer",
    "/v2/models/digits/versions/1/infer", "/v2/models/nope/infer", "/v2/repository/index", "/metrics",
    "/edge/status", "/", "*", "/v2/models/", "/v2/models/digits/infer/", "/v2/models//infer",
]


@st.composite
def paths(draw, weird: bool) -> bytes:
    """A request target: one of the daemon's routes (or near one), and when
    ``weird``, percent-encoded bytes that are not UTF-8, absolute form, a long
    path or a raw query."""
    kind = draw(st.integers(0, 4)) if weird else draw(st.integers(0, 1))
    if kind == 0:
        p = draw(st.sampled_from(_PATHS)).encode()
    elif kind == 1:
        p = b"/v2/models/" + draw(st.sampled_from([b"digits", b"digits", b"nope", b"d%69gits", b"%F0%9F%98%80"])) + b"/" + draw(
            st.sampled_from([b"infer", b"infer", b"ready", b"versions/1/infer", b"versions/x/infer", b"", b"x"]))
    elif kind == 2:  # percent-encoding of any bytes, UTF-8 or not
        raw = draw(st.binary(max_size=12))
        p = b"/v2/models/" + b"".join(b"%%%02X" % c for c in raw) + b"/infer"
    elif kind == 3:
        p = b"http://localhost" + draw(st.sampled_from(_PATHS)).encode()
    else:
        p = b"/" + b"a" * draw(st.sampled_from([100, 5_000, 70_000]))
    if weird and draw(st.integers(0, 3)) == 0:
        p += b"?" + bytes(c for c in draw(st.binary(max_size=16)) if c > 32 and c != 127)
    from urllib.parse import unquote_to_bytes

    if _CONTROL.search(unquote_to_bytes(p).decode("latin-1")):
        p = b"/edge/status"
    return p


def _digits_doc(draw) -> bytes:
    """A valid digits request; 16 distinct images, so the response cache both
    hits and misses."""
    rng = random.Random(draw(st.integers(0, 15)))
    x = [float(rng.randint(0, 16)) for _ in range(64)]
    return orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]})


# What may be wrong with one request's HTTP (its body may be wrong on its own
# account). Most end their connection (400 and close), so a pipeline puts its
# faulty request, if any, last.
HTTP_FAULTS = [
    "method", "version", "path", "cl_short", "cl_long", "cl_huge", "cl_bad", "cl_twice", "te_and_cl", "chunk_bad",
    "no_length", "header_long", "header_bad", "hl_bad", "expect", "upgrade", "close", "http10",
]


@st.composite
def http_requests(draw, faulty: bool = False) -> bytes:
    """One raw HTTP/1.x request, honest in its framing unless ``faulty``
    (then with one fault: a Content-Length that lies, bad chunking, a junk
    method/version/header, a binary header length that lies...), with a body
    that may be a valid digits request, a generated v2 body (honest or not),
    junk, or empty."""
    fault = draw(st.sampled_from(HTTP_FAULTS)) if faulty else "none"
    if fault != "path" and draw(st.integers(0, 3)):
        method, target = draw(st.sampled_from(_ROUTES))
    else:
        method = draw(st.sampled_from([b"POST"] * 6 + [b"GET"] * 4 + [b"PUT", b"HEAD", b"DELETE", b"OPTIONS"]))
        target = draw(paths(fault == "path"))
    if fault == "method":
        method = draw(st.sampled_from([b"PRI", b"GE T", b"get", b"\x00", b"POSTX", b"M-SEARCH"]))
    version = b"HTTP/1.1"
    if fault == "version":
        version = draw(st.sampled_from([b"HTTP/2.0", b"HTTP/1.1x", b"HTTTP/1.1", b"HTTP/9.9", b""]))
    elif fault == "http10":
        version = b"HTTP/1.0"
    kind = draw(st.sampled_from(["digits"] * 3 + ["v2"] * 4 + ["empty", "junk"]))
    hl = None
    if kind == "digits":
        body = _digits_doc(draw)
    elif kind == "v2":
        body, hl = draw(v2_bodies())
    elif kind == "junk":
        body = draw(st.binary(max_size=100))
    else:
        body = b""
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"localhost")]
    if body:
        headers.append((b"Content-Type", b"application/json" if hl is None else b"application/octet-stream"))
    if hl is not None:
        headers.append((b"Inference-Header-Content-Length", str(hl).encode()))
    if fault == "hl_bad":
        headers.append((b"Inference-Header-Content-Length",
                        draw(st.sampled_from([b"-1", b"abc", b"9" * 20, b"9" * 5000, b"1_0", b" 3 ", b"", b"0"]))))
    chunked = draw(st.integers(0, 4)) == 0
    if chunked or fault == "chunk_bad":
        headers.append((b"Transfer-Encoding", b"chunked"))
        parts, rest = [], body
        while rest:
            n = draw(st.integers(1, max(1, len(rest))))
            parts.append(b"%x" % n + draw(st.sampled_from([b""] * 5 + [b";ext=1"])) + b"\r\n" + rest[:n] + b"\r\n")
            rest = rest[n:]
        tail = draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n"]))
        if fault == "chunk_bad":
            tail = draw(st.sampled_from([b"zz\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"-1\r\n\r\n", b"0\r\n"]))
        payload = b"".join(parts) + tail
        if fault == "te_and_cl":
            headers.append((b"Content-Length", str(len(payload)).encode()))
    else:
        payload = body
        # cl_huge: over server.max_body_bytes (413), past what is drained (close) or not
        cl = {"cl_short": max(len(body) - 3, 0), "cl_long": len(body) + 7,
              "cl_huge": draw(st.sampled_from([9 * 2**20, 2**40]))}.get(fault, len(body))
        if fault == "cl_bad":
            headers.append((b"Content-Length", draw(st.sampled_from([b"-1", b"1e3", b"0x10", b"9" * 30, b"", b"2 0"]))))
        elif fault != "no_length" and (body or method == b"POST"):
            headers.append((b"Content-Length", str(cl).encode()))
        if fault == "cl_twice":
            headers.append((b"Content-Length", str(len(body) + 1).encode()))
        elif fault == "te_and_cl":
            headers.append((b"Transfer-Encoding", b"chunked"))
    if fault == "header_long":
        headers.append((b"X-Long", b"v" * draw(st.sampled_from([1_000, 70_000]))))
    elif fault == "header_bad":
        headers.append(draw(st.sampled_from([(b"Bad Name", b"1"), (b"X-Ctl", b"a\x01b"), (b"", b"x"), (b"X-Nul", b"\x00")])))
    elif fault == "expect":
        headers.append((b"Expect", b"100-continue"))
    elif fault == "upgrade":
        headers += [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    elif fault == "close":
        headers.append((b"Connection", b"close"))
    elif fault == "http10" and draw(st.booleans()):
        headers.append((b"Connection", b"keep-alive"))
    head = b"%s %s %s\r\n" % (method, target, version)
    return head + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n" + payload
