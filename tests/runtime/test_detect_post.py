"""model.yaml ``image.detect`` (runtime/detect_post.py) on a real ONNX Runtime session: a tiny
detector graph with a known YOLO-style output (tests/detect_models.py), real PNGs of sizes other
than the network's 64 x 64, letterboxed; boxes must come back in each image's own pixels as
Ultralytics' scale_boxes computes them, with NMS per class (or across classes), the score
threshold, max_detections and labels applied; what cannot work is refused at load."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from detect_models import DETS, LABELS, detector_model, expected_boxes, png
from edge_agent.config import Config
from edge_agent.errors import InvalidInput, ModelLoadError
from edge_agent.runtime.session import LoadedModel
from edge_agent.types import IMAGE_BODY, InferRequest

PER_CLASS = [0, 2, 3, 5]  # A, C, D, F: B under A (same class), E under the threshold


def _load(tmp_path, **kw) -> LoadedModel:
    d = detector_model(tmp_path / "det" / "1", **kw)
    m = LoadedModel("det", "1", d, Config().runtime, tmp_path / "state")
    m.warmup()
    return m


def _ask(m: LoadedModel, w: int, h: int, outputs=None) -> dict:
    req = InferRequest(model="det", inputs={IMAGE_BODY: np.array([png(w, h)], dtype=object)}, outputs=outputs)
    out = m.run_batch([m.prepare(req)])[0]
    assert not isinstance(out, Exception), out
    return out


def _check(out: dict, keep: list, w: int, h: int, batch: bool = True) -> None:
    lead = (1,) if batch else ()
    n = len(keep)
    assert out["boxes"].shape == lead + (n, 4) and out["boxes"].dtype == np.float32
    np.testing.assert_allclose(out["boxes"].reshape(-1, 4), expected_boxes(keep, w, h), atol=1e-4)
    np.testing.assert_allclose(out["scores"].reshape(-1), [DETS[i][5] for i in keep], rtol=1e-6)
    assert out["scores"].shape == lead + (n,) and out["scores"].dtype == np.float32
    assert out["classes"].reshape(-1).tolist() == [DETS[i][4] for i in keep] and out["classes"].dtype == np.int64
    assert out["labels"].reshape(-1).tolist() == [LABELS[DETS[i][4]].encode() for i in keep]


@pytest.mark.parametrize("layout", ["v8", "v5"])
@pytest.mark.parametrize("w, h", [(128, 96), (48, 96)])  # padded above and below / left and right
def test_detections_come_back_in_the_images_own_pixels(tmp_path, layout, w, h):
    m = _load(tmp_path, layout=layout)
    out = _ask(m, w, h)
    assert list(out) == ["boxes", "scores", "classes", "labels"]
    _check(out, PER_CLASS, w, h)


@pytest.mark.parametrize("resize, w, h, sx, sy", [
    ({"mode": "stretch", "height": 64, "width": 64}, 128, 96, 128 / 64, 96 / 64),
    ({"mode": "keep_ratio", "height": 64, "width": 64}, 48, 96, 48 / 32, 96 / 64),  # 32 wide, padded on the right
])
def test_stretch_and_keep_ratio_map_back_too(tmp_path, resize, w, h, sx, sy):
    m = _load(tmp_path, image={"preprocess": {"color": "rgb", "resize": resize, "normalize": {"scale": 1 / 255}}})
    out = _ask(m, w, h)
    want = []
    for i in PER_CLASS:  # no offset: the image sits at the tensor's top-left, scaled by (sx, sy)
        cx, cy, bw, bh = DETS[i][:4]
        want.append([np.clip((cx - bw / 2) * sx, 0, w), np.clip((cy - bh / 2) * sy, 0, h),
                     np.clip((cx + bw / 2) * sx, 0, w), np.clip((cy + bh / 2) * sy, 0, h)])
    np.testing.assert_allclose(out["boxes"][0], want, atol=1e-4)


def test_class_agnostic_nms_drops_overlapping_boxes_of_other_classes(tmp_path):
    out = _ask(_load(tmp_path, class_agnostic=True), 128, 96)
    _check(out, [0, 3, 5], 128, 96)  # C went with B


def test_score_threshold_and_max_detections(tmp_path):
    _check(_ask(_load(tmp_path / "a", score_threshold=0.65), 128, 96), [0, 2], 128, 96)
    _check(_ask(_load(tmp_path / "b", max_detections=3), 128, 96), [0, 2, 3], 128, 96)
    _check(_ask(_load(tmp_path / "c", score_threshold=0.05), 128, 96), [0, 2, 3, 5, 4], 128, 96)
    none = _ask(_load(tmp_path / "d", score_threshold=0.95), 128, 96)
    _check(none, [], 128, 96)
    assert none["labels"].shape == (1, 0)


def test_without_labels_no_labels_output(tmp_path):
    m = _load(tmp_path, labels=False)
    assert m.output_names == ["boxes", "scores", "classes"]
    out = _ask(m, 128, 96)
    assert "labels" not in out and out["classes"].reshape(-1).tolist() == [0, 1, 1, 1]


def test_a_graph_without_batch_axis_answers_n_rows(tmp_path):
    m = _load(tmp_path, batched=False)
    _check(_ask(m, 128, 96), PER_CLASS, 128, 96, batch=False)


def test_requests_of_one_batch_each_map_by_their_own_image(tmp_path):
    m = _load(tmp_path)
    reqs = [m.prepare(InferRequest(model="det", inputs={"image": np.array([[png(w, h)]], dtype=object)}))
            for w, h in ((128, 96), (48, 96), (64, 64))]
    outs = m.run_batch(reqs)
    for out, (w, h) in zip(outs, ((128, 96), (48, 96), (64, 64))):
        _check(out, PER_CLASS, w, h)


def test_outputs_asked_for_and_the_raw_output(tmp_path):
    m = _load(tmp_path, outputs=[{"name": "output0", "datatype": "FP32", "dims": [4 + len(LABELS), -1]},
                                 {"name": "labels", "datatype": "BYTES", "dims": [-1]}])
    assert m.output_names == ["output0", "labels", "boxes", "scores", "classes"]
    out = _ask(m, 128, 96, outputs=["labels"])
    assert list(out) == ["labels"] and out["labels"].reshape(-1).tolist() == [b"cat", b"dog", b"dog", b"dog"]
    out = _ask(m, 128, 96, outputs=["boxes", "output0"])
    assert list(out) == ["boxes", "output0"] and out["output0"].shape == (1, 6, 8)
    meta = {o["name"]: o for o in m.metadata()["outputs"]}
    assert meta["boxes"]["shape"] == [-1, -1, 4] and meta["classes"]["datatype"] == "INT64"


def test_one_image_per_request(tmp_path):
    m = _load(tmp_path)
    two = np.array([[png(32, 32)], [png(32, 32)]], dtype=object)
    with pytest.raises(InvalidInput, match="one image per request"):
        m.prepare(InferRequest(model="det", inputs={"image": two}))


@pytest.mark.parametrize("kw, match", [
    ({"output": "nope"}, "image.detect.output 'nope' is not in the graph"),
    ({"num_classes": 3}, r"a v8 output for 3 classes is \[N, 7, boxes\]"),
    ({"graph_layout": "v5"}, r"a v8 output for 2 classes is \[N, 6, boxes\]"),  # rows of 7: a v5 graph
    ({"outputs": [{"name": "boxes", "datatype": "FP32", "dims": [4]}]}, r"output 'boxes' is FP32 \[4\]; image.detect gives FP32 \[-1, 4\]"),
    ({"labels": False, "outputs": [{"name": "labels", "datatype": "BYTES", "dims": [-1]}]}, "needs the model's labels"),
    ({"image": {"to_original": [{"output": "output0", "format": "xyxy"}]}}, "image.detect decodes and maps itself"),
])
def test_load_refuses_what_cannot_work(tmp_path, kw, match):
    d = detector_model(tmp_path / "det" / "1", **kw)
    with pytest.raises(ModelLoadError, match=match):
        LoadedModel("det", "1", d, Config().runtime, tmp_path / "state")


def test_load_refuses_a_label_count_other_than_num_classes(tmp_path):
    d = detector_model(tmp_path / "det" / "1")
    spec = yaml.safe_load((d / "model.yaml").read_text())
    spec["labels"] = ["cat", "dog", "bird"]
    (d / "model.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelLoadError, match="labels has 3 entries, image.detect.num_classes is 2"):
        LoadedModel("det", "1", d, Config().runtime, tmp_path / "state")
