import numpy as np
import pytest

from edge_agent.cache.keys import request_key
from edge_agent.types import InferRequest


def req(inputs=None, outputs=None, parameters=None, **kw):
    if inputs is None:
        inputs = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    return InferRequest(model="digits", inputs=inputs, outputs=outputs, parameters=parameters or {}, **kw)


def key(r, model="digits", digest="sha256:aaaa"):
    return request_key(model, digest, r)


def test_key_is_a_full_32_byte_digest_and_deterministic():
    k = key(req())
    assert isinstance(k, bytes) and len(k) == 32
    assert key(req()) == k


@pytest.mark.parametrize(
    "a, b",
    [
        # model, version digest
        (lambda: key(req(), model="digits"), lambda: key(req(), model="digitz")),
        (lambda: key(req(), digest="sha256:aaaa"), lambda: key(req(), digest="sha256:aaab")),
        # one value, the tensor name, the datatype with identical bytes, the shape with identical bytes
        (lambda: key(req()), lambda: key(req({"x": np.array([0, 1, 2, 3, 4, 5.5], np.float32).reshape(2, 3)}))),
        (lambda: key(req()), lambda: key(req({"y": np.arange(6, dtype=np.float32).reshape(2, 3)}))),
        (lambda: key(req({"x": np.zeros(4, np.int32)})), lambda: key(req({"x": np.zeros(4, np.uint32)}))),
        (lambda: key(req()), lambda: key(req({"x": np.arange(6, dtype=np.float32).reshape(3, 2)}))),
        # BYTES framing: same concatenation, different elements
        (
            lambda: key(req({"t": np.array([b"ab", b"c"], dtype=object)})),
            lambda: key(req({"t": np.array([b"a", b"bc"], dtype=object)})),
        ),
        # a name/value boundary moved between two tensors
        (
            lambda: key(req({"a": np.array([1], np.uint8), "b": np.array([2], np.uint8)})),
            lambda: key(req({"a": np.array([1, 2], np.uint8)})),
        ),
        # requested outputs: all vs none listed vs a subset
        (lambda: key(req(outputs=None)), lambda: key(req(outputs=[]))),
        (lambda: key(req(outputs=["probs"])), lambda: key(req(outputs=["label"]))),
        # a post-processing parameter changes the answer
        (lambda: key(req(parameters={"top_k": 3})), lambda: key(req(parameters={"top_k": 5}))),
    ],
)
def test_every_answer_changing_field_changes_the_key(a, b):
    assert a() != b()


def test_fields_that_do_not_change_the_answer_are_ignored():
    base = key(req(parameters={"top_k": 3}))
    noisy = req(
        parameters={"top_k": 3, "cache": True, "priority": "high", "timeout_ms": 50, "binary_data_output": True,
                    "reply_to": "dev/1/reply", "id": "abc"},
        id="req-7", priority=0, client="dev-1", version="3",
    )
    assert key(noisy) == base


def test_input_order_output_order_and_parameter_order_do_not_matter():
    a = {"a": np.array([1], np.int64), "b": np.array([2], np.int64)}
    b = {"b": np.array([2], np.int64), "a": np.array([1], np.int64)}
    assert key(req(a)) == key(req(b))
    assert key(req(outputs=["p", "q"])) == key(req(outputs=["q", "p"]))
    assert key(req(parameters={"m": 1, "n": 2})) == key(req(parameters={"n": 2, "m": 1}))


def test_same_values_in_other_byte_order_or_layout_give_the_same_key():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert key(req({"x": x.astype(">f4")})) == key(req({"x": x}))
    assert key(req({"x": np.asfortranarray(x)})) == key(req({"x": x}))


def test_bytes_and_str_elements_of_a_bytes_tensor_key_alike():
    assert key(req({"t": np.array(["héllo"], dtype=object)})) == key(req({"t": np.array(["héllo".encode()], dtype=object)}))


def plain_key(model, digest, r) -> bytes:
    """The key's preimage written out plainly: the fast path must match it byte for byte."""
    import hashlib
    import struct

    from edge_agent.cache.keys import KEY_SCHEME, _parameters
    from edge_agent.types import v2_datatype

    q = struct.Struct("<Q").pack
    h = hashlib.blake2b(digest_size=32)

    def field(tag, data):
        h.update(tag + q(len(data)) + data)

    field(b"K", KEY_SCHEME)
    field(b"M", model.encode())
    field(b"V", digest.encode())
    h.update(b"I" + q(len(r.inputs)))
    for name in sorted(r.inputs):
        arr = r.inputs[name]
        field(b"N", name.encode())
        field(b"T", v2_datatype(arr).encode())
        field(b"S", b"".join(q(d) for d in arr.shape))
        if arr.dtype == object:
            h.update(b"B" + q(arr.size))
            for item in arr.ravel():
                b = item.encode() if isinstance(item, str) else item
                h.update(q(len(b)) + b)
        else:
            field(b"D", np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    if r.outputs is None:
        h.update(b"O*")
    else:
        h.update(b"O" + q(len(set(r.outputs))))
        for name in sorted(set(r.outputs)):
            field(b"n", name.encode())
    field(b"P", _parameters(r.parameters))
    return h.digest()


@pytest.mark.parametrize(
    "inputs",
    [
        {"input": np.arange(64, dtype=np.float32)[None]},
        {"x": np.arange(6, dtype=">f4").reshape(2, 3)},
        {"x": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))},
        {"x": np.arange(20, dtype=np.float64)[::3]},
        {"s": np.array(7, np.int32)},
        {"b": np.array([True, False])},
        {"t": np.array([["héllo", b"x"]], dtype=object)},
        {"b": np.zeros((0, 3), np.float16), "a": np.array([1], np.uint8)},
        {"x": np.zeros((1,) * 10, np.int8)},
    ],
)
@pytest.mark.parametrize("outputs, parameters", [(None, {}), ([], {"cache": True}), (["b", "a", "b"], {"top_k": 3})])
def test_the_fast_key_is_the_plain_framing(inputs, outputs, parameters):
    r = req(inputs, outputs=outputs, parameters=parameters)
    assert key(r) == plain_key("digits", "sha256:aaaa", r)
