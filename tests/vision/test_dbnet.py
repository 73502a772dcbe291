"""db_boxes / filter_boxes against RapidOCR 1.4.4's DBPostProcess and filter_tag_det_res on
the real PP-OCRv4 det model's probability maps of rendered text images."""

from __future__ import annotations

import numpy as np
import pytest

import ocr_reference as ref
from edge_agent.vision.dbnet import DBSpec, db_boxes, filter_boxes

ref.require_rapidocr()
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess  # noqa: E402

IMAGES = ref.rendered(6, seed=1801)


@pytest.fixture(scope="module")
def maps():
    return [(img, ref.det_prob(img)) for img, _ in IMAGES]


def reference(prob, spec, shape):
    post = DBPostProcess(thresh=spec.thresh, box_thresh=spec.box_thresh, max_candidates=spec.max_candidates,
                         unclip_ratio=spec.unclip_ratio, score_mode=spec.score_mode, use_dilation=spec.use_dilation)
    return post(prob[None, None], shape)


SPECS = [DBSpec(), DBSpec(score_mode="slow", use_dilation=False), DBSpec(unclip_ratio=2.2, box_thresh=0.6, thresh=0.4)]


@pytest.mark.parametrize("spec", SPECS, ids=["default", "slow-nodilate", "wider"])
def test_boxes_in_prob_map_pixels_match_rapidocr(maps, spec):
    total = 0
    for _, prob in maps:
        want, want_scores = reference(prob, spec, prob.shape)
        got, scores = db_boxes(prob, spec)
        assert got.dtype == np.float32 and got.shape[1:] == (4, 2)
        # RapidOCR rounds and clips when it scales; with dest == map size that is all it adds.
        h, w = prob.shape
        rounded = np.stack([np.clip(np.round(got[..., 0]), 0, w), np.clip(np.round(got[..., 1]), 0, h)], -1)
        np.testing.assert_array_equal(rounded.astype(np.int32), np.asarray(want).reshape(-1, 4, 2))
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
        total += len(got)
    assert total >= 6  # every rendered image has text


def test_filter_boxes_on_the_original_image_matches_rapidocr(maps):
    det = ref.engine().text_det
    for img, prob in maps:
        want = det.filter_tag_det_res(reference(prob, DBSpec(), img.shape[:2])[0], img.shape[:2])
        got, _ = db_boxes(prob, DBSpec())
        scale = np.array([img.shape[1] / prob.shape[1], img.shape[0] / prob.shape[0]], np.float32)
        np.testing.assert_array_equal(filter_boxes(got * scale, img.shape[:2]), np.asarray(want, np.float32).reshape(-1, 4, 2))


def test_filter_drops_thin_boxes_clips_and_orders():
    boxes = np.array([
        [[50, 10], [10, 10], [10, 30], [50, 30]],       # corners out of order
        [[5, 5], [8, 5], [8, 40], [5, 40]],             # 3 px wide: dropped
        [[-4, -2], [130, -2], [130, 20], [-4, 20]],     # outside the 120x100 image: clipped
    ], np.float32)
    got = filter_boxes(boxes, (100, 120))
    np.testing.assert_array_equal(got[0], [[10, 10], [50, 10], [50, 30], [10, 30]])
    np.testing.assert_array_equal(got[1], [[0, 0], [119, 0], [119, 20], [0, 20]])
    assert len(got) == 2
    assert filter_boxes(np.zeros((0, 4, 2), np.float32), (10, 10)).shape == (0, 4, 2)


def test_empty_map_and_bad_shape():
    boxes, scores = db_boxes(np.zeros((64, 64), np.float32), DBSpec())
    assert boxes.shape == (0, 4, 2) and scores.shape == (0,)
    with pytest.raises(ValueError):
        db_boxes(np.zeros((1, 64, 64), np.float32), DBSpec())


def synthetic_map(rng):
    """Blobs near every threshold: probabilities around box_thresh, sides around min_size."""
    prob = rng.uniform(0, 0.25, (96, 160)).astype(np.float32)
    for _ in range(14):
        h, w = int(rng.integers(1, 9)), int(rng.integers(1, 30))
        y, x = int(rng.integers(0, 96 - h)), int(rng.integers(0, 160 - w))
        prob[y:y + h, x:x + w] = rng.uniform(0.31, 0.75)
    return prob


@pytest.mark.parametrize("spec", SPECS + [DBSpec(min_size=5), DBSpec(unclip_ratio=0.3)], ids=["default", "slow-nodilate", "wider", "min5", "tight"])
def test_synthetic_maps_at_the_thresholds_match_rapidocr(spec):
    rng = np.random.default_rng(18)
    for _ in range(40):
        prob = synthetic_map(rng)
        post = DBPostProcess(thresh=spec.thresh, box_thresh=spec.box_thresh, max_candidates=spec.max_candidates,
                             unclip_ratio=spec.unclip_ratio, score_mode=spec.score_mode, use_dilation=spec.use_dilation)
        post.min_size = spec.min_size
        want, _ = post(prob[None, None], prob.shape)
        got, _ = db_boxes(prob, spec)
        rounded = np.clip(np.round(got), 0, [160, 96]).astype(np.int32)
        np.testing.assert_array_equal(rounded, np.asarray(want).reshape(-1, 4, 2))
