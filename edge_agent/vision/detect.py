"""Post-processing of generic object detectors (issue 18 item 3): decoding a YOLO-style
output tensor into boxes, and non-maximum suppression.

Two output layouts cover the common exports:
- ``"v8"`` (YOLOv8/v11, anchor-free): (4 + C, N) or (N, 4 + C) rows of cx, cy, w, h and C
  class scores; a box's score is its best class score.
- ``"v5"`` (YOLOv5/v7): (N, 5 + C) rows of cx, cy, w, h, objectness and C class scores;
  a box's score is objectness times its best class score.
Coordinates come out as x1, y1, x2, y2 in the network input's pixels; the pre-processing
``Transform`` maps them to the original image.
"""

from __future__ import annotations

from typing import Literal, Optional, Tuple

import numpy as np


def decode_yolo(out: np.ndarray, layout: Literal["v8", "v5"], num_classes: int,
                score_threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output (batch axis removed) -> boxes (n, 4) xyxy float32, scores (n,),
    class ids (n,) int64 for the rows scoring at least ``score_threshold``."""
    width = 4 + num_classes + (1 if layout == "v5" else 0)
    rows = np.asarray(out, np.float32)
    if rows.ndim != 2 or width not in rows.shape:
        raise ValueError(f"a {layout} output for {num_classes} classes has rows of {width}, got shape {rows.shape}")
    if rows.shape[1] != width:
        rows = rows.T
    cls = rows[:, width - num_classes:]
    ids = cls.argmax(axis=1)
    scores = cls[np.arange(len(rows)), ids]
    if layout == "v5":
        scores = scores * rows[:, 4]
    keep = scores >= score_threshold
    cx, cy, w, h = rows[keep, 0], rows[keep, 1], rows[keep, 2], rows[keep, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, scores[keep].astype(np.float32), ids[keep].astype(np.int64)


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one xyxy box with each of ``boxes`` (zero-area safe)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou: float, max_keep: Optional[int] = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first. A box is
    suppressed when its IoU with a kept, better-scoring box is above ``iou``. With ``max_keep``
    it stops after that many (the same first ones: boxes are kept in score order), so many
    candidates cost at most ``max_keep`` rounds."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[iou_one_to_many(boxes[best], boxes[rest]) <= iou]
    return np.asarray(keep, np.int64)


def batched_nms(boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float,
                max_keep: Optional[int] = None) -> np.ndarray:
    """NMS within each class (boxes of different classes never suppress each other): the
    boxes are shifted apart by class so one ``nms`` call does all classes."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros((0,), np.int64)
    shift = (boxes.max() - boxes.min() + 1.0) * np.asarray(class_ids, np.float64)
    return nms(boxes + shift[:, None], scores, iou, max_keep)
