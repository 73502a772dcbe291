"""The recogniser's answer depends on how far a crop is padded (PP-OCRv4 rec mixes the whole
line), so each crop is padded to the width RapidOCR gives it, whatever else shares its batch:
a crop batched with a very wide crop of another image still reads as RapidOCR reads it."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.config import RuntimeConfig
from edge_agent.pipeline.model import PipelineModel

import ocr_reference as ref


@pytest.mark.slow
def test_crops_keep_rapidocrs_padding_in_a_batch_with_other_images_crops(ocr_build, tmp_path):
    ref.require_rapidocr()
    model = PipelineModel("ocr", "1", ocr_build / "1", RuntimeConfig(), tmp_path)
    rec = model.steps[2]
    imgs = ref.rendered(6, 18)
    checked = 0
    wide = np.full((40, 1400, 3), 235, np.uint8)  # another image's long, empty line: 1680 px wide at height 48
    for img, _ in imgs:
        boxes, crops = ref.det_crops(img)
        if boxes is None or not len(crops):
            continue
        want = ref.engine().text_rec(crops)[0]  # RapidOCR's own batching of this image's crops
        items = rec.op.items(crops) + rec.op.items([wide])
        got = rec.run_batch(items)[: len(crops)]
        assert [t for t, _ in got] == [t for t, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=2e-3)
        checked += len(crops)
    assert checked >= 6
