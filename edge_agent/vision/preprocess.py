"""Declared pre-processing: a decoded BGR image -> the tensor a graph takes.

model.yaml says it once (``PreprocessSpec``): colour order -> resize ->
normalise -> layout -> dtype, and ``preprocess`` returns the tensor (no batch
axis) with the ``Transform`` it applied, so post-processing can put boxes
found in the tensor back into the client's pixels (``Transform.to_original``).

The resize modes are the ones vision graphs are trained with, so that the
daemon feeds a graph exactly what its reference pipeline would:

- ``stretch``: to ``height`` x ``width``, aspect ratio lost (classifiers).
- ``keep_ratio`` with ``max_side`` / ``min_side``: scale down so the longer side
  is at most ``max_side``, else up so the shorter is at least ``min_side``;
  then each side is cut to an integer and rounded to the nearest
  ``multiple_of`` (Python's round, half to even). With ``min_side: 736,
  multiple_of: 32`` (or ``max_side``) this is RapidOCR 1.4.4's
  ``DetPreProcess`` (limit_type min / max) to the pixel.
- ``keep_ratio`` with ``height`` (and ``width``): height fixed, width
  ``ceil(height * w / h)`` at most ``width``, the rest of ``width`` padded on
  the right with ``pad_value``: RapidOCR's cls and rec resize (48 x 192 / 48 x W).
- ``letterbox``: the largest size that fits ``height`` x ``width``, centred,
  padded with ``pad_value`` (YOLO-style detectors).

Normalisation is ``(pixel * scale - mean) / std`` in float32 (mean/std per
channel, in the output's channel order). ``pad_value`` is a value of the
output tensor, after normalisation (RapidOCR pads rec/cls inputs with 0.0).
"""

from __future__ import annotations

import math
from typing import List, Literal, Optional, Tuple

import cv2
import numpy as np
from pydantic import Field, model_validator

from ..compat import slotted_dataclass
from ..config import Section
from ..errors import InvalidImage

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}
_DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}


class ResizeSpec(Section):
    mode: Literal["none", "stretch", "keep_ratio", "letterbox"] = Field("none", description="How the image is brought to the graph's size (preprocess.py's docstring).")
    height: Optional[int] = Field(None, gt=0, description="Output height (stretch, letterbox, keep_ratio with a fixed height).")
    width: Optional[int] = Field(None, gt=0, description="Output width (stretch, letterbox); keep_ratio with height: the widest it may be, padded on the right up to it.")
    min_side: Optional[int] = Field(None, gt=0, description="keep_ratio: scale up so the shorter side is at least this (RapidOCR det limit_type min).")
    max_side: Optional[int] = Field(None, gt=0, description="keep_ratio: scale down so the longer side is at most this (RapidOCR det limit_type max); applied before min_side.")
    multiple_of: int = Field(1, gt=0, description="keep_ratio with min_side/max_side: each side rounded to the nearest multiple (32 for DBNet).")
    interpolation: Literal["linear", "area", "nearest", "cubic"] = Field("linear", description="OpenCV interpolation of the resize (linear: cv2.resize's default, as RapidOCR).")
    pad_value: float = Field(0.0, description="Value of padded elements in the output tensor (after normalisation).")

    @model_validator(mode="after")
    def _complete(self):
        m = self.mode
        if m in ("stretch", "letterbox") and (self.height is None or self.width is None):
            raise ValueError(f"resize mode {m} needs height and width")
        if m == "keep_ratio":
            sides = self.min_side is not None or self.max_side is not None
            if sides == (self.height is not None):
                raise ValueError("resize mode keep_ratio needs either min_side/max_side or height (with an optional width), not both")
        elif self.min_side is not None or self.max_side is not None:
            raise ValueError("min_side / max_side apply to resize mode keep_ratio only")
        if m == "none" and (self.height is not None or self.width is not None):
            raise ValueError("resize mode none takes no height / width")
        return self


class NormalizeSpec(Section):
    scale: float = Field(1.0, description="Pixels (0..255) are multiplied by this first (1/255 = 0.00392156862745098 for 0..1).")
    mean: List[float] = Field([0.0], description="Subtracted after scaling: one value, or one per output channel.")
    std: List[float] = Field([1.0], description="Divided by last: one value, or one per output channel.")

    @model_validator(mode="after")
    def _std_nonzero(self):
        if any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        return self


class PreprocessSpec(Section):
    """What a graph's image input is made from (model.yaml ``image.preprocess``)."""

    color: Literal["bgr", "rgb", "gray"] = Field("bgr", description="Channel order of the tensor: bgr (as decoded; RapidOCR), rgb, or gray (one channel).")
    resize: ResizeSpec = Field(default_factory=ResizeSpec, description="Resize to the graph's size.")
    normalize: NormalizeSpec = Field(default_factory=NormalizeSpec, description="(pixel * scale - mean) / std.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Channels first or last (the tensor has no batch axis here; the batcher adds it).")
    dtype: Literal["FP32", "FP16", "UINT8"] = Field("FP32", description="Tensor datatype; UINT8 takes the pixels as they are (no normalize).")

    @model_validator(mode="after")
    def _consistent(self):
        channels = 1 if self.color == "gray" else 3
        for name in ("mean", "std"):
            n = len(getattr(self.normalize, name))
            if n not in (1, channels):
                raise ValueError(f"normalize.{name} has {n} values; color {self.color} has {channels} channel(s)")
        if self.dtype == "UINT8" and self.normalize != NormalizeSpec():
            raise ValueError("dtype UINT8 takes the pixels as they are: leave normalize out")
        return self


