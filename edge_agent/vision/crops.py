"""From detected text boxes to the crops the recogniser reads, in reading order: the rules
of RapidOCR 1.4.4 (``filter_tag_det_res``, ``sorted_boxes``, ``get_rotate_crop_image``),
so a pipeline step between det and cls/rec gives the reference pipeline's crops.

All boxes here are in the pixels of the image the crops are cut from: (n, 4, 2) float32,
top-left, top-right, bottom-right, bottom-left.
"""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np


def filter_boxes(boxes: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
    """Boxes mapped onto an (h, w) image -> the boxes worth cropping, (n', 4, 2) float32.

    Each corner is rounded to a whole pixel and clipped to the image ([0, w] first, as the
    DB step does when it scales; then [0, w - 1] after re-ordering), its corners re-ordered
    clockwise from top-left, and boxes whose top or left edge is 3 px or shorter dropped:
    they cannot hold a readable character and would make degenerate warps."""
    h, w = int(image_hw[0]), int(image_hw[1])
    out = []
    for box in np.asarray(boxes, np.float32):
        box = np.round(box)
        box[:, 0] = np.clip(box[:, 0], 0, w)
        box[:, 1] = np.clip(box[:, 1], 0, h)
        box = _clockwise(box.astype(np.int32))
        box[:, 0] = np.clip(box[:, 0], 0, w - 1)
        box[:, 1] = np.clip(box[:, 1], 0, h - 1)
        if int(np.linalg.norm(box[0] - box[1])) <= 3 or int(np.linalg.norm(box[0] - box[3])) <= 3:
            continue
        out.append(box)
    return np.asarray(out, np.float32).reshape(-1, 4, 2)


def _clockwise(pts: np.ndarray) -> np.ndarray:
    """The two left-most points (by x) become top-left/bottom-left by y, the two right-most
    top-right/bottom-right (imutils' order_points)."""
    by_x = pts[np.argsort(pts[:, 0]), :]
    left, right = by_x[:2], by_x[2:]
    tl, bl = left[np.argsort(left[:, 1]), :]
    tr, br = right[np.argsort(right[:, 1]), :]
    return np.array([tl, tr, br, bl], np.float32)


def reading_order(boxes: np.ndarray, line_tol: float = 10.0) -> np.ndarray:
    """Indices that put boxes in reading order: by top-left corner (y, then x), then one
    bubble pass that swaps neighbours whose top-left y differ by less than ``line_tol`` px
    (the same text line) when the later one is further left."""
    boxes = np.asarray(boxes)
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0][1], boxes[i][0][0]))
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[order[j]][0], boxes[order[j + 1]][0]
            if abs(b[1] - a[1]) < line_tol and b[0] < a[0]:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return np.asarray(order, np.int64)


def rotate_crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The quadrilateral ``box`` of ``img`` warped upright to a rectangle as wide as its longer
    horizontal edge and as high as its longer vertical edge (bicubic, replicated border).
    A crop at least 1.5x taller than wide is vertical text: turned 90° counter-clockwise so
    the recogniser reads it as a line."""
    pts = np.asarray(box, np.float32)
    width = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    height = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    matrix = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(img, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if crop.shape[0] >= 1.5 * crop.shape[1]:
        crop = np.rot90(crop)
    return crop
