"""model.yaml ``image.detect`` on the real daemon, driven as a camera does: a PNG as the body of
``POST /v2/models/det/infer`` on the socket; the answer's boxes are in the PNG's own pixels,
NMS applied, with labels; an image with no objects answers empty tensors; two images in one
request are refused alone while the daemon keeps serving."""

from __future__ import annotations

import numpy as np
import orjson

from detect_models import DETS, LABELS, detector_model, expected_boxes, png

KEPT = [0, 2, 3, 5]  # A, C, D, F: NMS dropped B (same class as A), E is under 0.25


def test_a_png_body_gets_boxes_in_its_own_pixels(agent_factory):
    a = agent_factory()
    detector_model(a.models_dir / "det" / "1")
    detector_model(a.models_dir / "det-empty" / "1", score_threshold=0.95)
    a.start()
    c = a.client()

    status, doc = c.infer_image("det", png(128, 96), "image/png")
    assert status == 200, doc
    outs = {o["name"]: o for o in doc["outputs"]}
    assert {n: (o["datatype"], o["shape"]) for n, o in outs.items()} == {
        "boxes": ("FP32", [1, 4, 4]), "scores": ("FP32", [1, 4]), "classes": ("INT64", [1, 4]), "labels": ("BYTES", [1, 4])}
    np.testing.assert_allclose(np.array(outs["boxes"]["data"]).reshape(-1, 4), expected_boxes(KEPT, 128, 96), atol=1e-4)
    np.testing.assert_allclose(outs["scores"]["data"], [DETS[i][5] for i in KEPT], rtol=1e-6)
    assert outs["classes"]["data"] == [DETS[i][4] for i in KEPT]
    assert outs["labels"]["data"] == [LABELS[DETS[i][4]] for i in KEPT]

    status, doc = c.infer_image("det-empty", png(48, 96), "image/png")
    assert status == 200, doc
    assert {o["name"]: (o["shape"], o["data"]) for o in doc["outputs"]} == {
        "boxes": ([1, 0, 4], []), "scores": ([1, 0], []), "classes": ([1, 0], []), "labels": ([1, 0], [])}

    two = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]}]}
    status, _, raw = c.request("POST", "/v2/models/det/infer", orjson.dumps(two), {"Content-Type": "application/json"})
    doc = orjson.loads(raw)
    assert (status, doc["code"]) == (400, "invalid_input") and "one image per request" in doc["error"], doc

    status, meta = c.json("GET", "/v2/models/det")
    assert status == 200 and {o["name"]: o["shape"] for o in meta["outputs"]}["boxes"] == [-1, -1, 4]
    status, doc = c.infer_image("det", png(48, 96), "image/png")
    assert status == 200
    boxes = np.array([o for o in doc["outputs"] if o["name"] == "boxes"][0]["data"]).reshape(-1, 4)
    np.testing.assert_allclose(boxes, expected_boxes(KEPT, 48, 96), atol=1e-4)
