"""nms against OpenCV's cv2.dnn.NMSBoxes on random boxes; YOLO-style output decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.vision.detect import batched_nms, decode_yolo, nms


def random_boxes(rng, n):
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32), (rng.permutation(n).astype(np.float32) + 1) / n


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_matches_opencv(iou):
    rng = np.random.default_rng(int(iou * 10))
    for _ in range(30):
        boxes, scores = random_boxes(rng, int(rng.integers(1, 60)))
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        want = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, iou)).reshape(-1)
        assert nms(boxes, scores, iou).tolist() == want.tolist()


def test_nms_suppresses_only_above_the_threshold():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)  # IoU(0, 1) = 0.5
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.49).tolist() == [0, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_batched_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert sorted(batched_nms(boxes, scores, np.array([0, 0, 1]), 0.5).tolist()) == [0, 2]


def test_decode_v8_and_v5():
    # two boxes, three classes; v8 rows: cx cy w h c0 c1 c2, exported transposed (7, N)
    v8 = np.array([[50, 40, 20, 10, 0.1, 0.8, 0.05], [10, 10, 4, 4, 0.2, 0.1, 0.15]], np.float32)
    boxes, scores, ids = decode_yolo(v8.T, "v8", 3, 0.25)
    np.testing.assert_allclose(boxes, [[40, 35, 60, 45]])
    assert scores.tolist() == pytest.approx([0.8]) and ids.tolist() == [1]
    v5 = np.array([[50, 40, 20, 10, 0.5, 0.1, 0.8, 0.05], [10, 10, 4, 4, 0.9, 0.9, 0.1, 0.0]], np.float32)
    boxes, scores, ids = decode_yolo(v5, "v5", 3, 0.5)
    assert ids.tolist() == [0] and scores.tolist() == pytest.approx([0.81])   # 0.4 (= 0.5 * 0.8) is below
    np.testing.assert_allclose(boxes, [[8, 8, 12, 12]])
    with pytest.raises(ValueError):
        decode_yolo(v5, "v8", 3, 0.5)


def test_nms_max_keep_stops_after_the_same_first_boxes():
    rng = np.random.default_rng(7)
    for _ in range(20):
        boxes, scores = random_boxes(rng, int(rng.integers(1, 60)))
        classes = rng.integers(0, 3, len(boxes))
        for k in (1, 3, 10):
            assert nms(boxes, scores, 0.5, k).tolist() == nms(boxes, scores, 0.5)[:k].tolist()
            assert batched_nms(boxes, scores, classes, 0.5, k).tolist() == batched_nms(boxes, scores, classes, 0.5)[:k].tolist()
