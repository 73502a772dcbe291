"""SmoothQuant for weight MatMuls: move activation outliers into the weights.

Transformer activations have a few channels far larger than the rest, and
INT8 activation quantization (one scale per tensor, chosen per batch by
dynamic quantization) spends its range on them: every other channel is left
with a handful of levels. SmoothQuant (Xiao et al., 2023, arXiv:2211.10438)
divides activation channel k by ``s_k`` and multiplies row k of the weight
by it, which leaves ``X @ W`` unchanged in exact arithmetic:

    s_k = max|X_k| ** alpha / max|W_k| ** (1 - alpha)

``alpha`` sets how much of the difficulty moves to the weights (0.5 splits
it; weights are quantized per output channel and take more). The division
is a ``Mul`` node inserted in front of the MatMuls that share the input; the
weights are rescaled in place. Activation maxima come from calibration data.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from tqdm import tqdm

from .calibration import feeds_of

log = logging.getLogger(__name__)

SCALE_LIMITS = (1e-5, 1e5)


def weight_matmuls(model: onnx.ModelProto, nodes: Sequence[str] = ("*",)) -> dict[str, list[onnx.NodeProto]]:
    """MatMuls with a 2-D initializer as B whose names match ``nodes``, grouped by their A input."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits or len(inits[n.input[1]].dims) != 2:
            continue
        if any(fnmatch.fnmatchcase(n.name, p) for p in nodes):
            groups[n.input[0]].append(n)
    return dict(groups)


def activation_maxima(model: onnx.ModelProto, tensors: Sequence[str], batches: list[dict], progress: bool = False) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of ``tensors`` over the calibration batches."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in known:
            probe.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No graph rewrites: the probed tensors must stay as they are in the file.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    names = [o.name for o in sess.get_outputs()]
    amax: dict[str, np.ndarray] = {}
    for b in tqdm(batches, desc="smoothing", unit="batch", disable=not progress, leave=False):
        outs = dict(zip(names, sess.run(None, feeds_of(b, inputs))))
        for t in tensors:
            v = np.abs(outs[t].reshape(-1, outs[t].shape[-1])).max(0)
            amax[t] = v if t not in amax else np.maximum(amax[t], v)
    return amax


def smooth(src: Path, dst: Path, batches: list[dict], alpha: float, nodes: Sequence[str] = ("*",), progress: bool = False) -> dict:
    """Write ``src`` with SmoothQuant applied to the matching MatMuls to ``dst``; return what was done."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"smooth alpha must be between 0 and 1, got {alpha}")
    model = onnx.load(str(src))
    groups = weight_matmuls(model, nodes)
    if not groups:
        raise ValueError(f"no MatMul with a constant weight matches {list(nodes)}")
    amax = activation_maxima(model, list(groups), batches, progress)
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        for i in n.input:
            uses[i] += 1
    muls: dict[str, onnx.NodeProto] = {}
    for x, matmuls in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in matmuls]
        wmax = np.max([np.abs(w).max(1) for w in weights], 0)
        xmax = amax[x]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.power(xmax, alpha) / np.power(wmax, 1.0 - alpha)
        # A dead channel (all-zero activation or weight row) keeps scale 1.
        s = np.where((xmax > 0) & (wmax > 0) & np.isfinite(s), s, 1.0).clip(*SCALE_LIMITS).astype(np.float32)
        inv, xs = f"{x}_smooth_inv", f"{x}_smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        muls[x] = helper.make_node("Mul", [x, inv], [xs], name=f"{x}_SmoothQuantMul")
        for n, w in zip(matmuls, weights):
            scaled = numpy_helper.from_array((w * s[:, None]).astype(w.dtype), n.input[1])
            if uses[n.input[1]] > 1:
                # Shared with another node: give this MatMul its own copy.
                scaled.name = f"{n.input[1]}_smoothed_{n.name}"
                model.graph.initializer.append(scaled)
                n.input[1] = scaled.name
            else:
                inits[n.input[1]].CopyFrom(scaled)
            n.input[0] = xs
    # Each Mul goes right after the node producing its input, so the graph
    # stays topologically sorted; graph inputs get theirs at the front.
    order = [muls.pop(i.name) for i in model.graph.input if i.name in muls]
    for n in model.graph.node:
        order.append(n)
        order.extend(muls.pop(o) for o in n.output if o in muls)
    if muls:
        raise ValueError(f"cannot place smoothing for {sorted(muls)}")
    del model.graph.node[:]
    model.graph.node.extend(order)
    onnx.save(model, str(dst))
    log.info("smoothed %d activation tensors (%d MatMuls), alpha %.2f", len(groups), sum(map(len, groups.values())), alpha)
    return {"smooth_alpha": alpha, "smooth_nodes": list(nodes), "smoothed_tensors": len(groups)}
