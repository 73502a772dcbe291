"""RapidOCR 1.4.4 run in-process: the reference the OCR pipeline's answers are compared with
(tests here and the pipeline's end-to-end tests), and the sample images rendered by
scripts/render_ocr_samples.py. RapidOCR is a dev/build dependency: a test that needs it
calls ``require_rapidocr()`` (skips when missing)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import List, NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "models" / "ocr-samples"
_engine = None


class OcrResult(NamedTuple):
    texts: List[str]
    boxes: np.ndarray    # (n, 4, 2) float32, original-image pixels, reading order
    scores: np.ndarray   # (n,) rec scores


def require_rapidocr():
    return pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime==1.4.4 (extras dev) not installed")


def engine():
    """One RapidOCR with its default config (the wheel's config.yaml), single-threaded ORT
    sessions are not forced: it runs as a user would run it."""
    global _engine
    if _engine is None:
        _engine = require_rapidocr().RapidOCR()
    return _engine


def run(image) -> OcrResult:
    """RapidOCR on a file path, encoded bytes or a BGR array."""
    res, _ = engine()(str(image) if isinstance(image, Path) else image)
    if not res:
        return OcrResult([], np.zeros((0, 4, 2), np.float32), np.zeros((0,), np.float32))
    return OcrResult([r[1] for r in res], np.asarray([r[0] for r in res], np.float32),
                     np.asarray([r[2] for r in res], np.float32))


def renderer():
    """scripts/render_ocr_samples.py's functions (render, render_set), loaded from its file."""
    return runpy.run_path(str(REPO / "scripts" / "render_ocr_samples.py"))


def rendered(count: int, seed: int):
    """``count`` rendered (BGR image, lines) pairs, deterministic for a seed."""
    return renderer()["render_set"](count, seed)


# --- RapidOCR's own stages, to get real model outputs for the ops' tests -----------------


def det_prob(img: np.ndarray) -> np.ndarray:
    """The det model's (H', W') probability map for a BGR image, pre-processed by RapidOCR's
    own DetPreProcess (the image as its TextDetector would get it)."""
    det = engine().text_det
    pre = det.get_preprocess(max(img.shape[:2]))(img)
    return det.infer(pre)[0][0, 0]


def cls_probs(crops) -> np.ndarray:
    """The cls model's (N, 2) probabilities for crops, resized/normalised by RapidOCR."""
    cls = engine().text_cls
    batch = np.stack([cls.resize_norm_img(c) for c in crops]).astype(np.float32)
    return cls.infer(batch)[0]


def rec_probs(crops) -> np.ndarray:
    """The rec model's (N, T, C) probabilities for crops in one batch, padded to the widest
    aspect ratio as RapidOCR's TextRecognizer does."""
    rec = engine().text_rec
    _, h, w = rec.rec_image_shape
    ratio = max([w / h] + [c.shape[1] / c.shape[0] for c in crops])
    batch = np.stack([rec.resize_norm_img(c, ratio) for c in crops]).astype(np.float32)
    return rec.session(batch)[0]


def rec_metadata() -> dict:
    """The rec model's custom metadata map (its character list is there)."""
    return dict(engine().text_rec.session.session.get_modelmeta().custom_metadata_map)


def det_crops(img: np.ndarray):
    """RapidOCR's det boxes (reading order) and crops for an image."""
    boxes, _ = engine().auto_text_det(img)
    return boxes, engine().get_crop_img_list(img, boxes)
