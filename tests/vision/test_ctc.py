"""charset_from_metadata / ctc_greedy against RapidOCR 1.4.4's CTCLabelDecode on the real
PP-OCRv4 rec model's outputs for crops of rendered text."""

from __future__ import annotations

import numpy as np
import pytest

import ocr_reference as ref
from edge_agent.vision.ctc import charset_from_metadata, ctc_greedy

ref.require_rapidocr()


def test_charset_is_rapidocrs():
    charset = charset_from_metadata(ref.rec_metadata())
    assert charset == ref.engine().text_rec.postprocess_op.character
    assert charset[0] == "blank" and charset[-1] == " " and len(charset) == 6625
    with pytest.raises(KeyError):
        charset_from_metadata({})


def test_decode_of_real_rec_outputs_matches_rapidocr():
    charset = charset_from_metadata(ref.rec_metadata())
    decode = ref.engine().text_rec.postprocess_op
    n = 0
    for img, _ in ref.rendered(3, seed=1803):
        _, crops = ref.det_crops(img)
        probs = ref.rec_probs(crops)
        texts, scores = ctc_greedy(probs, charset)
        want = decode(probs)
        assert texts == [t for t, _ in want]
        np.testing.assert_allclose(scores, [s for _, s in want], rtol=1e-6)
        n += sum(1 for t in texts if t)
    assert n >= 3


def test_repeats_collapse_blanks_separate_and_empty_scores_zero():
    charset = ["blank", "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 3, 0]   # a a _ a b b ' ' _ -> "aab "
    probs = np.full((2, len(steps), 4), 0.01, np.float32)
    probs[0, np.arange(len(steps)), steps] = np.linspace(0.5, 0.9, len(steps))
    probs[1, :, 0] = 0.97                # all blank
    texts, scores = ctc_greedy(probs, charset)
    assert texts == ["aab ", ""]
    kept = np.linspace(0.5, 0.9, len(steps))[[0, 3, 4, 6]]
    assert scores[0] == pytest.approx(kept.mean(), rel=1e-6) and scores[1] == 0.0
    want = ref.require_rapidocr() and __import__("rapidocr_onnxruntime.ch_ppocr_rec.utils", fromlist=["x"])
    dec = want.CTCLabelDecode(character=["a", "b"])
    assert [t for t, _ in dec(probs)] == texts
    with pytest.raises(ValueError):
        ctc_greedy(probs[:, :, :3], charset)
