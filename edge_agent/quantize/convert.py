"""FP32 ONNX -> INT8 static QDQ, INT8 dynamic, or FP16 (IO kept FP32).

Everything intermediate (shape-inferred copy, ORT's augmented calibration
model) lives in a scratch TemporaryDirectory that is removed whatever
happens; only the finished graph is moved to ``out``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

from ..errors import EdgeError
from .calibration import CalibrationSource, FeedReader, load_batches
from .smooth import smooth

log = logging.getLogger(__name__)

Mode = Literal["qdq", "dynamic", "fp16"]
DynamicWeights = Literal["int8", "uint8"]
PRECISION = {"qdq": "int8-qdq", "dynamic": "int8-dynamic", "fp16": "fp16"}
CALIBRATE_METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy, "Percentile": CalibrationMethod.Percentile}


class QuantizationError(EdgeError):
    """ONNX Runtime's quantizer refused the model or the recipe."""

    code = "quantization_failed"
    http_status = 500


def _used_domains(graph: onnx.GraphProto, used: set) -> set:
    for node in graph.node:
        used.add(node.domain or "")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _used_domains(attr.g, used)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _used_domains(g, used)
    return used


def drop_unused_opsets(path: Path) -> list[str]:
    """Remove opset imports of domains no node uses; returns what went.

    Why: ORT's quantizer (1.32) declares ``ai.onnx.ml`` opset 5 and half a
    dozen other domains whether the graph uses them or not, and ORT 1.16 (the
    JetPack 5 units' runtime) refuses to load a model that imports a version
    it does not know ("Opset 5 is under development"), though no node needs
    it. The default domain always stays."""
    model = onnx.load(str(path))
    used = _used_domains(model.graph, set()) | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if (o.domain or "") in ("", "ai.onnx") or o.domain in used]
    dropped = [f"{o.domain}:{o.version}" for o in model.opset_import if o not in keep]
    if dropped:
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, str(path))
    return dropped


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def select_nodes(model: onnx.ModelProto, exclude_op_types: Sequence[str] = (), exclude_nodes: Sequence[str] = ()) -> list[str]:
    """Names of nodes to leave in float: by op type, or by name (fnmatch globs)."""
    ops = set(exclude_op_types)
    out = []
    for n in model.graph.node:
        if n.op_type in ops or any(fnmatch.fnmatchcase(n.name, p) for p in exclude_nodes):
            out.append(n.name)
    return out


