"""Single-graph image models: model.yaml ``image:`` turns a BYTES input into the graph's tensor.

A client sends the encoded image (a KServe v2 BYTES element, an HTTP body with
``Content-Type: image/png``, an MQTT payload); the daemon decodes it with the
model's limits (vision/image.py) and pre-processes it as declared
(vision/preprocess.py), and the graph gets the tensor it was trained on.

Where the work happens, so the event loop never decodes:

- ``check`` (event loop, in ``LoadedModel.prepare``): each element's byte length
  against ``max_bytes`` -- O(rows), nothing decoded.
- ``run_batch`` (the batcher's worker thread): decode + pre-process each row; a
  request whose image is refused gets its own error in the batch's results
  while the others run; rows whose tensors differ in shape (keep_ratio) run as
  separate batches; outputs named in ``to_original`` are mapped from tensor
  pixels back to the client's image (``Transform.to_original``).

An image body (HTTP/MQTT) arrives as the input ``types.IMAGE_BODY``;
``resolve`` gives it the model's image input name and shape, so it is the same
request (and the same cache key) as a BYTES input carrying those bytes.

Detector post-processing (``image.detect``: box decoding + NMS, runtime/detect_post.py) runs
in ``_postprocess`` after ``to_original``, per request; a detector answers one image per
request (``check`` refuses more rows), since the number of objects differs per image.
"""

from __future__ import annotations

import io
from typing import Callable, List, Literal, Optional

import numpy as np
from pydantic import Field

from ..config import Section
from ..errors import EdgeError, ImageTooLarge, InvalidInput, ModelLoadError
from ..types import IMAGE_BODY
from ..vision.image import ImageLimits, decode
from ..vision.preprocess import PreprocessSpec, preprocess
from .detect_post import DetectPost, DetectSpec

_GRAPH_TYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8"}


class OriginalCoords(Section):
    output: str = Field(description="A graph output holding pixel coordinates of the pre-processed tensor, one set per batch row.")
    format: Literal["points", "xyxy"] = Field("points", description="points: (..., 2) (x, y); xyxy: (..., 4) boxes x1, y1, x2, y2.")


class ImageSpec(ImageLimits):
    """model.yaml ``image:``: the limits (ImageLimits) plus, for a single-graph model, how
    the encoded input becomes the graph's tensor."""

    input: str = Field("image", description="The served BYTES input (dims [1]) that carries the encoded image; HTTP/MQTT image bodies go to it.")
    preprocess: Optional[PreprocessSpec] = Field(None, description="Single-graph models: how the decoded image becomes the graph input's tensor (vision/preprocess.py). Pipelines declare it per step.")
    graph_input: Optional[str] = Field(None, description="The graph input the tensor feeds; default: the graph's one input not listed in inputs.")
    reshape: Optional[List[int]] = Field(None, description="Reshape the pre-processed tensor (no batch axis) to these dims, e.g. [64] for a graph taking 8x8 grey pixels flat.")
    to_original: List[OriginalCoords] = Field(default_factory=list, description="Outputs in tensor pixels mapped back to the client image's pixels.")
    detect: Optional[DetectSpec] = Field(None, description="A detector: decode its raw output into boxes (original pixels), scores, classes (+ labels), with NMS (runtime/detect_post.py); one image per request.")


def resolve_image_body(inputs: dict, name: str, batched: bool) -> dict:
    """``{IMAGE_BODY: [bytes]}`` (an image body) -> ``{name: array}`` shaped as a BYTES
    input of dims [1] ((1, 1) with a batch axis); other inputs are returned as they are."""
    body = inputs.get(IMAGE_BODY)
    if body is None or len(inputs) != 1:
        return inputs
    return {name: body.reshape((1, 1) if batched else (1,))}


