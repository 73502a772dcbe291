"""The small synthetic classifier the quantize tests build (no MiniLM: fast), and the
``edge-agent quantize`` command run in-process. Its ``workdir`` fixture is conftest.py's."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_agent.quantize import cli as qcli

D_IN, D_HID, N_CLS = 16, 64, 4


def make_model(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(D_IN), (D_IN, D_HID)).astype(np.float32)
    b1 = rng.normal(0, 0.1, D_HID).astype(np.float32)
    w2 = rng.normal(0, 1 / np.sqrt(D_HID), (D_HID, N_CLS)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D_IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", N_CLS])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def run_cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="edge-agent")
    qcli.register(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(argv)
    return args.func(args)
