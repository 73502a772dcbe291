"""Quantized graphs import only the opsets their nodes use (ORT 1.16 refuses
a model importing an opset version it does not know, used or not)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edge_agent.quantize.convert import drop_unused_opsets


def _model(path, extra_opsets):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_unused_domains_are_dropped_and_the_default_kept(tmp_path):
    path = tmp_path / "m.onnx"
    _model(path, [helper.make_opsetid("ai.onnx.ml", 5), helper.make_opsetid("com.microsoft", 1)])
    assert sorted(drop_unused_opsets(path)) == ["ai.onnx.ml:5", "com.microsoft:1"]
    kept = [(o.domain, o.version) for o in onnx.load(str(path)).opset_import]
    assert kept == [("", 17)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.array([[-1, 2, -3, 4]], np.float32)})[0].tolist() == [[0, 2, 0, 4]]


def test_a_domain_a_node_uses_stays(tmp_path):
    path = tmp_path / "m.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    model.ir_version = 8
    onnx.save(model, str(path))
    assert drop_unused_opsets(path) == ["ai.onnx.ml:5"]
    assert {o.domain for o in onnx.load(str(path)).opset_import} == {"", "com.microsoft"}
