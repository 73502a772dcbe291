"""`edge-agent quantize`: FP32 version dir -> gated INT8/FP16 version dir."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import EdgeError

# Literal here (not imported) so registering the subcommand stays cheap;
# tests check they match convert.py / gate.py.
MODES = ("dynamic", "fp16", "qdq")
CALIBRATE_METHODS = ("Entropy", "MinMax", "Percentile")
DYNAMIC_WEIGHTS = ("int8", "uint8")
TARGETS = ("avx512vnni", "avxvnni", "avx2")  # checked against targets.TARGETS by the tests
DEFAULT_MIN_MEAN_COSINE, DEFAULT_MIN_MIN_COSINE, DEFAULT_MAX_TOP1_DROP_PP = 0.99, 0.98, 3.0
DEFAULT_MIN_BOX_F1, DEFAULT_MAX_CER = 0.98, 0.01  # checked against ocr_gate.OcrGateThresholds by the tests

EXIT_OK, EXIT_ERROR, EXIT_GATE_FAILED = 0, 2, 3

log = logging.getLogger(__name__)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quantize",
        help="quantize a model version (INT8 QDQ/dynamic or FP16) behind an accuracy gate",
        description="Quantize MODEL_VERSION_DIR (model.onnx + model.yaml) into --out, a new version "
        "directory, only if the result passes the accuracy gate against the FP32 original. "
        f"Exit codes: {EXIT_OK} written, {EXIT_GATE_FAILED} refused by the gate, {EXIT_ERROR} other error.",
    )
    p.add_argument("version_dir", type=Path, metavar="MODEL_VERSION_DIR")
    p.add_argument("--mode", choices=MODES, required=True, help="qdq: static INT8 QDQ (TensorRT); dynamic: INT8 dynamic (CPU); fp16: FP16 with FP32 IO")
    p.add_argument("--out", type=Path, required=True, help="new version directory (must not exist or be empty)")
    p.add_argument("--calibration", help="calibration data: DIR of .npy/.npz, a .txt of texts (text models) or module:function (qdq, or dynamic with --smooth-alpha)")
    p.add_argument("--eval", required=True, dest="eval_source", help="evaluation data, same forms as --calibration")
    p.add_argument("--task", choices=["classification", "embedding"], help="gate kind; default embedding for text models, else classification")
    p.add_argument("--output", help="graph output to compare (default: pooled embedding for text models, else the first output)")
    p.add_argument("--op-types", nargs="*", metavar="OP", help="quantize only these op types, e.g. MatMul (default: all ORT supports)")
    p.add_argument("--exclude-op-types", nargs="*", default=[], metavar="OP", help="op types left in float, e.g. Softmax Gelu")
    p.add_argument("--exclude-nodes", nargs="*", default=[], metavar="GLOB", help="node names (fnmatch globs) left in float")
    p.add_argument("--calibrate-method", choices=CALIBRATE_METHODS, default="MinMax")
    p.add_argument("--smooth-alpha", type=float, metavar="A",
                   help="SmoothQuant first (0 < A < 1, e.g. 0.7): move activation outliers into the weights; needs --calibration")
    p.add_argument("--smooth-nodes", nargs="*", default=["*"], metavar="GLOB", help="MatMul node names (fnmatch globs) to smooth (default: all)")
    p.add_argument("--disable-optimizers", nargs="*", default=[], metavar="NAME",
                   help="ONNX Runtime graph optimizers to turn off for this version (written to model.yaml session:)")
    p.add_argument("--dynamic-weights", choices=DYNAMIC_WEIGHTS, default=None,
                   help="dynamic mode, one file: int8 weights (U8S8 kernels, fastest with VNNI or Arm dot product; saturate on x86 AVX2 "
                        "without VNNI) or uint8 (U8U8 kernels, exact on every CPU). Default int8")
    p.add_argument("--targets", type=lambda v: [t.strip() for t in v.split(",") if t.strip()], metavar="T1,T2",
                   help=f"dynamic mode: build one file per CPU kind and declare them in model.yaml artifacts ({', '.join(TARGETS)}); "
                        "int8-weight files for VNNI targets, uint8 weights for avx2 and the default model.onnx. Each file passes "
                        "the gate or nothing is written; on a CPU without VNNI an int8-weight file is gated as its exact twin")
    p.add_argument("--no-per-channel", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--asymmetric-activations", dest="symmetric", action="store_false", help="QDQ activations with zero points (not for TensorRT)")
    p.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_MEAN_COSINE, help="embedding gate: minimum mean cosine")
    p.add_argument("--min-min-cosine", type=float, default=DEFAULT_MIN_MIN_COSINE, help="embedding gate: minimum per-sample cosine")
    p.add_argument("--max-top1-drop", type=float, default=DEFAULT_MAX_TOP1_DROP_PP, help="classification gate: largest top-1 drop, percentage points")
    p.add_argument("--step", default="det", help="pipeline versions (model.yaml pipeline:): the conv-net step to quantize "
                   "(static QDQ; --calibration and --eval are folders of images). Default det (the OCR text detector)")
    p.add_argument("--min-box-f1", type=float, default=DEFAULT_MIN_BOX_F1, help="OCR det gate: minimum box F1 at IoU 0.5 vs FP32")
    p.add_argument("--max-cer", type=float, default=DEFAULT_MAX_CER, help="OCR det gate: largest character error rate of the pipeline vs FP32")
    p.add_argument("--json", action="store_true", help="print the gate report as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .gate import GateThresholds
    from .pipeline_version import is_pipeline_version
    from .version import quantize_version

    if is_pipeline_version(args.version_dir):
        return run_pipeline(args)
    if args.mode == "qdq" and not args.calibration:
        print("edge-agent quantize: --mode qdq needs --calibration", file=sys.stderr)
        return EXIT_ERROR
    if args.smooth_alpha is not None and (args.mode == "fp16" or not args.calibration or not 0 < args.smooth_alpha < 1):
        print("edge-agent quantize: --smooth-alpha needs an INT8 mode, --calibration, and 0 < A < 1", file=sys.stderr)
        return EXIT_ERROR
    if args.targets is not None and (args.mode != "dynamic" or args.dynamic_weights is not None):
        print("edge-agent quantize: --targets needs --mode dynamic and sets the weight type per target (no --dynamic-weights)", file=sys.stderr)
        return EXIT_ERROR
    th = GateThresholds(max_top1_drop_pp=args.max_top1_drop, min_mean_cosine=args.min_cosine, min_min_cosine=args.min_min_cosine)
    return _gated(args, lambda: quantize_version(
        args.version_dir, args.out, args.mode, eval_source=args.eval_source, calibration=args.calibration,
        task=args.task, thresholds=th, per_channel=args.per_channel, calibrate_method=args.calibrate_method,
        op_types_to_quantize=args.op_types or None, exclude_op_types=args.exclude_op_types, exclude_nodes=args.exclude_nodes,
        symmetric_activations=args.symmetric, dynamic_weights=args.dynamic_weights or "int8", smooth_alpha=args.smooth_alpha,
        smooth_nodes=args.smooth_nodes, disabled_optimizers=args.disable_optimizers, output=args.output, progress=args.progress,
        targets=args.targets,
    ))


def _gated(args: argparse.Namespace, build) -> int:
    """Run a gated build; print its report; the exit code says written / refused / error."""
    from .gate import AccuracyGateFailed

    try:
        report = build()
    except AccuracyGateFailed as e:
        print(json.dumps(e.report.to_dict()) if args.json else e.report.summary(), file=sys.stdout)
        print(f"edge-agent quantize: refused, {args.out} not written", file=sys.stderr)
        return EXIT_GATE_FAILED
    except EdgeError as e:
        print(f"edge-agent quantize: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def run_pipeline(args: argparse.Namespace) -> int:
    """A pipeline version: its conv-net step as static QDQ, gated on boxes and text (OCR)."""
    from .ocr_gate import OcrGateThresholds
    from .pipeline_version import quantize_ocr_det

    if args.mode != "qdq" or not args.calibration:
        print("edge-agent quantize: a pipeline version takes --mode qdq with --calibration and --eval folders of images", file=sys.stderr)
        return EXIT_ERROR
    th = OcrGateThresholds(min_box_f1=args.min_box_f1, max_cer=args.max_cer)
    return _gated(args, lambda: quantize_ocr_det(
        args.version_dir, args.out, Path(args.calibration), Path(args.eval_source), thresholds=th, step=args.step,
        calibrate_method=args.calibrate_method, exclude_op_types=args.exclude_op_types, exclude_nodes=args.exclude_nodes,
        per_channel=args.per_channel, progress=args.progress))
