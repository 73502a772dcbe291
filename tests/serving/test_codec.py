"""The KServe v2 codec on its own: the encodings every transport relies on."""

from __future__ import annotations

import tracemalloc

import numpy as np
import orjson
import pytest

from edge_agent.errors import EdgeError, InvalidInput, MalformedRequest
from edge_agent.serving.codec import decode_request, encode_response
from edge_agent.types import InferResponse, v2_datatype


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(np.float32, "FP32"), (">f4", "FP32"), ("<i8", "INT64"), (">i8", "INT64"), (np.uint8, "UINT8"),
     (np.bool_, "BOOL"), (object, "BYTES"), ("S3", "BYTES"), ("U5", "BYTES"), ("U7", "BYTES")],
)
def test_v2_datatype_names_each_dtype_the_same_every_time(dtype, name):
    arr = np.zeros(2, dtype=dtype)
    assert v2_datatype(arr) == name
    assert v2_datatype(arr) == name  # the second answer comes from the memo


def test_v2_datatype_refuses_a_dtype_v2_has_no_name_for_every_time():
    for _ in range(2):
        with pytest.raises(KeyError):
            v2_datatype(np.zeros(1, np.complex64))


def test_json_answer_carries_shapes_as_lists_and_data_in_row_major_order():
    probs = np.arange(6, dtype=np.float32).reshape(3, 2).T  # not C-contiguous: [[0, 2, 4], [1, 3, 5]]
    resp = InferResponse(model="m", version="2", id="r1", outputs={
        "probs": probs,
        "label": np.array([4, 5], dtype=np.int64),
        "names": np.array([[b"a", "b\u00e9".encode()]], dtype=object),
    })
    body, header_length = encode_response(resp)
    assert header_length is None
    doc = orjson.loads(body)
    assert doc["id"] == "r1" and doc["model_version"] == "2" and "parameters" not in doc
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["probs"] == {"name": "probs", "datatype": "FP32", "shape": [2, 3], "data": [0, 2, 4, 1, 3, 5]}
    assert outs["label"] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [4, 5]}
    assert outs["names"] == {"name": "names", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b\u00e9"]}


def test_binary_outputs_only_those_asked_for_and_cached_flag():
    vals = np.array([[1.5, -2.0]], dtype=np.float32)
    resp = InferResponse(model="m", version="1", outputs={"a": vals, "b": np.array([7], dtype=np.int64)},
                         cached=True, parameters={"x": 1})
    body, header_length = encode_response(resp, frozenset({"a"}))
    head = orjson.loads(body[:header_length])
    outs = {o["name"]: o for o in head["outputs"]}
    assert outs["a"]["parameters"] == {"binary_data_size": 8} and "data" not in outs["a"]
    assert outs["b"]["data"] == [7]
    assert np.frombuffer(body[header_length:], dtype=np.float32).tolist() == [1.5, -2.0]
    assert head["parameters"] == {"x": 1, "cached": True}
    assert resp.parameters == {"x": 1}  # the response's own parameters are not changed


@pytest.mark.parametrize("shape", [[1, True], [1, -64], [1, 64.0], "1,64"])
def test_a_shape_that_is_not_a_list_of_non_negative_integers_is_malformed(shape):
    body = orjson.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.0] * 64}]})
    with pytest.raises(MalformedRequest, match="shape must be a list of non-negative integers"):
        decode_request(body, "digits")


def test_a_well_formed_request_decodes_to_the_model_dtype_and_shape():
    body = orjson.dumps({"id": 5, "inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP16",
                                              "data": [[1, 2, 3], [4, 5, 6]]}]})
    req = decode_request(body, "m")
    x = req.inputs["input"]
    assert x.dtype == np.float16 and x.shape == (2, 3) and x[1, 2] == 6 and req.id == "5"


# --- hostile sizes and nesting (issue 15, item 2) ------------------------------
#
# Every size a body claims is checked against the bytes it holds before
# anything is allocated for it; nesting is walked without recursion; nothing
# numpy or Python raises on hostile values escapes as anything but a coded
# 4xx EdgeError.


def binary_request(inputs: list[dict], blob: bytes = b"") -> tuple[bytes, int]:
    head = orjson.dumps({"inputs": inputs})
    return head + blob, len(head)


def nested(depth: int, leaf) -> list:
    data = [leaf]
    for _ in range(depth - 1):
        data = [data]
    return data


