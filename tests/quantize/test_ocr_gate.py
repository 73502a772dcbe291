"""The OCR det gate's pieces: the in-process pipeline composed from the vision ops reads as
RapidOCR 1.4.4 reads (so the gate measures the graph and nothing else), the box F1 and CER
figures, and the gate refusing a detector that finds fewer boxes."""

from __future__ import annotations

import numpy as np
import pytest

import ocr_reference as ref
from edge_agent.quantize import cli
from edge_agent.quantize.ocr_gate import (InProcessOcr, OcrGateThresholds, edit_distance, evaluate_det, f1, matched_boxes,
                                          quad_iou)
from edge_agent.vision.dbnet import DBSpec

rapidocr = ref.require_rapidocr()
from pathlib import Path  # noqa: E402

MODELS = Path(rapidocr.__file__).parent / "models"
GRAPHS = [MODELS / "ch_PP-OCRv4_det_infer.onnx", MODELS / "ch_ppocr_mobile_v2.0_cls_infer.onnx", MODELS / "ch_PP-OCRv4_rec_infer.onnx"]


@pytest.fixture(scope="module")
def ocr():
    return InProcessOcr(*GRAPHS)


def test_in_process_pipeline_reads_as_rapidocr(ocr):
    for img, _ in ref.rendered(4, seed=1806):
        want = ref.run(img)
        boxes, texts, scores = ocr.read(img)
        assert texts == want.texts
        np.testing.assert_allclose(boxes, want.boxes, atol=1.0)
        np.testing.assert_allclose(scores, want.scores, rtol=1e-4)


def test_box_matching_and_f1():
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float32)
    assert quad_iou(sq, sq) == pytest.approx(1.0)
    assert quad_iou(sq, sq + [5, 0]) == pytest.approx(50 / 150)
    assert quad_iou(sq, sq + [20, 0]) == 0.0
    half = np.array([[0, 0], [10, 0], [10, 5], [0, 5]], np.float32)       # IoU 0.5 exactly: a match
    assert matched_boxes(np.stack([sq]), np.stack([half])) == 1
    assert matched_boxes(np.stack([sq]), np.stack([sq + [4, 4]])) == 0   # IoU 36/164
    assert matched_boxes(np.stack([sq, sq + [30, 0]]), np.stack([sq + [1, 0], sq, sq + [30, 1]])) == 2  # one-to-one
    assert f1(2, 2, 3) == pytest.approx(0.8) and f1(0, 0, 0) == 1.0 and f1(0, 3, 0) == 0.0


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("abc", "abc", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                     ("flaw", "lawn", 2), ("ab\ncd", "abcd", 1)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_gate_passes_the_fp32_graph_and_refuses_a_detector_missing_boxes(ocr):
    images = [img for img, _ in ref.rendered(4, seed=1807)]
    same = evaluate_det(ocr, ocr, images, progress=False)
    assert same.passed and same.figures["box_f1_iou50"] == 1.0 and same.figures["cer"] == 0.0
    blind = InProcessOcr(*GRAPHS, db=DBSpec(box_thresh=0.8))       # keeps only its surest boxes
    report = evaluate_det(ocr, blind, images, progress=False)
    assert not report.passed
    assert report.figures["boxes_int8"] < report.figures["boxes_fp32"]
    assert any("box F1" in f for f in report.failures) and any("CER" in f for f in report.failures)
    lenient = evaluate_det(ocr, blind, images, OcrGateThresholds(min_box_f1=0.0, max_cer=1.0), progress=False)
    assert lenient.passed


def test_cli_defaults_are_the_gates():
    assert (cli.DEFAULT_MIN_BOX_F1, cli.DEFAULT_MAX_CER) == (OcrGateThresholds().min_box_f1, OcrGateThresholds().max_cer)