def quantize(
    fp32_model: Path,
    out: Path,
    mode: Mode,
    calibration: CalibrationSource | None = None,
    *,
    per_channel: bool = True,
    calibrate_method: str = "MinMax",
    op_types_to_quantize: Sequence[str] | None = None,
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    symmetric_activations: bool = True,
    reduce_range: bool = False,
    dynamic_weights: DynamicWeights = "int8",
    smooth_alpha: float | None = None,
    smooth_nodes: Sequence[str] = ("*",),
    text_pipeline=None,
    progress: bool = True,
) -> dict:
    """Write the converted graph to ``out``; return the recipe (for lineage).

    ``symmetric_activations`` (QDQ only) keeps activation zero points at 0,
    the form TensorRT's explicit INT8 requires. ``reduce_range`` uses 7-bit
    weights, which lessens int16 saturation on x86 CPUs without VNNI.
    ``dynamic_weights`` (dynamic only): ``int8`` runs ONNX Runtime's U8S8
    kernels, fastest where the CPU has VNNI (x86) or dot-product
    instructions (Arm); on x86 AVX2 without VNNI they sum pairs of products
    in int16 and saturate, so the same model loses accuracy there.
    ``uint8`` runs the U8U8 kernels, exact on every CPU.
    ``smooth_alpha`` applies SmoothQuant (smooth.py) to the MatMuls named by
    ``smooth_nodes`` first; it needs calibration data in every INT8 mode.
    """
    fp32_model, out = Path(fp32_model), Path(out)
    if mode not in PRECISION:
        raise QuantizationError(f"unknown mode {mode!r}; one of {sorted(PRECISION)}")
    if calibrate_method not in CALIBRATE_METHODS:
        raise QuantizationError(f"unknown calibrate method {calibrate_method!r}; one of {sorted(CALIBRATE_METHODS)}")
    if dynamic_weights not in get_args(DynamicWeights):
        raise QuantizationError(f"unknown dynamic weight type {dynamic_weights!r}; one of {list(get_args(DynamicWeights))}")
    if smooth_alpha is not None and (mode == "fp16" or calibration is None):
        raise QuantizationError("smoothing needs calibration data and an INT8 mode")
    recipe: dict = {"mode": mode}
    fp32_model, out = fp32_model.resolve(), out.resolve()
    with tempfile.TemporaryDirectory(prefix="edge-agent-quant-") as tmp:
        tmpd = Path(tmp)
        result = tmpd / "model.onnx"
        try:
            if mode == "fp16":
                _to_fp16(fp32_model, result, exclude_op_types)
                recipe["exclude_op_types"] = list(exclude_op_types)
            else:
                pre = tmpd / "pre.onnx"
                batches, graph_in = None, fp32_model
                if calibration is not None and (mode == "qdq" or smooth_alpha is not None):
                    batches = load_batches(calibration, graph_input_names(onnx.load(str(fp32_model), load_external_data=False)), text_pipeline)
                if smooth_alpha is not None:
                    graph_in = tmpd / "smoothed.onnx"
                    recipe.update(smooth(fp32_model, graph_in, batches, smooth_alpha, smooth_nodes, progress))
                # ORT's symbolic shape inference and quantizers drop temporary
                # files (sym_shape_infer_temp.onnx, external-data *.data) in the
                # current directory: run them from inside the scratch directory.
                with _in_dir(tmp):
                    recipe["pre_process"] = _pre_process(graph_in, pre)
                model = onnx.load(str(pre), load_external_data=False)
                excluded = select_nodes(model, exclude_op_types, exclude_nodes)
                recipe.update(per_channel=per_channel, reduce_range=reduce_range, exclude_op_types=list(exclude_op_types), exclude_nodes=list(exclude_nodes), excluded_node_count=len(excluded))
                if op_types_to_quantize:
                    recipe["op_types_to_quantize"] = list(op_types_to_quantize)
                if mode == "dynamic":
                    with _in_dir(tmp):
                        recipe["weight_type"] = dynamic_weights
                        quantize_dynamic(str(pre), str(result), per_channel=per_channel, reduce_range=reduce_range,
                                         weight_type=QuantType.QUInt8 if dynamic_weights == "uint8" else QuantType.QInt8,
                                         op_types_to_quantize=op_types_to_quantize, nodes_to_exclude=excluded)
                else:
                    if calibration is None:
                        raise QuantizationError("static QDQ quantization needs calibration data")
                    names = graph_input_names(model)
                    if calibrate_method != "MinMax" and text_pipeline is not None:
                        # ORT's histogram calibrators stack every batch's
                        # activations: feed equal shapes (one row, one width).
                        width = max(x["input_ids"].shape[1] for x in batches)
                        batches = [{k: v[i : i + 1] for k, v in text_pipeline.pad_to(b, width).items()}
                                   for b in batches for i in range(len(b["input_ids"]))]
                    reader = FeedReader(batches, names, progress)
                    recipe.update(calibrate_method=calibrate_method, calibration_batches=len(reader), symmetric_activations=symmetric_activations)
                    with _in_dir(tmp):
                        quantize_static(
                            str(pre), str(result), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=op_types_to_quantize, nodes_to_exclude=excluded,
                            calibrate_method=CALIBRATE_METHODS[calibrate_method],
                            extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
                        )
        except EdgeError:
            raise
        except Exception as e:  # ORT raises plain exceptions of many kinds
            raise QuantizationError(f"{fp32_model}: {mode} quantization failed: {type(e).__name__}: {e}") from e
        drop_unused_opsets(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result), str(out))
    log.info("quantized %s -> %s (%s)", fp32_model, out, mode)
    return recipe


@contextlib.contextmanager
def _in_dir(path):
    """contextlib.chdir exists only from Python 3.11; units may run 3.10."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _pre_process(src: Path, dst: Path) -> str:
    """Shape inference + graph cleanup ORT recommends before quantizing.

    Symbolic shape inference gives up on some exporters' graphs (dynamic
    sequence axes through Reshape); then merge unknown dims, then fall back
    to ONNX's own shape inference. Returns which variant worked.
    """
    attempts = (("symbolic", {}), ("symbolic-auto-merge", {"auto_merge": True}), ("onnx-shape", {"skip_symbolic_shape": True}))
    for i, (name, kw) in enumerate(attempts):
        try:
            quant_pre_process(str(src), str(dst), **kw)
            return name
        except Exception as e:  # ORT raises bare Exception here
            if i == len(attempts) - 1:
                raise
            log.info("pre-process %s failed (%s); trying %s", name, e, attempts[i + 1][0])
    raise AssertionError("unreachable")


def _to_fp16(src: Path, dst: Path, exclude_op_types: Sequence[str]) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    block = list(DEFAULT_OP_BLOCK_LIST) + [t for t in exclude_op_types if t not in DEFAULT_OP_BLOCK_LIST]
    # keep_io_types: clients keep sending FP32; casts sit at the graph edges.
    onnx.save(convert_float_to_float16(model, keep_io_types=True, op_block_list=block), str(dst))