DEEP = "@deep@"


def with_deep(doc: dict, depth: int, leaf: bytes = b"1") -> bytes:
    """``doc`` as JSON with the string DEEP replaced by ``leaf`` inside
    ``depth`` lists (orjson will not write past depth 255, but reads to 1,024)."""
    return orjson.dumps(doc).replace(b'"%s"' % DEEP.encode(), b"[" * depth + leaf + b"]" * depth)


def decode_peak(body: bytes, header_length: int | None = None) -> tuple[BaseException, int]:
    """Decode, expecting a refusal: (the exception, tracemalloc's peak bytes).
    numpy reports its array buffers to tracemalloc, so an np.empty of the
    claimed size shows in the peak even though it is freed at once."""
    tracemalloc.start()
    try:
        with pytest.raises(EdgeError) as info:
            decode_request(body, "digits", None, header_length)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return info.value, peak


@pytest.mark.parametrize("count", [200_000_000, 2**62, 2**64 - 1])
def test_the_113_byte_bytes_request_is_refused_before_allocating_its_shape(count):
    # The request of the issue: shape [200000000], binary_data_size 0, nothing after the header.
    body, hl = binary_request([{"name": "input", "shape": [count], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 0}}])
    assert len(body) <= 120
    err, peak = decode_peak(body, hl)
    assert isinstance(err, InvalidInput) and err.http_status == 400
    assert "BYTES elements need at least" in err.message
    assert peak < 1_000_000, f"decoding a {len(body)}-byte request peaked at {peak:,} bytes"


def test_binary_bytes_count_is_bounded_by_the_bytes_sent_not_only_by_zero():
    # 3 elements need >= 12 bytes; 8 are sent (two empty strings' lengths).
    body, hl = binary_request([{"name": "t", "shape": [10**9], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 8}}], b"\0" * 8)
    err, peak = decode_peak(body, hl)
    assert isinstance(err, InvalidInput) and peak < 1_000_000
    # what fits is still decoded
    body, hl = binary_request([{"name": "t", "shape": [2], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 9}}], b"\1\0\0\0a\0\0\0\0")
    assert decode_request(body, "m", None, hl).inputs["t"].tolist() == [b"a", b""]


@pytest.mark.parametrize("datatype", ["FP32", "UINT8", "BYTES"])
@pytest.mark.parametrize("count", [10**8, 2**62, 2**64 - 1])
def test_json_data_shorter_than_a_huge_shape_is_refused_without_allocating(datatype, count):
    leaf = "x" if datatype == "BYTES" else 1
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [count], "datatype": datatype, "data": [leaf]}]})
    err, peak = decode_peak(body)
    assert isinstance(err, InvalidInput) and "more than the" in err.message
    assert peak < 1_000_000


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**64 - 1], [2**40, 2**40, 0]])
def test_an_empty_shape_with_a_dimension_past_numpys_range_is_invalid_input(shape):
    body = orjson.dumps({"inputs": [{"name": "t", "shape": shape, "datatype": "FP32", "data": []}]})
    err, _ = decode_peak(body)
    assert isinstance(err, InvalidInput)
    head, hl = binary_request([{"name": "t", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 0}}])
    err, _ = decode_peak(head, hl)
    assert isinstance(err, InvalidInput)


@pytest.mark.parametrize("rank", [33, 65, 100_000])
def test_a_shape_of_more_than_32_dimensions_is_malformed(rank):
    # 65 ones: numpy's own limit is 64 dims, it raised ValueError (a 500).
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [1] * rank, "datatype": "FP32", "data": [1.0]}]})
    err, _ = decode_peak(body)
    assert isinstance(err, MalformedRequest) and "at most 32" in err.message


@pytest.mark.parametrize("depth", [33, 990, 1020])
def test_deeply_nested_bytes_data_is_invalid_input_not_a_recursion_error(depth):
    body = with_deep({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": DEEP}]}, depth, b'"a"')
    err, _ = decode_peak(body)
    assert isinstance(err, InvalidInput) and "nested deeper than 32" in err.message


@pytest.mark.parametrize("depth", [33, 64, 990])
def test_deeply_nested_numeric_data_is_invalid_input(depth):
    body = with_deep({"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": DEEP}]}, depth)
    err, _ = decode_peak(body)
    assert isinstance(err, InvalidInput)


