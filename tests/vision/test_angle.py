"""flips against RapidOCR 1.4.4's TextClassifier on real cls outputs: upright crops and the
same crops turned by 180°."""

from __future__ import annotations

import numpy as np

import ocr_reference as ref
from edge_agent.vision.angle import flips, rotate180

ref.require_rapidocr()


def test_flip_decisions_match_rapidocr():
    crops = []
    for img, _ in ref.rendered(3, seed=1804):
        crops += ref.det_crops(img)[1]
    crops = [np.ascontiguousarray(c) for c in crops]
    crops += [rotate180(c) for c in crops]
    out, _, _ = ref.engine().text_cls(crops)
    rotated_by_rapidocr = np.array([not np.array_equal(a, b) for a, b in zip(out, crops)])
    got = flips(ref.cls_probs(crops), threshold=ref.engine().text_cls.cls_thresh)
    np.testing.assert_array_equal(got, rotated_by_rapidocr)
    assert got.any() and not got.all()
    for c, flipped, o in zip(crops, got, out):
        if flipped:
            np.testing.assert_array_equal(rotate180(c), o)


def test_threshold_is_strict_and_needs_the_180_label():
    probs = np.array([[0.05, 0.95], [0.1, 0.9], [0.6, 0.4], [0.91, 0.09], [0.0, 1.0]], np.float32)
    assert flips(probs).tolist() == [True, False, False, False, True]
    assert flips(probs, threshold=0.5).tolist() == [True, True, False, False, True]
