"""A tiny real detector for the image.detect tests (runtime/detect_post.py): an ONNX graph whose
raw output is a known YOLO-style tensor (a constant + 0 x the input's sum, so it depends on the
input), in v8 or v5 layout, written with a model.yaml that letterboxes to 64 x 64; and the
expected boxes in an image's own pixels, computed as Ultralytics' ``scale_boxes`` does.

``DETS`` in network-input pixels: A and B overlap (same class, B scores less: NMS drops B); C
lies over A but is of the other class (kept unless class_agnostic); E scores under the default
threshold; F reaches into the letterbox's top padding (clipped to the image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper

from image_files import encode

SIDE = 64
LABELS = ["cat", "dog"]
#        cx, cy,  w,  h, class, score
DETS = [(20, 30, 16, 16, 0, 0.90),  # A
        (22, 31, 16, 16, 0, 0.80),  # B: IoU(A, B) = 0.70
        (21, 30, 16, 16, 1, 0.70),  # C: IoU(A, C) = 0.88, other class
        (48, 40, 10, 12, 1, 0.60),  # D
        (40, 20, 8, 8, 0, 0.10),    # E: under 0.25
        (50, 8, 10, 8, 1, 0.50)]    # F: y 4..12, the padding ends at y 8 for a 4:3 image
ROWS = 8  # DETS plus empty rows


def raw_output(layout: str) -> np.ndarray:
    """One image's raw output: v8 (4 + C, ROWS), v5 (ROWS, 5 + C)."""
    c = len(LABELS)
    rows = np.zeros((ROWS, 5 + c), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(DETS):
        rows[i, :4] = (cx, cy, w, h)
        rows[i, 4] = 1.0  # objectness (v5)
        rows[i, 5:] = 0.01
        rows[i, 5 + cls] = score
    if layout == "v5":
        return rows
    return np.concatenate([rows[:, :4], rows[:, 5:]], axis=1).T.copy()


def _graph(path: Path, layout: str, batched: bool) -> None:
    raw = raw_output(layout)
    n = ["N"] if batched else [1]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, n + [3, SIDE, SIDE])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, n + list(raw.shape))
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),  # (N, 1, 1, 1)
        helper.make_node("Squeeze", ["s", "last"], ["s3"]),               # (N, 1, 1)
        helper.make_node("Mul", ["s3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "raw"], ["output0"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("last", TensorProto.INT64, [1], [3]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("raw", TensorProto.FLOAT, [1] + list(raw.shape), raw.reshape(-1).tolist()),
    ]
    m = helper.make_model(helper.make_graph(nodes, "detector", [x], [out], inits), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def detector_model(dest: Path, layout: str = "v8", batched: bool = True, labels: bool = True, outputs: list | None = None,
                   image: dict | None = None, graph_layout: str | None = None, **detect) -> Path:
    """``dest`` (a version folder) with model.onnx (its output in ``graph_layout``, default
    ``layout``) and a model.yaml declaring ``image.detect`` (``detect`` overrides its keys;
    ``image`` other ``image:`` keys; ``outputs`` the served ones)."""
    dest.mkdir(parents=True, exist_ok=True)
    _graph(dest / "model.onnx", graph_layout or layout, batched)
    spec = {
        "max_batch_size": 4 if batched else 0,
        "inputs": [{"name": "image", "datatype": "BYTES", "dims": [1]}],
        "outputs": outputs if outputs is not None else [],
        "image": {
            "preprocess": {"color": "rgb", "resize": {"mode": "letterbox", "height": SIDE, "width": SIDE, "pad_value": 0.447},
                           "normalize": {"scale": 1 / 255}},
            "detect": {"output": "output0", "layout": layout, "num_classes": len(LABELS), **detect},
            **({} if batched else {"reshape": [1, 3, SIDE, SIDE]}),
            **(image or {}),
        },
        "warmup": {"batch_sizes": [1, 2] if batched else [1]},
    }
    if labels:
        spec["labels"] = LABELS
    (dest / "model.yaml").write_text(yaml.safe_dump(spec))
    return dest


def png(width: int, height: int) -> bytes:
    """A real PNG of noise (the graph's answer does not depend on the pixels, only on the size)."""
    rng = np.random.default_rng(width * height)
    return encode(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def expected_boxes(keep: list, width: int, height: int) -> np.ndarray:
    """DETS rows ``keep`` (indices) as x1, y1, x2, y2 in a ``width`` x ``height`` image
    letterboxed to SIDE: Ultralytics' ``scale_boxes`` (gain, centred padding, clip)."""
    gain = min(SIDE / height, SIDE / width)
    pad_x = round((SIDE - width * gain) / 2 - 0.1)
    pad_y = round((SIDE - height * gain) / 2 - 0.1)
    out = []
    for i in keep:
        cx, cy, w, h = DETS[i][:4]
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        box = [(x1 - pad_x) / gain, (y1 - pad_y) / gain, (x2 - pad_x) / gain, (y2 - pad_y) / gain]
        out.append([min(max(box[0], 0), width), min(max(box[1], 0), height), min(max(box[2], 0), width), min(max(box[3], 0), height)])
    return np.array(out, np.float32).reshape(-1, 4)
