"""A pipeline version as one model: what every other part of the daemon sees.

``PipelineModel`` has the face of runtime/session.py's ``LoadedModel`` (name,
version, spec, digest, provider, artifact, prepare, warmup, metadata, close),
so routing, the cache, metrics, OTA and canaries treat a pipeline as any
model. Its ``digest`` covers model.yaml and every step's graph, so the cache
never serves one version's answer for another. ``prepare`` only checks the
request's shape (cheap, on the event loop); decoding happens off the loop, in
``start`` (runner.py calls it on its pool).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from ..errors import ImageTooLarge, InvalidInput, ModelLoadError
from ..runtime.artifacts import ArtifactChoice, check_artifact_files
from ..runtime.image_model import resolve_image_body
from ..runtime.model_spec import ModelSpec, TensorSpec, kserve_tensors, load_model_spec
from ..runtime.session import Prepared
from ..types import IMAGE_BODY, InferRequest
from .step import STEP_CPU, Item, StepModel

# What the last op's answer gives, by output name (model.yaml outputs name a subset).
ANSWER_OUTPUTS = {"text": "BYTES", "boxes": "FP32", "scores": "FP32"}


class PipelineModel:
    def __init__(self, name: str, version: str, version_dir: Path, runtime, state_dir: Path, spec: ModelSpec | None = None) -> None:
        self.name = name
        self.version = version
        self.dir = version_dir
        self.spec = spec if spec is not None else load_model_spec(version_dir / "model.yaml")
        if self.spec.name is not None and self.spec.name != name:
            raise ModelLoadError(f"{version_dir}/model.yaml: name '{self.spec.name}' does not match directory '{name}'")
        if self.spec.pipeline is None:
            raise ModelLoadError(f"{version_dir}/model.yaml: no pipeline")
        check_artifact_files(self.spec, version_dir)
        for t in self.spec.outputs:
            if ANSWER_OUTPUTS.get(t.name) != t.datatype:
                raise ModelLoadError(f"{version_dir}/model.yaml: pipeline output '{t.name}' ({t.datatype}) is not one it gives "
                                     f"(it gives {', '.join(f'{k} {v}' for k, v in ANSWER_OUTPUTS.items())})")
        self.max_batch = 0
        self.labels = None
        self.text = None
        self.input = self.spec.inputs[0]
        self.steps = [StepModel(name, version, version_dir, s, self.spec, runtime, state_dir) for s in self.spec.pipeline]
        h = hashlib.sha256((version_dir / "model.yaml").read_bytes())
        for s in self.steps:
            h.update(s.digest.encode())
        self.digest = h.hexdigest()
        self.provider = self.steps[0].provider
        self.provider_fallback = [f for s in self.steps for f in s.provider_fallback]
        files = "+".join(s.step.model for s in self.steps)
        self.artifact = ArtifactChoice(files, self.spec.precision, "pipeline: every step's graph")
        self.output_specs: list[TensorSpec] = list(self.spec.outputs)
        self.output_names = [t.name for t in self.output_specs]
        self.limits = _image_limits(self.spec)
        self._decode_seconds = STEP_CPU.labels(name, version, "decode", "pre")
        self.text_score = float(self.spec.pipeline[-1].params.get("text_score", 0.5))

    # --- the request path -----------------------------------------------------

    def prepare(self, req: InferRequest) -> Prepared:
        """Check the request: one BYTES element (the encoded image) under the input's name."""
        inputs = req.inputs
        name = self.input.name
        if IMAGE_BODY in inputs:  # an image body (HTTP/MQTT): the image input, in the request itself, so the cache keys it as that
            inputs = req.inputs = resolve_image_body(inputs, name, False)
        arr = inputs.get(name)
        if arr is None or len(inputs) != 1:
            raise InvalidInput(f"model '{self.name}' takes one input '{name}' (the encoded image); got {sorted(inputs)[:8]}")
        if arr.dtype.kind != "O" or arr.size != 1:
            got = "BYTES" if arr.dtype.kind == "O" else arr.dtype.name
            raise InvalidInput(f"input '{name}': {got} of shape {list(arr.shape)}, model expects one BYTES element (the encoded image)")
        data = arr.reshape(-1)[0]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"input '{name}': the encoded image must be bytes, got {type(data).__name__}")
        n = len(data)
        if n > self.limits.max_bytes:  # the bytes received, before anything is allocated for them
            raise ImageTooLarge(f"the image is {n} bytes, more than this model's max_bytes {self.limits.max_bytes}",
                                limit="max_bytes", value=n, max=self.limits.max_bytes)
        outputs = req.outputs
        if outputs is not None:
            for o in outputs:
                if o not in self.output_names:
                    raise InvalidInput(f"model '{self.name}' has no output '{o}' (has {self.output_names})")
        return Prepared({name: arr}, 1, outputs)

    def start(self, data) -> Item:
        """Off the event loop: decode (with the model's limits) and prepare the
        first step's input. Raises the image errors (invalid_image, size)."""
        from ..vision.image import decode

        t0 = time.thread_time()
        try:
            img = decode(bytes(data), self.limits)
            f, x = self.steps[0].op.prepare(img)
            return Item(x, f)
        finally:
            self._decode_seconds.inc(time.thread_time() - t0)

    def answer(self, regions, read: list, wanted: list | None) -> dict:
        """The outputs from detection's regions and the last step's (text, score) per crop,
        in reading order, without the texts RapidOCR drops (score under text_score)."""
        keep = [i for i, (_, s) in enumerate(read) if s >= self.text_score]
        outs = {
            "text": np.array([read[i][0].encode() for i in keep], dtype=object),
            "boxes": np.asarray(regions.boxes, dtype=np.float32).reshape(-1, 4, 2)[keep],
            "scores": np.array([read[i][1] for i in keep], dtype=np.float32),
        }
        return {n: outs[n] for n in (self.output_names if wanted is None else wanted)}

    def run_sync(self, inputs: dict) -> dict:
        """One image through every step on this thread: warm-up and the OTA golden check."""
        p = self.prepare(InferRequest(model=self.name, inputs=inputs))
        regions = self.steps[0].run_all([self.start(p.feeds[self.input.name].reshape(-1)[0])])[0]
        items = regions.crops
        for s in self.steps[1:]:
            items = s.run_all(s.op.items(items)) if items else []
        return self.answer(regions, items, None)

    # --- loading --------------------------------------------------------------

    def warmup(self) -> float:
        """A drawn text image through every step, so the first request finds every graph warm."""
        import cv2

        t0 = time.perf_counter()
        img = np.full((96, 320, 3), 255, np.uint8)
        cv2.putText(img, "warm up 123", (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
        ok, png = cv2.imencode(".png", img)
        self.run_sync({self.input.name: np.array([png.tobytes()], dtype=object)})
        return time.perf_counter() - t0

    def metadata(self) -> dict:
        """KServe v2 model metadata; the parameters name every step's graph."""
        return {
            "name": self.name, "versions": [self.version], "platform": "edge_agent_pipeline",
            "inputs": kserve_tensors(self.spec.inputs, False), "outputs": kserve_tensors(self.output_specs, False),
            "parameters": {
                "provider": self.provider,
                "provider_fallback": self.provider_fallback,
                "max_batch_size": 0,
                "precision": self.artifact.precision,
                "digest": self.digest,
                "artifact": self.artifact.file,
                "steps": [{"name": s.step.name, "model": s.step.model, "op": s.step.op, "digest": s.digest,
                           "max_batch_size": s.max_batch, "instances": s.step.batching.instances} for s in self.steps],
            },
        }

    def close(self) -> None:
        for s in self.steps:
            s.close()


def _image_limits(spec: ModelSpec):
    """The decoder's limits from model.yaml ``image:`` (vision/image.py)."""
    from ..vision.image import ImageLimits

    given = getattr(spec, "image", None)
    if given is None:
        return ImageLimits()
    return given if isinstance(given, ImageLimits) else ImageLimits(**dict(given))


def open_version(name: str, version: str, version_dir: Path, runtime, state_dir: Path):
    """A version folder as the daemon serves it: a PipelineModel when its model.yaml
    declares ``pipeline:``, else a runtime/session.py LoadedModel."""
    spec = load_model_spec(version_dir / "model.yaml")
    if spec.pipeline is not None:
        return PipelineModel(name, version, version_dir, runtime, state_dir, spec)
    from ..runtime.session import LoadedModel

    return LoadedModel(name, version, version_dir, runtime, state_dir)
