"""Declared detector post-processing for single-graph image models (model.yaml ``image.detect``).

A YOLO-style graph answers one raw tensor per image (v8: (4 + C, N) or (N, 4 + C); v5:
(N, 5 + C)); a client wants the objects. ``DetectPost`` turns the raw output into the served
outputs ``boxes`` (FP32 [n, 4]: x1, y1, x2, y2 in the ORIGINAL image's pixels), ``scores``
(FP32 [n]), ``classes`` (INT64 [n]) and, when the model has labels, ``labels`` (BYTES [n]),
best score first. n differs from image to image, so a detector answers one image per request
(with ``max_batch_size`` > 0 each output keeps the batch axis of 1: [1, n, 4]).

The array work is vision/detect.py's (``decode_yolo``, ``nms`` / ``batched_nms``); this module
is the glue the image model calls on the batcher's thread, per request, after the graph:

1. decode the rows scoring at least ``score_threshold`` (network-input pixels);
2. NMS there, before the boxes move (IoU is the same under the resize's axis-aligned scaling,
   and clipping would change it), per class unless ``class_agnostic``; at most
   ``max_detections`` kept, so a flood of candidates costs at most that many NMS rounds;
3. map the boxes through the pre-processing ``Transform`` (letterbox, keep_ratio, stretch) and
   clip them to the image, as Ultralytics' ``scale_boxes`` does.

Everything a request could not fix is checked at load (``ModelLoadError``): the raw output
exists, its shape fits the layout and ``num_classes``, the labels count, and the served
outputs model.yaml declares for the op are the ones it produces.
"""

from __future__ import annotations

from typing import List, Literal, Optional

import numpy as np
from pydantic import Field

from ..config import Section
from ..errors import InferenceFailed, ModelLoadError
from ..vision.detect import batched_nms, decode_yolo, nms

_RAW_TYPES = ("tensor(float)", "tensor(float16)")


class DetectSpec(Section):
    """model.yaml ``image.detect``: how a detector's raw output becomes objects."""

    output: str = Field(description="The graph output holding the raw detections of one image per batch row (YOLO-style).")
    layout: Literal["v8", "v5"] = Field("v8", description="v8 (YOLOv8/v11): rows of cx, cy, w, h and num_classes scores, as (4+C, N) or (N, 4+C); v5 (YOLOv5/v7): (N, 5+C) with an objectness before the class scores (score = objectness x class score).")
    num_classes: int = Field(gt=0, description="Class scores per row (80 for COCO); the output's row width is 4 + num_classes (v8) or 5 + num_classes (v5). With labels, there must be this many.")
    score_threshold: float = Field(0.25, ge=0.0, le=1.0, description="Rows scoring less are dropped before NMS.")
    iou_threshold: float = Field(0.45, ge=0.0, le=1.0, description="NMS: a box whose IoU with a better-scoring kept box is above this is dropped.")
    max_detections: int = Field(300, gt=0, description="Most objects answered per image (the best-scoring ones).")
    class_agnostic: bool = Field(False, description="NMS across classes (a box suppresses overlapping boxes of any class); default: within each class only.")


OUTPUT_NAMES = ("boxes", "scores", "classes", "labels")


def _served_specs(labelled: bool) -> list:
    from .model_spec import TensorSpec

    specs = [TensorSpec(name="boxes", datatype="FP32", dims=[-1, 4]), TensorSpec(name="scores", datatype="FP32", dims=[-1]),
             TensorSpec(name="classes", datatype="INT64", dims=[-1])]
    if labelled:
        specs.append(TensorSpec(name="labels", datatype="BYTES", dims=[-1]))
    return specs


