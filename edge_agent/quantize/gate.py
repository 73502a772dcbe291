"""Accuracy gate: a quantized candidate must stay close to its FP32 reference.

Both graphs run on the same evaluation batches on the CPU provider.
Classification compares top-1 accuracy (against labels when the data carries
them, else against the reference's own predictions); embeddings compare
per-row cosine similarity. A failing candidate is refused with its report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import yaml
from tqdm import tqdm

from ..atomic import atomic_write
from ..errors import EdgeError
from ..runtime.model_spec import ModelSpec
from .calibration import CalibrationSource, feeds_of, labels_of, load_batches

Task = Literal["classification", "embedding"]


@dataclass(frozen=True)
class GateThresholds:
    max_top1_drop_pp: float = 3.0
    min_mean_cosine: float = 0.99
    min_min_cosine: float = 0.98


@dataclass
class GateReport:
    task: str
    passed: bool
    samples: int
    figures: dict
    thresholds: dict
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        figs = ", ".join(f"{k}={v}" for k, v in self.figures.items())
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return f"accuracy gate ({self.task}, {self.samples} samples): {figs} -> {verdict}"


class AccuracyGateFailed(EdgeError):
    """The quantized candidate is too far from its FP32 reference; it is refused."""

    code = "accuracy_gate_failed"
    http_status = 422

    def __init__(self, report: GateReport) -> None:
        super().__init__(report.summary(), report=report.to_dict())
        self.report = report


def _session(path: Path, disabled_optimizers: Sequence[str] = ()) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers))


def evaluate(
    reference: Path,
    candidate: Path,
    eval_source: CalibrationSource,
    task: Task,
    thresholds: GateThresholds | None = None,
    *,
    output: str | None = None,
    postprocess: Callable[[dict, dict], np.ndarray] | None = None,
    text_pipeline=None,
    progress: bool = True,
    disabled_optimizers: Sequence[str] = (),
) -> GateReport:
    """Run both graphs over ``eval_source`` and judge the candidate.

    ``postprocess(outputs_by_name, feeds) -> [n, d]`` turns raw graph outputs
    into what clients see (e.g. TextPipeline.pool for token-state models);
    without it ``output`` (default: the first graph output) is compared.
    """
    th = thresholds or GateThresholds()
    ref, cand = _session(reference), _session(candidate, disabled_optimizers)
    names = [i.name for i in ref.get_inputs()]
    out_name = output or ref.get_outputs()[0].name
    batches = load_batches(eval_source, names, text_pipeline)
    ref_vals, cand_vals, labels = [], [], []
    for b in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
        feeds = feeds_of(b, names)
        r = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feeds)))
        c = dict(zip([o.name for o in cand.get_outputs()], cand.run(None, feeds)))
        if postprocess is not None:
            r_v, c_v = postprocess(r, feeds), postprocess(c, feeds)
        else:
            r_v, c_v = r[out_name], c[out_name]
        ref_vals.append(np.asarray(r_v, np.float64).reshape(len(r_v), -1))
        cand_vals.append(np.asarray(c_v, np.float64).reshape(len(c_v), -1))
        lab = labels_of(b)
        labels.append(lab if lab is not None else None)
    R, C = np.concatenate(ref_vals), np.concatenate(cand_vals)
    if task == "classification":
        have_labels = all(lab is not None for lab in labels)
        truth = np.concatenate(labels) if have_labels else R.argmax(1)
        return _judge_classification(R, C, truth, have_labels, th)
    if task == "embedding":
        return _judge_embedding(R, C, th)
    raise ValueError(f"unknown task {task!r}")


def _judge_classification(R, C, truth, have_labels, th: GateThresholds) -> GateReport:
    rp, cp = R.argmax(1), C.argmax(1)
    ref_acc = 100.0 * float((rp == truth).mean())
    cand_acc = 100.0 * float((cp == truth).mean())
    drop = ref_acc - cand_acc
    figures = {
        "reference_top1_pct": round(ref_acc, 3),
        "candidate_top1_pct": round(cand_acc, 3),
        "top1_drop_pp": round(drop, 3),
        "agreement_pct": round(100.0 * float((rp == cp).mean()), 3),
        "truth": "labels" if have_labels else "reference",
    }
    failures = [f"top-1 drop {drop:.2f} pp > {th.max_top1_drop_pp} pp"] if drop > th.max_top1_drop_pp else []
    return GateReport("classification", not failures, len(R), figures, {"max_top1_drop_pp": th.max_top1_drop_pp}, failures)


def _judge_embedding(R, C, th: GateThresholds) -> GateReport:
    denom = np.maximum(np.linalg.norm(R, axis=1) * np.linalg.norm(C, axis=1), 1e-12)
    cos = (R * C).sum(1) / denom
    mean_c, min_c = float(cos.mean()), float(cos.min())
    figures = {"mean_cosine": round(mean_c, 5), "min_cosine": round(min_c, 5), "max_abs_diff": round(float(np.abs(R - C).max()), 6)}
    failures = []
    if mean_c < th.min_mean_cosine:
        failures.append(f"mean cosine {mean_c:.4f} < {th.min_mean_cosine}")
    if min_c < th.min_min_cosine:
        failures.append(f"min cosine {min_c:.4f} < {th.min_min_cosine}")
    thr = {"min_mean_cosine": th.min_mean_cosine, "min_min_cosine": th.min_min_cosine}
    return GateReport("embedding", not failures, len(R), figures, thr, failures)


def enforce(report: GateReport) -> GateReport:
    if not report.passed:
        raise AccuracyGateFailed(report)
    return report


def record(model_yaml: Path, report: GateReport, precision: str, lineage: dict, disabled_optimizers: Sequence[str] = ()) -> None:
    """Write the passing figures, precision and lineage into model.yaml.

    The raw YAML mapping is edited (not a re-dump of ModelSpec) so the
    author's keys stay as written; the result is validated before it lands.
    """
    data = yaml.safe_load(model_yaml.read_text()) or {}
    data["precision"] = precision
    data["accuracy"] = report.to_dict()
    data["lineage"] = lineage
    if disabled_optimizers:
        data.setdefault("session", {})["disabled_optimizers"] = list(disabled_optimizers)
    ModelSpec.model_validate(data)
    atomic_write(model_yaml, yaml.safe_dump(data, sort_keys=False))
