"""vision/preprocess.py: the declared pre-processing, by hand and against RapidOCR 1.4.4's own code."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.errors import InvalidImage
from edge_agent.vision.preprocess import PreprocessSpec, Transform, preprocess


def _img(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def spec(**kw) -> PreprocessSpec:
    return PreprocessSpec.model_validate(kw)


# --- by hand ------------------------------------------------------------------------------


def test_no_resize_normalises_and_lays_out_channels_first():
    img = _img(2, 3)
    x, t = preprocess(img, spec(color="rgb", normalize={"scale": 0.5, "mean": [1, 2, 3], "std": [2, 4, 8]}))
    assert x.shape == (3, 2, 3) and x.dtype == np.float32
    want = (img[..., ::-1].astype(np.float32) * 0.5 - [1, 2, 3]) / [2, 4, 8]
    np.testing.assert_allclose(x, want.transpose(2, 0, 1), rtol=1e-6)
    assert t.ratio == (1.0, 1.0) and t.offset == (0.0, 0.0)


def test_gray_stretch_nhwc_uint8():
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[:2, :2] = 255  # one white quarter
    x, t = preprocess(img, spec(color="gray", resize={"mode": "stretch", "height": 2, "width": 2, "interpolation": "area"},
                                layout="NHWC", dtype="UINT8"))
    assert x.shape == (2, 2, 1) and x.dtype == np.uint8
    assert x[..., 0].tolist() == [[255, 0], [0, 0]]
    np.testing.assert_allclose(t.to_original(np.array([[1.0, 1.0]])), [[2.0, 2.0]])


def test_letterbox_centres_pads_and_maps_back():
    img = _img(50, 100)
    x, t = preprocess(img, spec(resize={"mode": "letterbox", "height": 64, "width": 64, "pad_value": -1.0}))
    assert x.shape == (3, 64, 64)
    assert t.resized_hw == (32, 64) and t.offset == (0.0, 16.0)
    assert (x[:, :16] == -1.0).all() and (x[:, 48:] == -1.0).all() and (x[:, 16:48] >= 0).all()
    corners = np.array([[0.0, 16.0], [64.0, 48.0]])
    np.testing.assert_allclose(t.to_original(corners), [[0, 0], [100, 50]])
    np.testing.assert_allclose(t.to_tensor(t.to_original(corners)), corners)


def test_keep_ratio_sides_rounds_to_multiples():
    _, t = preprocess(_img(100, 300), spec(resize={"mode": "keep_ratio", "min_side": 736, "multiple_of": 32}))
    # ratio 7.36: 736 x 2208 -> multiples of 32: 736 x 2208
    assert t.resized_hw == (736, 2208)
    _, t = preprocess(_img(1000, 700), spec(resize={"mode": "keep_ratio", "max_side": 960, "multiple_of": 32}))
    # ratio 0.96: 960 x 672 -> 960 x 672
    assert t.resized_hw == (960, 672)
    np.testing.assert_allclose(t.to_original(np.array([672.0, 960.0], dtype=np.float32)), [700, 1000], rtol=1e-6)


def test_an_image_that_resizes_to_nothing_is_invalid_image():
    with pytest.raises(InvalidImage, match="resizes to"):
        preprocess(_img(1, 900), spec(resize={"mode": "keep_ratio", "max_side": 100, "multiple_of": 32}))


@pytest.mark.parametrize("bad", [
    {"resize": {"mode": "stretch", "height": 8}},
    {"resize": {"mode": "keep_ratio"}},
    {"resize": {"mode": "keep_ratio", "height": 48, "max_side": 960}},
    {"resize": {"mode": "letterbox", "height": 8, "width": 8, "min_side": 4}},
    {"color": "gray", "normalize": {"mean": [0.1, 0.2, 0.3]}},
    {"dtype": "UINT8", "normalize": {"scale": 0.5}},
    {"normalize": {"std": [0.0]}},
    {"resize": {"mode": "none", "unknown": 1}},
])
def test_incoherent_specs_are_refused(bad):
    with pytest.raises(ValidationError):
        spec(**bad)


def test_transform_is_immutable_and_maps_any_leading_shape():
    t = Transform((10, 20), (5, 10), (2.0, 2.0), (1.0, 0.0))
    boxes = np.ones((3, 4, 2), dtype=np.float32)
    out = t.to_original(boxes)
    assert out.shape == (3, 4, 2) and out.dtype == np.float32 and (out[..., 0] == 0).all() and (out[..., 1] == 2).all()
    with pytest.raises(Exception):
        t.ratio = (1.0, 1.0)


# --- against RapidOCR 1.4.4 ---------------------------------------------------------------

DET = {"scale": 1 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
SIZES = [(37, 211), (480, 640), (736, 736), (101, 1500), (2001, 333), (45, 46)]


@pytest.mark.parametrize("limit_type,limit", [("min", 736), ("max", 960)])
@pytest.mark.parametrize("hw", SIZES)
def test_det_matches_rapidocr_detpreprocess(limit_type, limit, hw):
    utils = pytest.importorskip("rapidocr_onnxruntime.ch_ppocr_det.utils")
    img = _img(*hw, seed=hw[0])
    ref = utils.DetPreProcess(limit, limit_type)(img)
    side = {"min_side": limit} if limit_type == "min" else {"max_side": limit}
    x, t = preprocess(img, spec(resize={"mode": "keep_ratio", "multiple_of": 32, **side}, normalize=DET))
    assert ref is not None
    assert x.shape == ref.shape[1:]
    np.testing.assert_allclose(x, ref[0], atol=1e-6, rtol=0)
    # RapidOCR's DBPostProcess maps prob-map px back by src / resized: the same ratios.
    assert t.ratio == (hw[1] / float(ref.shape[3]), hw[0] / float(ref.shape[2]))


@pytest.mark.parametrize("hw", [(48, 30), (32, 100), (20, 400), (60, 192), (48, 2000)])
def test_cls_matches_rapidocr_resize_norm_img(hw):
    text_cls = pytest.importorskip("rapidocr_onnxruntime.ch_ppocr_cls.text_cls")
    img = _img(*hw, seed=hw[1])
    ref = text_cls.TextClassifier.resize_norm_img(SimpleNamespace(cls_image_shape=[3, 48, 192]), img)
    x, _ = preprocess(img, spec(resize={"mode": "keep_ratio", "height": 48, "width": 192},
                                normalize={"scale": 1 / 255.0, "mean": [0.5], "std": [0.5]}))
    assert x.shape == ref.shape == (3, 48, 192)
    np.testing.assert_allclose(x, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw,max_wh_ratio", [((48, 30), 320 / 48), ((32, 500), 500 / 32), ((40, 100), 7.3)])
def test_rec_matches_rapidocr_resize_norm_img(hw, max_wh_ratio):
    text_rec = pytest.importorskip("rapidocr_onnxruntime.ch_ppocr_rec.text_recognize")
    img = _img(*hw, seed=7)
    ref = text_rec.TextRecognizer.resize_norm_img(SimpleNamespace(rec_image_shape=[3, 48, 320]), img, max_wh_ratio)
    # The batch's widest crop sets the width: int(48 * max_wh_ratio), as RapidOCR does.
    x, _ = preprocess(img, spec(resize={"mode": "keep_ratio", "height": 48, "width": int(48 * max_wh_ratio)},
                                normalize={"scale": 1 / 255.0, "mean": [0.5], "std": [0.5]}))
    assert x.shape == ref.shape
    np.testing.assert_allclose(x, ref, atol=1e-6, rtol=0)