_MODES = {3: "RGB", 1: "L", 4: "RGBA", 2: "LA"}
_SAVE = {"jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}


def warmup_image(limits: ImageLimits, rng: Optional[np.random.Generator] = None) -> bytes:
    """An image the model's own limits accept (format, channels, size): mid-grey for the
    warm-up (the whole decode -> pre-process -> graph path once), or noise drawn from ``rng``
    for OTA golden inputs (ota/golden.py)."""
    from PIL import Image

    side = max(1, min(64, limits.max_side, int(limits.max_pixels ** 0.5)))
    fmt = _SAVE[limits.formats[0]]
    channels = [c for c in (3, 1, 4, 2) if c in limits.channels and not (fmt == "JPEG" and c in (2, 4))]
    mode = _MODES[channels[0] if channels else 3]
    if rng is None:
        im = Image.new(mode, (side, side), (128,) * len(mode))
    else:
        im = Image.frombytes(mode, (side, side), rng.integers(0, 256, side * side * len(mode), dtype=np.uint8).tobytes())
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


class ImageModel:
    """The image input of one loaded model (LoadedModel holds one when model.yaml has ``image:``)."""

    def __init__(self, spec: ImageSpec, graph_inputs: list, declared: List[str], graph_outputs: list, batched: bool, where: str,
                 labels: Optional[List[str]] = None) -> None:
        if spec.preprocess is None:
            raise ModelLoadError(f"{where}: image.preprocess is needed for a single-graph image model")
        self.spec = spec
        self.name = spec.input
        self.batched = batched
        free = [g for g in graph_inputs if g.name not in declared]
        if spec.graph_input is not None:
            free = [g for g in graph_inputs if g.name == spec.graph_input]
            if not free:
                raise ModelLoadError(f"{where}: image.graph_input '{spec.graph_input}' is not in the graph")
        if len(free) != 1:
            raise ModelLoadError(f"{where}: name the graph input the image feeds (image.graph_input); candidates {[g.name for g in free]}")
        g = free[0]
        self.graph_input = g.name
        if _GRAPH_TYPES.get(g.type) != spec.preprocess.dtype:
            raise ModelLoadError(f"{where}: graph input '{g.name}' is {g.type}; image.preprocess.dtype is {spec.preprocess.dtype}")
        outputs = [o.name for o in graph_outputs]
        for c in spec.to_original:
            if c.output not in outputs:
                raise ModelLoadError(f"{where}: image.to_original names '{c.output}', which the graph does not produce")
        self.detect = None
        if spec.detect is not None:
            if any(c.output == spec.detect.output for c in spec.to_original):
                raise ModelLoadError(f"{where}: image.to_original names '{spec.detect.output}', which image.detect decodes and maps itself")
            self.detect = DetectPost(spec.detect, graph_outputs, labels, batched, where)

    def graph_inputs(self) -> set:
        return {self.graph_input}

    def resolve(self, req):
        """An image body as the image input, in the request itself: the cache keys it as that."""
        req.inputs = resolve_image_body(req.inputs, self.name, self.batched)
        if IMAGE_BODY in req.inputs:
            raise InvalidInput(f"an image body is the whole request; model '{req.model}' takes it as input '{self.name}'")
        return req

    # --- event loop ----------------------------------------------------------

    def check(self, inputs: dict) -> None:
        """Encoded sizes against max_bytes (and a detector's one image), before the request is queued (O(rows))."""
        limit = self.spec.max_bytes
        if self.detect is not None and inputs[self.name].size != 1:
            raise InvalidInput(f"input '{self.name}': {inputs[self.name].size} images; a detector answers one image per request "
                               "(the number of objects differs per image): send them as separate requests")
        for i, b in enumerate(inputs[self.name].reshape(-1)):
            if not isinstance(b, (bytes, bytearray)):
                raise InvalidInput(f"input '{self.name}': element {i} is not bytes; send the encoded image as BYTES data")
            if len(b) > limit:
                raise ImageTooLarge(f"input '{self.name}': image {i} is {len(b)} bytes, more than this model's max_bytes {limit}",
                                    limit="max_bytes", value=len(b), max=limit)

    # --- batcher thread ------------------------------------------------------

    def tensors(self, encoded: np.ndarray):
        """One request's images -> (stacked tensor, transforms). Raises the image errors."""
        rows, transforms = [], []
        for b in encoded.reshape(-1):
            x, t = preprocess(decode(b, self.spec), self.spec.preprocess)
            if self.spec.reshape is not None:
                try:
                    x = x.reshape(self.spec.reshape)
                except ValueError:
                    raise InvalidInput(f"input '{self.name}': the pre-processed image {list(x.shape)} cannot be reshaped to {self.spec.reshape}") from None
            rows.append(x)
            transforms.append(t)
        if any(r.shape != rows[0].shape for r in rows):
            raise InvalidInput(f"input '{self.name}': the images of one request pre-process to different shapes "
                               f"{sorted({tuple(r.shape) for r in rows})}; send them as separate requests")
        return (np.stack(rows) if self.batched else rows[0]), transforms

    def run_batch(self, batch: list, run: Callable[[list], list]) -> list:
        """Decode and pre-process each request, run those that decoded (grouped by tensor
        shape) through ``run`` (the model's tensor path), map coordinates back; a refused
        image answers its own request only."""
        from .session import Prepared

        results: list = [None] * len(batch)
        groups: dict = {}
        for i, p in enumerate(batch):
            try:
                tensor, transforms = self.tensors(p.feeds[self.name])
            except EdgeError as e:
                results[i] = e
                continue
            feeds = {k: v for k, v in p.feeds.items() if k != self.name}
            feeds[self.graph_input] = tensor
            wanted = p.outputs if self.detect is None else self.detect.graph_wanted(p.outputs)
            groups.setdefault(tensor.shape, []).append((i, Prepared(feeds, p.rows, wanted), transforms, p.outputs))
        for members in groups.values():
            try:
                outs = run([m[1] for m in members])
            except EdgeError as e:
                # This group's graph run failed (e.g. a shape the graph refuses): its requests get
                # the error; the other groups keep their answers. Raised, it made the batcher run
                # every request again alone, decoding each image a second time.
                for m in members:
                    results[m[0]] = e
                continue
            for (i, _, transforms, asked), out in zip(members, outs):
                try:
                    results[i] = self._postprocess(out, transforms, asked)
                except EdgeError as e:
                    results[i] = e
        return results

    def _postprocess(self, out: dict, transforms: list, asked: Optional[List[str]]) -> dict:
        for c in self.spec.to_original:
            arr = out.get(c.output)
            if arr is None:  # not asked for
                continue
            rows = arr if self.batched else arr[None]
            mapped = np.empty_like(rows)
            for r, t in enumerate(transforms):
                pts = rows[r].reshape(rows[r].shape[:-1] + (-1, 2))
                mapped[r] = t.to_original(pts).reshape(rows[r].shape)
            out[c.output] = mapped if self.batched else mapped[0]
        if self.detect is not None:
            return self.detect.apply(out, transforms, asked)
        return out

    def warmup_bytes(self) -> bytes:
        return warmup_image(self.spec)