def test_nesting_up_to_32_levels_and_mixed_flat_and_nested_bytes_still_decode():
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [1] * 32, "datatype": "BYTES", "data": nested(32, "a")}]})
    assert decode_request(body, "m").inputs["t"].reshape(-1).tolist() == [b"a"]
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": [["a", "b"], "c"]}]})
    assert decode_request(body, "m").inputs["t"].tolist() == [b"a", b"b", b"c"]
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]})
    assert decode_request(body, "m").inputs["t"].tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("where", ["parameters", "id", "priority", "datatype", "binary_data_size"])
def test_client_values_nested_1000_deep_anywhere_are_refused_with_a_code(where):
    # orjson reads up to 1,024 levels; Python's repr()/str() recurse past their limit
    deep = DEEP
    t = {"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}
    doc: dict = {"inputs": [t]}
    hl = None
    if where == "parameters":
        doc["parameters"] = {"x": deep}  # hashed into the cache key by orjson, which stops at depth 255
    elif where == "id":
        doc["id"] = deep
    elif where == "priority":
        doc["parameters"] = {"priority": deep}
    elif where == "datatype":
        t["datatype"] = deep
    else:
        t["parameters"] = {"binary_data_size": deep}
        del t["data"]
        hl = len(with_deep(doc, 1020))
    body = with_deep(doc, 1020)
    err, _ = decode_peak(body, hl)
    assert type(err) in (MalformedRequest, InvalidInput) and len(err.message) < 300


def test_parameters_nested_past_32_levels_are_malformed_and_32_are_not():
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                         "parameters": {"tag": nested(33, 1)}})
    with pytest.raises(MalformedRequest, match="nested deeper than 32"):
        decode_request(body, "m")
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}],
                         "parameters": {"tag": nested(31, 1)}})
    assert decode_request(body, "m").parameters["tag"] == nested(31, 1)


def test_binary_data_size_must_be_an_integer_not_a_boolean():
    body, hl = binary_request([{"name": "t", "shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": True}}], b"\7")
    with pytest.raises(MalformedRequest, match="binary_data_size True overruns"):
        decode_request(body, "m", None, hl)


def test_an_input_name_is_bounded_and_long_values_are_not_echoed_whole():
    body = orjson.dumps({"inputs": [{"name": "n" * 257, "shape": [1], "datatype": "FP32", "data": [1.0]}]})
    with pytest.raises(MalformedRequest, match="at most 256 characters"):
        decode_request(body, "m")
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [1], "datatype": "x" * 100_000, "data": [1.0]}]})
    with pytest.raises(InvalidInput) as info:
        decode_request(body, "m")
    assert len(info.value.message) < 200


@pytest.mark.parametrize("data", [[2**64 - 1], [-1], [{"a": 1}], ["many"], [[1, 2], [3]]])
def test_numeric_data_numpy_cannot_take_is_invalid_input(data):
    body = orjson.dumps({"inputs": [{"name": "t", "shape": [len(data)], "datatype": "UINT8", "data": data}]})
    with pytest.raises(InvalidInput):
        decode_request(body, "m")


def test_bytes_inputs_are_bounded_in_elements_before_the_python_loop():
    """2 million empty BYTES elements fit an 8 MiB body and held the event
    loop 0.5 s: refused by count before any element is walked."""
    import json as _json
    import struct as _struct
    import time as _time

    from edge_agent.serving.codec import MAX_BYTES_ELEMENTS

    n = MAX_BYTES_ELEMENTS + 1
    blob = _struct.pack("<I", 0) * n
    head = _json.dumps({"inputs": [{"name": "t", "shape": [n], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    t0 = _time.perf_counter()
    with pytest.raises(InvalidInput, match="BYTES elements"):
        decode_request(head + blob, "m", header_length=len(head))
    with pytest.raises(InvalidInput, match="BYTES elements"):
        decode_request(_json.dumps({"inputs": [{"name": "t", "shape": [n], "datatype": "BYTES", "data": [""] * n}]}).encode(), "m")
    ok = MAX_BYTES_ELEMENTS
    blob = _struct.pack("<I", 0) * ok
    head = _json.dumps({"inputs": [{"name": "t", "shape": [ok], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    assert decode_request(head + blob, "m", header_length=len(head)).inputs["t"].shape == (ok,)
