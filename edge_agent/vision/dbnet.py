"""DB (Differentiable Binarization) post-processing: a text detector's probability map to
text boxes, the rule of RapidOCR 1.4.4's ``DBPostProcess`` (PaddleOCR's), so the daemon's
boxes match the reference pipeline's.

The boxes stay in probability-map pixels: mapping them to the original image is the
pre-processing ``Transform``'s job (it knows the resize), not this module's. RapidOCR rounds
each corner after scaling to the image it detected on; ``filter_boxes`` does that rounding,
so ``filter_boxes(transform.to_original(boxes), hw)`` is RapidOCR's result.

Why each step (the DB paper, and what PaddleOCR settled on):
- threshold the map (``thresh``), optionally dilate by 2x2 so thin strokes join;
- each contour's minimum-area rectangle; too thin ones (``min_size``) are noise;
- the box score is the mean probability inside the rectangle ("fast") or the contour
  ("slow"); below ``box_thresh`` it is dropped;
- the shrunk text kernel the net predicts is grown back by the Vatti offset
  ``area * unclip_ratio / perimeter`` (pyclipper, as RapidOCR), then re-rectangled.
"""

from __future__ import annotations

from typing import Literal, Tuple

import cv2
import numpy as np
import pyclipper
from pydantic import Field

from ..config.base import Section


class DBSpec(Section):
    """The DB post-processing knobs (model.yaml ``postprocess: {op: db, ...}``); defaults are
    RapidOCR 1.4.4's config.yaml for PP-OCRv4 det."""

    thresh: float = Field(0.3, ge=0.0, le=1.0, description="Probability above which a pixel is text.")
    box_thresh: float = Field(0.5, ge=0.0, le=1.0, description="Minimum mean probability inside a box to keep it.")
    max_candidates: int = Field(1000, ge=1, description="At most this many contours are looked at (the first ones OpenCV finds).")
    unclip_ratio: float = Field(1.6, gt=0.0, description="How far the shrunk text kernel is grown back: offset = area * ratio / perimeter.")
    use_dilation: bool = Field(True, description="Dilate the binary map by a 2x2 kernel before finding contours.")
    score_mode: Literal["fast", "slow"] = Field("fast", description="Box score over the bounding rectangle (fast) or the contour polygon (slow).")
    min_size: int = Field(3, ge=0, description="Shorter side (prob-map pixels) below which a candidate is dropped (min_size + 2 after unclip).")


_KERNEL = np.ones((2, 2), np.uint8)


def db_boxes(prob: np.ndarray, spec: DBSpec) -> Tuple[np.ndarray, np.ndarray]:
    """(H', W') probability map -> boxes (n, 4, 2) float32 in prob-map pixels (clockwise from
    top-left) and their scores (n,) float32."""
    if prob.ndim != 2:
        raise ValueError(f"db_boxes wants a (H, W) map, got shape {prob.shape}")
    bitmap = (prob > spec.thresh).astype(np.uint8)
    if spec.use_dilation:
        bitmap = cv2.dilate(bitmap, _KERNEL)
    contours = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2]
    boxes, scores = [], []
    for contour in contours[: spec.max_candidates]:
        quad, short = _min_quad(contour)
        if short < spec.min_size:
            continue
        score = _mean_inside(prob, quad if spec.score_mode == "fast" else contour.reshape(-1, 2), spec.score_mode)
        if score < spec.box_thresh:
            continue
        grown = _unclip(quad, spec.unclip_ratio)
        if grown is None:
            continue
        quad, short = _min_quad(grown)
        if short < spec.min_size + 2:
            continue
        boxes.append(quad)
        scores.append(score)
    if not boxes:
        return np.zeros((0, 4, 2), np.float32), np.zeros((0,), np.float32)
    return np.asarray(boxes, np.float32), np.asarray(scores, np.float32)


def _min_quad(points: np.ndarray) -> Tuple[np.ndarray, float]:
    """The minimum-area rectangle's corners as top-left, top-right, bottom-right, bottom-left
    (left pair and right pair by x, each split by y), and its shorter side."""
    rect = cv2.minAreaRect(points)
    pts = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = (pts[0], pts[1]) if pts[1][1] > pts[0][1] else (pts[1], pts[0])      # (top, bottom)
    right = (pts[2], pts[3]) if pts[3][1] > pts[2][1] else (pts[3], pts[2])
    return np.array([left[0], right[0], right[1], left[1]], np.float32), min(rect[1])


def _mean_inside(prob: np.ndarray, poly: np.ndarray, mode: str) -> float:
    """Mean probability inside ``poly``, over its clipped bounding window. The "fast" mode
    floors/ceils the float corners; "slow" takes the integer contour as is."""
    h, w = prob.shape
    if mode == "fast":
        lo = np.floor(poly.min(axis=0)).astype(np.int32)
        hi = np.ceil(poly.max(axis=0)).astype(np.int32)
    else:
        lo, hi = poly.min(axis=0), poly.max(axis=0)
    x0, x1 = np.clip([lo[0], hi[0]], 0, w - 1)
    y0, y1 = np.clip([lo[1], hi[1]], 0, h - 1)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    shifted = (poly - np.array([x0, y0], poly.dtype)).astype(np.int32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _unclip(quad: np.ndarray, ratio: float):
    """Grow the quadrilateral by area * ratio / perimeter with round joins (Vatti clipping).
    ``None`` if the offset polygon came out empty."""
    length = cv2.arcLength(quad.reshape(-1, 1, 2), True)
    if length == 0:
        return None
    distance = abs(cv2.contourArea(quad)) * ratio / length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(quad.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    paths = offset.Execute(distance)
    if not paths:
        return None
    return np.array(paths, np.float32).reshape(-1, 1, 2)


from .crops import filter_boxes  # noqa: E402,F401 -- the contract names it here; it lives with the crops
