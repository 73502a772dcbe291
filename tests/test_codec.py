"""The KServe v2 codec on its own: the encodings every transport relies on."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from edge_agent.errors import MalformedRequest
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
