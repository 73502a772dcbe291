"""What a pipeline step does around its graph: turn items into a batch tensor
(collate), and the graph's output back into each item's result (finish).

The OCR ops reproduce RapidOCR 1.4.4's pipeline (the reference the daemon's
answers are compared with): ``db`` detects text boxes on the whole image and
cuts them out; ``angle`` turns the crops the classifier finds upside down;
``ctc`` reads them. The pure functions (DB post-processing, crops, CTC, angle)
are edge_agent/vision's; what is here is the glue: the frame rules before
detection, the crop resize of the classifier and the recogniser, and the
batch layouts. Collate and finish run on the step's batcher thread, so none
of this CPU work touches the event loop.

Adding an op: a class with ``collate(items) -> [(indices, tensor)]`` and
``finish(items, output) -> [result]`` (and, for a crop step,
``items(crops) -> [Item]``), registered in ``OPS`` and named in spec.py's
``op`` Literal.
"""

from __future__ import annotations

import math

import numpy as np

from ..compat import slotted_dataclass
from .spec import DetectLimits


def _cv2():
    import cv2  # a runtime dependency of image models only: the tensor path never imports it

    return cv2


# --- detection (db) -----------------------------------------------------------


@slotted_dataclass
class Frame:
    """A decoded image as detection sees it: ``image`` after RapidOCR's frame
    rules, and what to undo to map its points back to the original."""

    image: np.ndarray
    ratio_h: float
    ratio_w: float
    top: int
    raw_h: int
    raw_w: int


def _scale_to(img: np.ndarray, side: int, longer: bool):
    cv2 = _cv2()
    h, w = img.shape[:2]
    ratio = float(side) / (h if (h > w) == longer else w)
    rh, rw = int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)
    if rh <= 0 or rw <= 0:
        from ..errors import InvalidImage

        raise InvalidImage(f"image of {w}x{h} pixels is too thin to read")
    return cv2.resize(img, (rw, rh)), h / rh, w / rw


def frame(img: np.ndarray, limits: DetectLimits) -> Frame:
    """RapidOCR.preprocess + maybe_add_letterbox."""
    raw_h, raw_w = img.shape[:2]
    rh = rw = 1.0
    if max(raw_h, raw_w) > limits.max_side:
        img, rh, rw = _scale_to(img, limits.max_side, longer=True)
    if min(img.shape[:2]) < limits.min_side:
        img, rh, rw = _scale_to(img, limits.min_side, longer=False)
    h, w = img.shape[:2]
    top = 0
    if h <= limits.min_height or (limits.max_ratio != -1 and w / h > limits.max_ratio):
        new_h = max(int(w / limits.max_ratio), limits.min_height) * 2
        top = int(abs(new_h - h) / 2)
        img = _cv2().copyMakeBorder(img, top, top, 0, 0, _cv2().BORDER_CONSTANT, value=(0, 0, 0))
    return Frame(img, rh, rw, top, raw_h, raw_w)


def to_original(boxes: np.ndarray, f: Frame) -> np.ndarray:
    """RapidOCR._get_origin_points: framed-image points -> original pixels."""
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4, 2)
    b[:, :, 1] -= f.top
    b[:, :, 0] *= f.ratio_w
    b[:, :, 1] *= f.ratio_h
    b = np.where(b < 0, 0, b)
    b[..., 0] = np.minimum(b[..., 0], f.raw_w)
    b[..., 1] = np.minimum(b[..., 1], f.raw_h)
    return b


@slotted_dataclass
class Regions:
    """What detection found in one image, in reading order: boxes (n,4,2) in
    original pixels, and the crops cut from the framed image."""

    boxes: np.ndarray
    crops: list