@slotted_dataclass(frozen=True)
class Transform:
    """Where the original image sits in the tensor: ``tensor = original / ratio + offset``."""

    original_hw: Tuple[int, int]
    resized_hw: Tuple[int, int]  # the image's own size in the tensor (padding excluded)
    ratio: Tuple[float, float]  # (original w / resized w, original h / resized h)
    offset: Tuple[float, float]  # (x, y) of the image's top-left corner in the tensor

    def to_original(self, pts: np.ndarray) -> np.ndarray:
        """``(..., 2)`` (x, y) in tensor pixels -> original pixels (not clipped)."""
        pts = np.asarray(pts)
        dtype = pts.dtype if pts.dtype.kind == "f" else np.float64
        out = (pts - np.asarray(self.offset)) * np.asarray(self.ratio)
        return out.astype(dtype, copy=False)

    def to_tensor(self, pts: np.ndarray) -> np.ndarray:
        """The inverse: original pixels -> tensor pixels."""
        pts = np.asarray(pts)
        dtype = pts.dtype if pts.dtype.kind == "f" else np.float64
        return (pts / np.asarray(self.ratio) + np.asarray(self.offset)).astype(dtype, copy=False)


def preprocess(img: np.ndarray, spec: PreprocessSpec) -> Tuple[np.ndarray, Transform]:
    """``img`` (H, W, 3) uint8 BGR -> (tensor without batch axis, Transform)."""
    h, w = img.shape[:2]
    if spec.color == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif spec.color == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    r = spec.resize
    rh, rw = _resized_size(h, w, r)
    if (rh, rw) != (h, w):
        img = cv2.resize(img, (rw, rh), interpolation=_INTERPOLATION[r.interpolation])
    if img.ndim == 2:
        img = img[:, :, None]
    if spec.dtype == "UINT8":
        x = img
    else:
        n = spec.normalize
        x = img.astype(np.float32) * np.float32(n.scale)
        x = (x - np.asarray(n.mean, dtype=np.float32)) / np.asarray(n.std, dtype=np.float32)
    out_h, out_w, top, left = _canvas(rh, rw, r)
    if (out_h, out_w) != (rh, rw):
        canvas = np.full((out_h, out_w, x.shape[2]), r.pad_value, dtype=x.dtype)
        canvas[top:top + rh, left:left + rw] = x
        x = canvas
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    x = np.ascontiguousarray(x, dtype=_DTYPES[spec.dtype])
    return x, Transform((h, w), (rh, rw), (w / float(rw), h / float(rh)), (float(left), float(top)))


def _resized_size(h: int, w: int, r: ResizeSpec) -> Tuple[int, int]:
    """(height, width) of the image itself after the resize (formulas as RapidOCR's)."""
    mode = r.mode
    if mode == "none":
        return h, w
    if mode == "stretch":
        return r.height, r.width
    if mode == "letterbox":
        ratio = min(r.height / h, r.width / w)
        return max(1, min(r.height, int(round(h * ratio)))), max(1, min(r.width, int(round(w * ratio))))
    if r.height is not None:
        rw = int(math.ceil(r.height * (w / float(h))))
        if r.width is not None and rw > r.width:
            rw = r.width
        return r.height, max(1, rw)
    ratio = 1.0
    if r.max_side is not None and max(h, w) > r.max_side:
        ratio = float(r.max_side) / max(h, w)
    elif r.min_side is not None and min(h, w) < r.min_side:
        ratio = float(r.min_side) / min(h, w)
    rh, rw = int(h * ratio), int(w * ratio)
    m = r.multiple_of
    if m > 1:
        rh, rw = int(round(rh / m) * m), int(round(rw / m) * m)
    if rh <= 0 or rw <= 0:
        raise InvalidImage(f"the {w}x{h} image resizes to {rw}x{rh} pixels (resize keep_ratio, multiple_of {m}): "
                           "too small or too elongated for this model")
    return rh, rw


def _canvas(rh: int, rw: int, r: ResizeSpec) -> Tuple[int, int, int, int]:
    """(height, width, top, left) of the output: padding around the resized image."""
    if r.mode == "letterbox":
        return r.height, r.width, (r.height - rh) // 2, (r.width - rw) // 2
    if r.mode == "keep_ratio" and r.height is not None and r.width is not None:
        return rh, r.width, 0, 0
    return rh, rw, 0, 0
