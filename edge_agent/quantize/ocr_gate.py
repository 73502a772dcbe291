"""The OCR pipeline in-process, and the gate an INT8 text detector must pass (issue 18 item 6).

A quantized det graph is judged by what it changes downstream, not by its raw probability
map: the boxes it finds (F1 at IoU 0.5 against the FP32 graph's boxes on the same images)
and the text the whole pipeline reads through them (character error rate against the FP32
pipeline's text). Both pipelines here are composed from the daemon's own ops
(edge_agent/vision/) with RapidOCR 1.4.4's pre-processing, so the gate measures the graph
swap and nothing else. Images are expected in RapidOCR's untouched range (height > 30,
width/height <= 8, sides <= 2000: no padding or pre-scaling), as the rendered gate sets are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime as ort

from ..vision.angle import flips, rotate180
from ..vision.crops import filter_boxes, reading_order, rotate_crop
from ..vision.ctc import charset_from_metadata, ctc_greedy
from ..vision.dbnet import DBSpec, db_boxes
from .gate import GateReport

DET_LIMIT_SIDE, CLS_SHAPE, REC_HEIGHT, REC_MIN_WIDTH = 736, (48, 192), 48, 320
REC_BATCH, CLS_THRESHOLD, TEXT_SCORE = 6, 0.9, 0.5


@dataclass(frozen=True)
class OcrGateThresholds:
    min_box_f1: float = 0.98
    max_cer: float = 0.01


def _round32(v: float) -> int:
    return int(round(v / 32) * 32)


def det_input(img: np.ndarray) -> np.ndarray:
    """RapidOCR's det pre-processing (limit_type min, 736): (1, 3, H', W') float32."""
    h, w = img.shape[:2]
    ratio = DET_LIMIT_SIDE / min(h, w) if min(h, w) < DET_LIMIT_SIDE else 1.0
    resized = cv2.resize(img, (_round32(int(w * ratio)), _round32(int(h * ratio))))
    x = (resized.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _strip(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """A crop resized to ``height`` keeping its ratio (at most ``width``), normalised, left-aligned
    in a zero (3, height, width) tensor: cls and rec as RapidOCR."""
    h, w = crop.shape[:2]
    new_w = min(width, int(math.ceil(height * w / float(h))))
    x = (cv2.resize(crop, (new_w, height)).astype(np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :new_w] = x
    return out


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class InProcessOcr:
    """det -> filter/order -> crop -> cls -> rec over three graphs, one image at a time."""

    def __init__(self, det: Path, cls: Path, rec: Path, db: DBSpec = DBSpec()):
        self.det, self.cls, self.rec = _session(det), _session(cls), _session(rec)
        self.charset = charset_from_metadata(self.rec.get_modelmeta().custom_metadata_map)
        self.db = db

    def boxes(self, img: np.ndarray) -> np.ndarray:
        """Text boxes in the image's pixels, reading order."""
        x = det_input(img)
        prob = self.det.run(None, {self.det.get_inputs()[0].name: x})[0][0, 0]
        found, _ = db_boxes(prob, self.db)
        scale = np.array([img.shape[1] / prob.shape[1], img.shape[0] / prob.shape[0]], np.float32)
        kept = filter_boxes(found * scale, img.shape[:2])
        return kept[reading_order(kept)]

    def read(self, img: np.ndarray, boxes=None) -> Tuple[np.ndarray, List[str], np.ndarray]:
        """(boxes, texts, scores) as RapidOCR answers: results scoring below 0.5 dropped.
        ``boxes``: this image's det boxes when already found."""
        boxes = self.boxes(img) if boxes is None else boxes
        if not len(boxes):
            return boxes, [], np.zeros((0,), np.float32)
        crops = [rotate_crop(img, b) for b in boxes]
        probs = self.cls.run(None, {self.cls.get_inputs()[0].name: np.stack([_strip(c, *CLS_SHAPE) for c in crops])})[0]
        crops = [rotate180(c) if f else c for c, f in zip(crops, flips(probs, CLS_THRESHOLD))]
        texts, scores = [""] * len(crops), np.zeros(len(crops), np.float64)
        order = np.argsort([c.shape[1] / float(c.shape[0]) for c in crops])
        for start in range(0, len(order), REC_BATCH):
            idx = order[start:start + REC_BATCH]
            ratio = max([REC_MIN_WIDTH / REC_HEIGHT] + [crops[i].shape[1] / float(crops[i].shape[0]) for i in idx])
            batch = np.stack([_strip(crops[i], REC_HEIGHT, int(REC_HEIGHT * ratio)) for i in idx])
            out = self.rec.run(None, {self.rec.get_inputs()[0].name: batch})[0]
            got, sc = ctc_greedy(out, self.charset)
            for j, i in enumerate(idx):
                texts[i], scores[i] = got[j], sc[j]
        keep = scores >= TEXT_SCORE
        return boxes[keep], [t for t, k in zip(texts, keep) if k], scores[keep].astype(np.float32)


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two convex quadrilaterals (OpenCV's convex polygon intersection)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter, _ = cv2.intersectConvexConvex(a, b)
    union = abs(cv2.contourArea(a)) + abs(cv2.contourArea(b)) - inter
    return float(inter / union) if union > 0 else 0.0


def matched_boxes(reference: np.ndarray, candidate: np.ndarray, iou: float = 0.5) -> int:
    """One-to-one matches at IoU >= ``iou``, best pairs first."""
    pairs = sorted(((quad_iou(r, c), i, j) for i, r in enumerate(reference) for j, c in enumerate(candidate)), reverse=True)
    used_r, used_c, n = set(), set(), 0
    for v, i, j in pairs:
        if v < iou:
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            n += 1
    return n


def f1(matched: int, n_reference: int, n_candidate: int) -> float:
    if n_reference == n_candidate == 0:
        return 1.0
    return 2.0 * matched / (n_reference + n_candidate)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), two-row DP."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@dataclass
class _Tally:
    matched: int = 0
    n_ref: int = 0
    n_cand: int = 0
    edits: int = 0
    chars: int = 0
    worst: List[str] = field(default_factory=list)


def evaluate_det(reference: InProcessOcr, candidate: InProcessOcr, images: Sequence[np.ndarray],
                 thresholds: OcrGateThresholds = OcrGateThresholds(), progress: bool = True) -> GateReport:
    """Box F1 at IoU 0.5 and the pipeline's CER of ``candidate`` (the INT8 det) vs ``reference``."""
    from tqdm import tqdm

    t = _Tally()
    for k, img in enumerate(tqdm(images, desc="gate (ocr det)", unit="image", disable=not progress, leave=False)):
        ref_boxes, cand_boxes = reference.boxes(img), candidate.boxes(img)
        rt = reference.read(img, ref_boxes)[1]
        ct = candidate.read(img, cand_boxes)[1]
        t.matched += matched_boxes(ref_boxes, cand_boxes)
        t.n_ref += len(ref_boxes)
        t.n_cand += len(cand_boxes)
        ref_text, cand_text = "\n".join(rt), "\n".join(ct)
        d = edit_distance(ref_text, cand_text)
        t.edits += d
        t.chars += len(ref_text)
        if d:
            t.worst.append(f"image {k}: {ref_text!r} -> {cand_text!r}")
    box_f1 = f1(t.matched, t.n_ref, t.n_cand)
    cer = t.edits / max(t.chars, 1)
    failures = []
    if box_f1 < thresholds.min_box_f1:
        failures.append(f"box F1 {box_f1:.4f} < {thresholds.min_box_f1}")
    if cer > thresholds.max_cer:
        failures.append(f"CER {cer:.4f} > {thresholds.max_cer}")
    figures = {"box_f1_iou50": round(box_f1, 4), "boxes_fp32": t.n_ref, "boxes_int8": t.n_cand, "boxes_matched": t.matched,
               "cer": round(cer, 4), "char_edits": t.edits, "chars_fp32": t.chars, "differing_images": t.worst[:5]}
    return GateReport("ocr-det", not failures, len(images), figures,
                      {"min_box_f1": thresholds.min_box_f1, "max_cer": thresholds.max_cer}, failures)
