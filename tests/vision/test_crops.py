"""rotate_crop / reading_order against RapidOCR 1.4.4's get_rotate_crop_image and
sorted_boxes, on the boxes its own detector finds in rendered images."""

from __future__ import annotations

import numpy as np
import pytest

import ocr_reference as ref
from edge_agent.vision.crops import reading_order, rotate_crop

ref.require_rapidocr()
IMAGES = ref.rendered(4, seed=1802)


def test_crops_equal_rapidocr_pixel_for_pixel():
    n = 0
    for img, _ in IMAGES:
        boxes, crops = ref.det_crops(img)
        for box, want in zip(boxes, crops):
            np.testing.assert_array_equal(rotate_crop(img, box), want)
            n += 1
    assert n >= 4


@pytest.mark.parametrize("height, turned", [(75, True), (30, True), (29, False)])
def test_tall_crop_is_turned_like_rapidocr(height, turned):
    img = ref.rendered(1, seed=3)[0][0]
    box = np.array([[20, 5], [40, 5], [40, 5 + height], [20, 5 + height]], np.float32)  # 20 wide
    want = ref.engine().get_crop_img_list(img, [box])[0]
    got = rotate_crop(img, box)
    assert got.shape[:2] == ((20, height) if turned else (height, 20))
    np.testing.assert_array_equal(got, want)


def test_reading_order_matches_sorted_boxes():
    rng = np.random.default_rng(5)
    sorted_boxes = ref.engine().sorted_boxes
    for _ in range(50):
        n = int(rng.integers(1, 12))
        # a few text lines with jitter below and above the 10 px tolerance, random x
        tl = np.stack([rng.integers(0, 400, n), rng.choice([20, 25, 31, 60, 66, 120], n) + rng.integers(-6, 7, n)], 1)
        boxes = np.stack([tl, tl + [80, 0], tl + [80, 20], tl + [0, 20]], 1).astype(np.float32)
        want = np.asarray(sorted_boxes(boxes))
        np.testing.assert_array_equal(boxes[reading_order(boxes)], want.reshape(-1, 4, 2))


def test_reading_order_same_line_left_to_right():
    boxes = np.array([[[300, 14]] * 4, [[10, 20]] * 4, [[150, 60]] * 4, [[5, 64]] * 4], np.float32)
    assert reading_order(boxes).tolist() == [1, 0, 3, 2]
    assert reading_order(boxes, line_tol=3).tolist() == [0, 1, 2, 3]
    assert reading_order(np.zeros((0, 4, 2), np.float32)).tolist() == []
