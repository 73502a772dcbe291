"""INT8 for the conv net of a pipeline version: the OCR pipeline's text detector (det.onnx)
as a static QDQ graph, calibrated on text images and gated on boxes and on the text read
(ocr_gate.py). One version directory in, a new one out, written only if the gate passes.

Why only det: it holds most of the pipeline's compute (a 736-px-short-side image through a
ResNet-ish DBNet), its output is a smooth probability map thresholded at 0.3, so INT8 noise
moves box edges by a pixel at most; rec's CTC argmax over 6,625 classes is far touchier.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import onnxruntime as ort
import yaml

from ..atomic import atomic_write, fsync_dir
from ..digests import sha256_file
from .calibration import CalibrationDataError
from .convert import PRECISION, quantize
from .gate import AccuracyGateFailed, GateReport
from .ocr_gate import InProcessOcr, OcrGateThresholds, det_input, evaluate_det
from .version import VersionExists

QDQ_OPSET = 13
# MinMax keeps every calibration image's activations until the end: ~0.6 GB per image for
# PP-OCRv4 det at RapidOCR's 736-px short side. ORT's CalibMaxIntermediateOutputs would bound
# it but (ORT 1.32, MinMaxCalibrater.collect_data) drops each full chunk without folding its
# ranges in, so it is not used: keep calibration sets to a dozen or so images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
log = logging.getLogger(__name__)


def is_pipeline_version(version_dir: Path) -> bool:
    """A version whose model.yaml declares ``pipeline:`` steps (no single model.onnx)."""
    f = Path(version_dir) / "model.yaml"
    try:
        return isinstance((yaml.safe_load(f.read_text()) or {}).get("pipeline"), list)
    except (OSError, yaml.YAMLError):
        return False


def load_images(folder: Path) -> List[np.ndarray]:
    """Every image of a folder (sorted by name) as BGR arrays, EXIF orientation ignored (as
    RapidOCR, which decodes with Pillow)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationDataError(f"{folder}: a pipeline's calibration/evaluation data is a folder of images")
    out = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if img is None:
                raise CalibrationDataError(f"{f}: not a readable image")
            out.append(img)
    if not out:
        raise CalibrationDataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _at_least_opset(src: Path, dst: Path) -> Path:
    """``src`` itself when its opset allows per-channel QDQ (DequantizeLinear's ``axis``
    came with opset 13), else a copy converted to opset 13 at ``dst`` (PP-OCR's det ships at
    opset 12)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET) >= QDQ_OPSET:
        return src
    onnx.save(version_converter.convert_version(model, QDQ_OPSET), str(dst))
    return dst


def _step_file(spec: dict, step: str) -> str:
    for s in spec["pipeline"]:
        if s.get("name") == step:
            return s["model"]
    raise CalibrationDataError(f"the pipeline has no step {step!r} (steps: {[s.get('name') for s in spec['pipeline']]})")


def quantize_ocr_det(src_dir: Path, out_dir: Path, calibration: Path, eval_images: Path, *,
                     thresholds: OcrGateThresholds = OcrGateThresholds(), step: str = "det",
                     calibrate_method: str = "MinMax", exclude_op_types: Sequence[str] = (),
                     exclude_nodes: Sequence[str] = (), per_channel: bool = True, progress: bool = True) -> GateReport:
    """Quantize the det step of the OCR pipeline version ``src_dir`` into ``out_dir`` (static
    QDQ, symmetric activations), gate it against the FP32 pipeline on ``eval_images``, and
    write the new version only if it passes; raise AccuracyGateFailed otherwise."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    spec = yaml.safe_load((src_dir / "model.yaml").read_text())
    files = {s["name"]: s["model"] for s in spec["pipeline"]}
    det_file = _step_file(spec, step)
    if not {"cls", "rec"} <= set(files):
        raise CalibrationDataError("the OCR gate needs the pipeline's cls and rec steps")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise VersionExists(f"{out_dir}: already exists and is not empty")
    calib = [{"x": det_input(img)} for img in load_images(calibration)]
    evals = load_images(eval_images)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fp32 = _at_least_opset(src_dir / det_file, tmp / f".fp32-{det_file}")
        recipe = quantize(fp32, tmp / det_file, "qdq", calib, per_channel=per_channel,
                          calibrate_method=calibrate_method, exclude_op_types=exclude_op_types,
                          exclude_nodes=exclude_nodes, progress=progress)
        reference = InProcessOcr(src_dir / det_file, src_dir / files["cls"], src_dir / files["rec"])
        candidate = InProcessOcr(tmp / det_file, src_dir / files["cls"], src_dir / files["rec"])
        report = evaluate_det(reference, candidate, evals, thresholds, progress)
        if not report.passed:
            raise AccuracyGateFailed(report)
        if fp32.parent == tmp:
            fp32.unlink()
            recipe["opset_converted_to"] = QDQ_OPSET
        for f in src_dir.iterdir():
            if f.is_file() and f.name not in (det_file, "model.yaml", "manifest.json", "manifest.json.sig"):
                shutil.copy2(f, tmp / f.name)
        spec["accuracy"] = report.to_dict()
        spec["lineage"] = {"source": f"{src_dir.parent.name}/{src_dir.name}", "step": step, "step_precision": PRECISION["qdq"],
                           "source_sha256": sha256_file(src_dir / det_file), "sha256": sha256_file(tmp / det_file),
                           "recipe": {**recipe, "calibration_images": len(calib), "eval_images": len(evals)},
                           "onnxruntime": ort.__version__}
        atomic_write(tmp / "model.yaml", yaml.safe_dump(spec, sort_keys=False))
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
