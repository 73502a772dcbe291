"""One model version directory in, one gated quantized version directory out.

The new version is assembled in a hidden sibling directory and renamed into
place only after it passed the accuracy gate, so a refused or interrupted
run leaves nothing that looks like a model version.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from ..atomic import fsync_dir
from ..errors import EdgeError
from ..runtime.model_spec import load_model_spec
from .calibration import CalibrationSource
from .convert import PRECISION, Mode, graph_input_names, quantize
from ..digests import sha256_file
from .gate import GateReport, GateThresholds, Task, enforce, evaluate, record

# Not copied: the graph is replaced, model.yaml is rewritten, and a registry
# manifest names digests of the old graph.
NOT_COPIED = {"model.onnx", "model.yaml", "manifest.json", "manifest.json.sig"}


class VersionExists(EdgeError):
    """`edge-agent quantize --out` names a version directory that already exists; nothing is overwritten."""

    code = "version_exists"
    http_status = 409


def text_pipeline_for(version_dir: Path):
    """The TextPipeline of a text model version, or None."""
    spec = load_model_spec(version_dir / "model.yaml")
    if spec.text is None:
        return None
    from ..runtime.text import TextPipeline

    model = onnx.load(str(version_dir / "model.onnx"), load_external_data=False)
    return TextPipeline(spec.text, version_dir, graph_input_names(model))


def quantize_version(
    src_dir: Path,
    out_dir: Path,
    mode: Mode,
    *,
    eval_source: CalibrationSource,
    calibration: CalibrationSource | None = None,
    task: Task | None = None,
    thresholds: GateThresholds | None = None,
    per_channel: bool = True,
    calibrate_method: str = "MinMax",
    op_types_to_quantize: Sequence[str] | None = None,
    exclude_op_types: Sequence[str] = (),
    exclude_nodes: Sequence[str] = (),
    symmetric_activations: bool = True,
    dynamic_weights: str = "int8",
    smooth_alpha: float | None = None,
    smooth_nodes: Sequence[str] = ("*",),
    disabled_optimizers: Sequence[str] = (),
    output: str | None = None,
    progress: bool = True,
) -> GateReport:
    """Quantize ``src_dir``'s model, gate it, write ``out_dir``; raise AccuracyGateFailed if refused.

    ``disabled_optimizers`` go into the new model.yaml (``session:``) and the
    candidate is judged with them off, as the daemon will run it.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    src_model = src_dir / "model.onnx"
    load_model_spec(src_dir / "model.yaml")  # refuse a broken source early
    if out_dir.exists() and any(out_dir.iterdir()):
        raise VersionExists(f"{out_dir}: already exists and is not empty")
    text = text_pipeline_for(src_dir)
    task = task or ("embedding" if text is not None else "classification")
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        recipe = quantize(src_model, tmp / "model.onnx", mode, calibration, per_channel=per_channel,
                          calibrate_method=calibrate_method, op_types_to_quantize=op_types_to_quantize, exclude_op_types=exclude_op_types,
                          exclude_nodes=exclude_nodes, symmetric_activations=symmetric_activations, dynamic_weights=dynamic_weights,
                          smooth_alpha=smooth_alpha, smooth_nodes=smooth_nodes, text_pipeline=text, progress=progress)
        report = evaluate(src_model, tmp / "model.onnx", eval_source, task, thresholds, output=output,
                          postprocess=text.pool if text is not None and output is None else None,
                          text_pipeline=text, progress=progress, disabled_optimizers=disabled_optimizers)
        enforce(report)
        for f in src_dir.iterdir():
            if f.name not in NOT_COPIED and f.is_file():
                shutil.copy2(f, tmp / f.name)
        shutil.copy2(src_dir / "model.yaml", tmp / "model.yaml")
        lineage = {
            "source": f"{src_dir.parent.name}/{src_dir.name}",
            "source_sha256": sha256_file(src_model),
            "sha256": sha256_file(tmp / "model.onnx"),
            "recipe": recipe,
            "onnxruntime": ort.__version__,
        }
        record(tmp / "model.yaml", report, PRECISION[mode], lineage, disabled_optimizers)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
