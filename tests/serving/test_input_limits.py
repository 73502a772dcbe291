"""Request admission by size (model.yaml ``limits``, edge_agent/runtime/input_limits.py): over the
real daemon's socket for tensors, and on the checker for text (bytes before tokenizing, tokens after)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from daemon_proc import copy_digits, digits_body, metric_sum

from edge_agent.errors import InputTooLarge
from edge_agent.runtime.input_limits import input_limits
from edge_agent.runtime.model_spec import ModelSpec


def test_elements_and_pixels_over_the_socket(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir, "1", limits={"max_elements": 128})
    image_model(a.models_dir, max_pixels=64 * 48)
    a.start()
    ok = np.zeros((2, 64), np.float32)
    assert a.infer_once("digits", digits_body(ok), version="1")[0] == 200
    status, doc = a.infer_once("digits", digits_body(np.zeros((3, 64), np.float32)), version="1")
    assert status == 413 and doc["code"] == "input_too_large", doc
    assert doc["details"] == {"limit": "max_elements", "value": 192, "max": 128}
    assert "192 tensor elements" in doc["error"] and "limits.max_elements" in doc["error"]
    status, doc = a.infer_once("image", image_body(np.zeros((2, 3, 64, 49), np.float32)))
    assert status == 413 and doc["details"] == {"limit": "max_pixels", "value": 64 * 49, "max": 64 * 48, "input": "image"}, doc
    status, doc = a.infer_once("image", image_body(np.ones((2, 3, 48, 64), np.float32)))
    assert status == 200 and doc["outputs"][0]["data"] == [1.0] * 6
    # The daemon keeps serving everyone else, and counts what it refused.
    assert a.infer_once("digits", digits_body(ok), version="1")[0] == 200
    assert metric_sum(a.metrics(), "edge_agent_requests_total", 'outcome="input_too_large"') == 2


def image_model(models_dir, max_pixels: int) -> None:
    """A real image model with variable height and width: the mean of each channel."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0)], "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3])])
    d = models_dir / "image" / "1"
    d.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), d / "model.onnx")
    (d / "model.yaml").write_text(yaml.safe_dump({
        "max_batch_size": 4, "inputs": [{"name": "image", "datatype": "FP32", "dims": [3, -1, -1]}],
        "outputs": [{"name": "mean", "datatype": "FP32", "dims": [3]}], "limits": {"max_pixels": max_pixels}}))


def image_body(x) -> dict:
    return {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def text_spec(**limits) -> ModelSpec:
    return ModelSpec(max_batch_size=8, inputs=[{"name": "text", "datatype": "BYTES", "dims": [1]}],
                     outputs=[{"name": "embedding", "datatype": "FP32", "dims": [4]}], text={}, limits=limits)


def test_text_bytes_before_tokenizing_and_tokens_after():
    lim = input_limits(text_spec(max_text_bytes=10, max_tokens=5), "minilm", True)
    lim.check({"text": np.array([[b"hello"], [b"world"]], dtype=object)})  # 10 bytes: at the limit
    with pytest.raises(InputTooLarge) as e:
        lim.check({"text": np.array([[b"hello"], [b"world!"]], dtype=object)})
    assert e.value.details == {"limit": "max_text_bytes", "value": 11, "max": 10, "input": "text"}
    lim.check_tokens({"attention_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]])})
    with pytest.raises(InputTooLarge) as e:
        lim.check_tokens({"attention_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]])})
    assert e.value.details["limit"] == "max_tokens" and e.value.details["value"] == 6


def test_no_limits_means_no_checker():
    assert input_limits(text_spec(), "minilm", True) is None