class DetectOp:
    """Text detection: frame, resize (limit_side_len, multiples of 32),
    normalise, one run per image size; DB post-processing, RapidOCR's box
    filter and reading order, then the crops."""

    def __init__(self, params: dict, session) -> None:
        from ..vision.dbnet import DBSpec

        params = dict(params)
        self.limits = DetectLimits(**params.pop("limits", {}))
        self.limit_side_len = int(params.pop("limit_side_len", 736))
        self.limit_type = params.pop("limit_type", "min")
        self.db = DBSpec(**params)

    def prepare(self, img: np.ndarray):
        """On the pre-processing pool: the framed image and its input tensor (3, H, W)."""
        f = frame(img, self.limits)
        im = f.image
        h, w = im.shape[:2]
        side = self.limit_side_len
        if self.limit_type == "min":
            ratio = side / min(h, w) if min(h, w) < side else 1.0
        else:
            ratio = side / max(h, w) if max(h, w) > side else 1.0
        rh, rw = int(round(int(h * ratio) / 32) * 32), int(round(int(w * ratio) / 32) * 32)
        resized = _cv2().resize(im, (rw, rh))
        x = (resized.astype(np.float32) * np.float32(1 / 255.0) - np.float32(0.5)) / np.float32(0.5)
        return f, np.ascontiguousarray(x.transpose(2, 0, 1))

    def collate(self, items) -> list:
        """Images of one size run as one batch; other sizes each as their own."""
        groups: dict = {}
        for i, it in enumerate(items):
            groups.setdefault(it.tensor.shape, []).append(i)
        return [(idx, np.stack([items[i].tensor for i in idx])) for idx in groups.values()]

    def finish(self, items, out: np.ndarray) -> list:
        from ..vision.crops import filter_boxes, reading_order, rotate_crop
        from ..vision.dbnet import db_boxes

        results = []
        for it, prob in zip(items, out):
            f = it.ctx
            h, w = f.image.shape[:2]
            pm = prob[0]
            boxes, _ = db_boxes(pm, self.db)
            if len(boxes):
                ph, pw = pm.shape
                boxes = np.array(boxes, dtype=np.float32)
                boxes[..., 0] = boxes[..., 0] / pw * w  # RapidOCR's order of operations, for the same rounding
                boxes[..., 1] = boxes[..., 1] / ph * h
                boxes = filter_boxes(boxes, (h, w))
            if len(boxes):
                boxes = boxes[reading_order(boxes)]
            crops = [rotate_crop(f.image, b) for b in boxes]
            results.append(Regions(to_original(boxes, f), crops))
        return results


# --- crops: classifier (angle) and recogniser (ctc) ---------------------------


def crop_tensor(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """RapidOCR's cls/rec resize_norm_img: height ``height``, width by aspect
    ratio (at most ``width``), scaled to [-1, 1], zero-padded on the right."""
    h, w = img.shape[:2]
    rw = min(width, int(math.ceil(height * w / float(h))))
    r = _cv2().resize(img, (rw, height)).astype(np.float32).transpose(2, 0, 1)
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :rw] = (r / 255 - 0.5) / 0.5
    return out


class AngleOp:
    """The angle classifier: crops at 48 x 192; those it finds upside down
    (class 180 above ``threshold``) are turned before recognition."""

    def __init__(self, params: dict, session) -> None:
        self.height = int(params.get("height", 48))
        self.width = int(params.get("width", 192))
        self.threshold = float(params.get("threshold", 0.9))

    def items(self, crops: list) -> list:
        from .step import Item

        return [Item(c) for c in crops]

    def collate(self, items) -> list:
        return [(list(range(len(items))), np.stack([crop_tensor(it.tensor, self.height, self.width) for it in items]))]

    def finish(self, items, out: np.ndarray) -> list:
        from ..vision.angle import flips

        turn = flips(np.asarray(out, dtype=np.float32), self.threshold)
        cv2 = _cv2()
        return [cv2.rotate(it.tensor, cv2.ROTATE_180) if t else it.tensor for it, t in zip(items, turn)]


class RecognizeOp:
    """The recogniser: greedy CTC with the character list in the graph's metadata.

    Its answers depend on how far a crop is padded (the graph mixes the whole
    line), so each crop gets the width RapidOCR would give it: RapidOCR sorts
    an image's crops by aspect ratio and pads each run of ``rapid_batch`` to
    its widest (at least ``min_width``). ``items`` plans those widths per
    image; ``collate`` batches crops of the same width, from any image."""

    def __init__(self, params: dict, session) -> None:
        from ..vision.ctc import charset_from_metadata

        self.height = int(params.get("height", 48))
        self.min_width = int(params.get("min_width", 320))
        self.rapid_batch = int(params.get("rapid_batch", 6))
        self.charset = charset_from_metadata(session.get_modelmeta().custom_metadata_map)

    def items(self, crops: list) -> list:
        from .step import Item

        ratios = [c.shape[1] / float(c.shape[0]) for c in crops]
        order = np.argsort(np.array(ratios))
        width = [0] * len(crops)
        for start in range(0, len(crops), self.rapid_batch):
            run = order[start:start + self.rapid_batch]
            w = int(self.height * max([self.min_width / self.height] + [ratios[i] for i in run]))
            for i in run:
                width[i] = w
        return [Item(c, w) for c, w in zip(crops, width)]

    def collate(self, items) -> list:
        groups: dict = {}
        for i, it in enumerate(items):
            groups.setdefault(it.ctx, []).append(i)
        return [(idx, np.stack([crop_tensor(items[i].tensor, self.height, w) for i in idx])) for w, idx in groups.items()]

    def finish(self, items, out: np.ndarray) -> list:
        from ..vision.ctc import ctc_greedy

        texts, scores = ctc_greedy(np.asarray(out), self.charset)
        return [(t, float(s)) for t, s in zip(texts, scores)]


OPS = {"db": DetectOp, "angle": AngleOp, "ctc": RecognizeOp}
