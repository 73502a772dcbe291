"""One model version directory in, one gated quantized version directory out.

The new version is assembled in a hidden sibling directory and renamed into
place only after it passed the accuracy gate, so a refused or interrupted
run leaves nothing that looks like a model version.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from ..atomic import fsync_dir
from ..errors import EdgeError
from ..runtime.cpu import CpuInfo, this_cpu
from ..runtime.model_spec import DEFAULT_ARTIFACT, load_model_spec
from .calibration import CalibrationSource
from .convert import PRECISION, Mode, QuantizationError, graph_input_names, quantize
from ..digests import sha256_file
from .gate import AccuracyGateFailed, GateReport, GateThresholds, Task, enforce, evaluate, evaluate_set, record
from .targets import BUILD_FILES, DEFAULT_WEIGHTS, exact_u8u8_twin, gate_method, parse_targets

# Not copied: the graph is replaced, model.yaml is rewritten, and a registry
# manifest names digests of the old graph.
NOT_COPIED = {"model.onnx", "model.yaml", "manifest.json", "manifest.json.sig"}

log = logging.getLogger(__name__)


@dataclass
class ArtifactSetReport:
    """The gate of every artifact of a version built for several CPU targets; passes only if each passes."""

    reports: dict  # file -> GateReport
    targets: dict  # file -> [target names]
    gated_on: dict  # file -> targets.gate_method(...)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports.values())

    def summary(self) -> str:
        lines = []
        for f, r in self.reports.items():
            g = self.gated_on[f]
            lines.append(f"{f} [{', '.join(self.targets[f])}] gated {g['method']} on {g['cpu']}: {r.summary()}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "artifacts": {f: {"targets": self.targets[f], "gated_on": self.gated_on[f], **r.to_dict()}
                                                     for f, r in self.reports.items()}}


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
    targets: Sequence[str] | None = None,
    cpu: CpuInfo | None = None,
) -> GateReport | ArtifactSetReport:
    """Quantize ``src_dir``'s model, gate it, write ``out_dir``; raise AccuracyGateFailed if refused.

    ``disabled_optimizers`` go into the new model.yaml (``session:``) and the
    candidate is judged with them off, as the daemon will run it.

    ``targets`` (dynamic mode; names from targets.TARGETS) build one file per
    distinct weight type the targets need plus the uint8-weight default
    model.onnx, gate each against the FP32 source, and declare them in
    model.yaml ``artifacts`` with their own gate report and recipe. The
    version is written only if every file passes. ``cpu`` (default: this
    machine) decides how an int8-weight file's gate runs faithfully
    (targets.gate_method); ``dynamic_weights`` does not apply then.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    src_model = src_dir / "model.onnx"
    src_spec = load_model_spec(src_dir / "model.yaml")  # refuse a broken source early
    if out_dir.exists() and any(out_dir.iterdir()):
        raise VersionExists(f"{out_dir}: already exists and is not empty")
    chosen = None
    if targets:
        if mode != "dynamic":
            raise QuantizationError("CPU targets are dynamic INT8 builds: use mode dynamic")
        chosen = parse_targets(targets)
    text = text_pipeline_for(src_dir)
    task = task or ("embedding" if text is not None else "classification")
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The weight types to build, each into its own file; without targets: model.onnx alone.
    builds = {DEFAULT_ARTIFACT: dynamic_weights} if chosen is None else \
        {BUILD_FILES[w]: w for w in [DEFAULT_WEIGHTS] + [t.weights for t in chosen]}
    try:
        recipes = {}
        for file, weights in builds.items():
            recipes[file] = quantize(
                src_model, tmp / file, mode, calibration, per_channel=per_channel, calibrate_method=calibrate_method,
                op_types_to_quantize=op_types_to_quantize, exclude_op_types=exclude_op_types, exclude_nodes=exclude_nodes,
                symmetric_activations=symmetric_activations, dynamic_weights=weights, smooth_alpha=smooth_alpha,
                smooth_nodes=smooth_nodes, text_pipeline=text, progress=progress)
        gate_kw = dict(output=output, postprocess=text.pool if text is not None and output is None else None,
                       text_pipeline=text, progress=progress, disabled_optimizers=disabled_optimizers)
        artifacts = None
        if chosen is None:
            report = evaluate(src_model, tmp / DEFAULT_ARTIFACT, eval_source, task, thresholds, **gate_kw)
            enforce(report)
        else:
            cpu = cpu or this_cpu()
            gated_on = {f: gate_method(w, cpu) for f, w in builds.items()}
            candidates = {f: exact_u8u8_twin(tmp / f) if gated_on[f]["method"] == "exact-u8u8-twin" else tmp / f for f in builds}
            for f, g in gated_on.items():
                log.info("gate of %s: %s on %s (%s)", f, g["method"], g["cpu"], g["note"])
            reports = evaluate_set(src_model, candidates, eval_source, task, thresholds, **gate_kw)
            served_by = {f: [t.name for t in chosen if BUILD_FILES[t.weights] == f] for f in builds}
            served_by[DEFAULT_ARTIFACT].append("default")
            set_report = ArtifactSetReport(reports, served_by, gated_on)
            if not set_report.passed:
                raise AccuracyGateFailed(set_report)
            report = reports[DEFAULT_ARTIFACT]

            def entry(file: str, **where) -> dict:
                return {"file": file, **where, "accuracy": {**reports[file].to_dict(), "gated_on": gated_on[file]},
                        "recipe": {**recipes[file], "sha256": sha256_file(tmp / file)}}
            artifacts = [entry(BUILD_FILES[t.weights], requires=list(t.requires), target=t.name) for t in chosen]
            artifacts.append(entry(DEFAULT_ARTIFACT))
        skip = NOT_COPIED | set(src_spec.artifact_files())
        for f in src_dir.iterdir():
            if f.name not in skip and f.is_file():
                shutil.copy2(f, tmp / f.name)
        shutil.copy2(src_dir / "model.yaml", tmp / "model.yaml")
        lineage = {
            "source": f"{src_dir.parent.name}/{src_dir.name}",
            "source_sha256": sha256_file(src_model),
            "sha256": sha256_file(tmp / DEFAULT_ARTIFACT),
            "recipe": recipes[DEFAULT_ARTIFACT],
            "onnxruntime": ort.__version__,
        }
        if chosen is not None:
            lineage["targets"] = [t.name for t in chosen]
        record(tmp / "model.yaml", report, PRECISION[mode], lineage, disabled_optimizers, artifacts)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
        return report if chosen is None else set_report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