class DetectPost:
    """One model's ``image.detect``, checked against its graph at load."""

    def __init__(self, spec: DetectSpec, graph_outputs: list, labels: Optional[List[str]], batched: bool, where: str) -> None:
        self.spec = spec
        self.batched = batched
        self.where = where
        by_name = {o.name: o for o in graph_outputs}
        clash = sorted(set(by_name) & set(OUTPUT_NAMES))
        if clash:
            raise ModelLoadError(f"{where}: image.detect serves {list(OUTPUT_NAMES[:3])} (+ labels), but the graph has outputs {clash} of the same names")
        g = by_name.get(spec.output)
        if g is None:
            raise ModelLoadError(f"{where}: image.detect.output '{spec.output}' is not in the graph (graph has {sorted(by_name)})")
        if g.type not in _RAW_TYPES:
            raise ModelLoadError(f"{where}: image.detect.output '{spec.output}' is {g.type}; a detector's raw output is float or float16")
        if g.shape:  # no shape recorded in the graph: checked per image (InferenceFailed)
            self._check_shape(list(g.shape))
        if labels and len(labels) != spec.num_classes:
            raise ModelLoadError(f"{where}: labels has {len(labels)} entries, image.detect.num_classes is {spec.num_classes}")
        self.labels = np.array([lbl.encode() for lbl in labels], dtype=object) if labels else None
        self.specs = _served_specs(self.labels is not None)
        self.names = frozenset(OUTPUT_NAMES)  # labels too: declared without labels, ``serve`` says why
        self.served: List[str] = [t.name for t in self.specs]

    @property
    def width(self) -> int:
        return 4 + self.spec.num_classes + (1 if self.spec.layout == "v5" else 0)

    def _check_shape(self, shape: list) -> None:
        """One image's raw output is 2-D (leading axes of 1 allowed), one side the row width."""
        per_image = shape[1:] if self.batched else shape
        lead, last = per_image[:-2], per_image[-2:]
        known = [d for d in last if isinstance(d, int) and d > 0]
        if (len(last) != 2 or any(d != 1 for d in lead)
                or (len(known) == 2 and self.width not in known)):
            raise ModelLoadError(f"{self.where}: image.detect.output '{self.spec.output}' has shape {shape}; a {self.spec.layout} output "
                                 f"for {self.spec.num_classes} classes is {'[N, ' if self.batched else '['}{self.width}, boxes] or "
                                 f"{'[N, ' if self.batched else '['}boxes, {self.width}]")

    def serve(self, specs: list) -> list:
        """The served outputs: model.yaml's ``specs`` plus the op's it did not declare. A declared
        one must be what the op gives (datatype, dims; ``labels`` only with labels). Records the
        full list: a request that names no outputs gets all of them."""
        mine = {t.name: t for t in self.specs}
        for t in specs:
            if t.name == "labels" and self.labels is None:
                raise ModelLoadError(f"{self.where}: output 'labels' of image.detect needs the model's labels (model.yaml labels:)")
            want = mine.get(t.name)
            if want is not None and (t.datatype, t.dims) != (want.datatype, want.dims):
                raise ModelLoadError(f"{self.where}: output '{t.name}' is {t.datatype} {t.dims}; image.detect gives {want.datatype} {want.dims}")
        have = {t.name for t in specs}
        out = list(specs) + [t for t in self.specs if t.name not in have]
        self.served = [t.name for t in out]
        return out

    def graph_wanted(self, wanted: Optional[List[str]]) -> List[str]:
        """What to take from the graph's run for a request asking ``wanted``: the raw output
        and whatever else it asks that is not the op's."""
        names = [n for n in (self.served if wanted is None else wanted) if n not in self.names]
        return names if self.spec.output in names else names + [self.spec.output]

    def apply(self, out: dict, transforms: list, wanted: Optional[List[str]]) -> dict:
        """One request's outputs (raw output included) -> its answer, detections in the
        original image's pixels (``transforms``: the one image's pre-processing)."""
        raw = out[self.spec.output]
        dets = self.detect(raw[0] if self.batched else raw, transforms[0])
        if self.batched:
            dets = {k: v[None] for k, v in dets.items()}
        out.update(dets)
        return {n: out[n] for n in (self.served if wanted is None else wanted)}

    def detect(self, raw: np.ndarray, transform) -> dict:
        """One image's raw output -> boxes, scores, classes (+ labels), best score first."""
        s = self.spec
        raw = np.asarray(raw)
        if raw.ndim > 2:
            raw = raw.reshape(raw.shape[-2:])  # leading axes of 1 (checked at load)
        try:
            boxes, scores, classes = decode_yolo(raw, s.layout, s.num_classes, s.score_threshold)
        except ValueError as e:  # a symbolic dimension that turned out wrong
            raise InferenceFailed(f"image.detect: {e}") from None
        if s.class_agnostic:
            keep = nms(boxes, scores, s.iou_threshold, s.max_detections)
        else:
            keep = batched_nms(boxes, scores, classes, s.iou_threshold, s.max_detections)
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        h, w = transform.original_hw
        mapped = transform.to_original(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        np.clip(mapped, 0, [w, h, w, h], out=mapped)
        dets = {"boxes": mapped.astype(np.float32, copy=False), "scores": scores, "classes": classes}
        if self.labels is not None:
            dets["labels"] = self.labels[classes]
        return dets
