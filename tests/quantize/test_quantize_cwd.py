"""The quantizer must not leave files in the caller's working directory.

ONNX Runtime's symbolic shape inference saves ``sym_shape_infer_temp.onnx``
(and external-data files) in the current directory when it gives up on a
graph; the pipeline retries and must keep that litter in its scratch dir.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.quantize.convert import quantize


def test_no_files_left_in_cwd_when_symbolic_inference_gives_up(tmp_path, monkeypatch):
    # Two inputs with unrelated symbolic batch dims added together: plain
    # symbolic shape inference fails on this, auto-merge succeeds.
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", 4]), helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "fp32.onnx"
    onnx.save(model, src)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recipe = quantize(src, tmp_path / "int8.onnx", "dynamic")
    assert recipe["pre_process"] != "symbolic"  # the first attempt did give up
    assert (tmp_path / "int8.onnx").exists()
    assert list(cwd.iterdir()) == []
