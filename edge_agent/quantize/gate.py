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


def _session(model: Path | bytes, disabled_optimizers: Sequence[str] = ()) -> ort.InferenceSession:
    """A CPU session of a file, or of serialized ONNX bytes (an exact twin built in memory)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers))


def evaluate(reference: Path, candidate: Path | bytes, eval_source: CalibrationSource, task: Task,
             thresholds: GateThresholds | None = None, **options) -> GateReport:
    """Run both graphs over ``eval_source`` and judge the candidate: ``evaluate_set`` with one
    candidate (``options`` are its keyword options)."""
    return evaluate_set(reference, {"candidate": candidate}, eval_source, task, thresholds, **options)["candidate"]


def evaluate_set(
    reference: Path,
    candidates: dict[str, Path | bytes],
    eval_source: CalibrationSource,
    task: Task,
    thresholds: GateThresholds | None = None,
    *,
    output: str | None = None,
    postprocess: Callable[[dict, dict], np.ndarray] | None = None,
    text_pipeline=None,
    progress: bool = True,
    disabled_optimizers: Sequence[str] = (),
) -> dict[str, GateReport]:
    """Run the reference and several candidates (the artifacts of one version) over the same
    batches of ``eval_source`` and judge each; the reference runs once. Each candidate is a file
    or serialized ONNX bytes; returns a report per key.

    ``postprocess(outputs_by_name, feeds) -> [n, d]`` turns raw graph outputs
    into what clients see (e.g. TextPipeline.pool for token-state models);
    without it ``output`` (default: the first graph output) is compared.
    """
    th = thresholds or GateThresholds()
    ref = _session(reference)
    cands = {k: _session(m, disabled_optimizers) for k, m in candidates.items()}
    names = [i.name for i in ref.get_inputs()]
    out_name = output or ref.get_outputs()[0].name
    batches = load_batches(eval_source, names, text_pipeline)
    ref_vals, labels = [], []
    cand_vals: dict[str, list] = {k: [] for k in cands}

    def value(sess, feeds):
        o = dict(zip([x.name for x in sess.get_outputs()], sess.run(None, feeds)))
        v = postprocess(o, feeds) if postprocess is not None else o[out_name]
        return np.asarray(v, np.float64).reshape(len(v), -1)

    for b in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
        feeds = feeds_of(b, names)
        ref_vals.append(value(ref, feeds))
        for k, sess in cands.items():
            cand_vals[k].append(value(sess, feeds))
        lab = labels_of(b)
        labels.append(lab if lab is not None else None)
    R = np.concatenate(ref_vals)
    out = {}
    for k in cands:
        C = np.concatenate(cand_vals[k])
        if task == "classification":
            have_labels = all(lab is not None for lab in labels)
            truth = np.concatenate(labels) if have_labels else R.argmax(1)
            out[k] = _judge_classification(R, C, truth, have_labels, th)
        elif task == "embedding":
            out[k] = _judge_embedding(R, C, th)
        else:
            raise ValueError(f"unknown task {task!r}")
    return out


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


def record(model_yaml: Path, report: GateReport, precision: str, lineage: dict, disabled_optimizers: Sequence[str] = (),
           artifacts: list[dict] | None = None) -> None:
    """Write the passing figures, precision, lineage and ``artifacts`` (None: none, whatever the
    source declared) into model.yaml.

    The raw YAML mapping is edited (not a re-dump of ModelSpec) so the
    author's keys stay as written; the result is validated before it lands.
    """
    data = yaml.safe_load(model_yaml.read_text()) or {}
    data["precision"] = precision
    data["accuracy"] = report.to_dict()
    data["lineage"] = lineage
    data.pop("artifacts", None)
    if artifacts is not None:
        data["artifacts"] = artifacts
    if disabled_optimizers:
        data.setdefault("session", {})["disabled_optimizers"] = list(disabled_optimizers)
    ModelSpec.model_validate(data)
    atomic_write(model_yaml, yaml.safe_dump(data, sort_keys=False))
