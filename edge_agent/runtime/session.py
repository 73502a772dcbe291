"""One model version loaded into an ONNX Runtime session.

``LoadedModel`` owns the session, checks model.yaml against the graph, warms
up, validates a request's tensors (before batching, so one bad request never
fails its batch), and runs a batch: concatenate, ``session.run``, post-process,
split back per request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..compat import slotted_dataclass
from ..config import RuntimeConfig
from ..digests import sha256_file
from ..errors import InferenceFailed, InvalidInput, ModelLoadError
from ..types import IMAGE_BODY, V2_TO_NP, InferRequest
from .artifacts import (ArtifactChoice, check_artifact_files, check_artifact_signatures, choose_artifact, serving_providers,
                        session_signature)
from .cpu import this_cpu
from .image_model import ImageModel
from .input_limits import input_limits
from .model_spec import ModelSpec, TensorSpec, kserve_tensors, load_model_spec
from .ortsession import ORT_TYPES, intra_op_threads, open_session  # noqa: F401 - intra_op_threads: re-exported

log = logging.getLogger("edge_agent.runtime")


@slotted_dataclass
class Prepared:
    """A validated request, ready for the batcher."""

    feeds: dict[str, np.ndarray]
    rows: int
    outputs: list[str] | None


def _non_finite(name: str, arr: np.ndarray) -> InvalidInput:
    """The refusal of an input holding NaN or ±Inf, naming the first bad
    element's index (row-major) so a client can find the faulty sensor."""
    flat = int(np.flatnonzero(~np.isfinite(arr))[0])
    index = [int(i) for i in np.unravel_index(flat, arr.shape)]
    value = float(arr.reshape(-1)[flat])
    return InvalidInput(
        f"input '{name}': non-finite value {value} at index {index} (model.yaml non_finite_inputs: reject)",
        input=name, index=index,
    )


class LoadedModel:
    def __init__(self, name: str, version: str, version_dir: Path, runtime: RuntimeConfig, state_dir: Path) -> None:
        self.name = name
        self.version = version
        self.dir = version_dir
        self.spec: ModelSpec = load_model_spec(version_dir / "model.yaml")
        if self.spec.name is not None and self.spec.name != name:
            raise ModelLoadError(f"{version_dir}/model.yaml: name '{self.spec.name}' does not match directory '{name}'")
        check_artifact_files(self.spec, version_dir)
        self.max_batch = self.spec.max_batch_size
        self.labels = self.spec.label_list(version_dir)
        self.artifact, self.session, self.provider = self._load_artifact(runtime, state_dir)
        self.text = None
        if self.spec.text is not None:
            from .text import TextPipeline

            self.text = TextPipeline(self.spec.text, version_dir, [i.name for i in self.session.get_inputs()], model=name)
        self.image = None
        if self.spec.image is not None:  # an encoded image in, decoded on the batcher thread (image_model.py)
            self.image = ImageModel(self.spec.image, self.session.get_inputs(), [t.name for t in self.spec.inputs],
                                    self.session.get_outputs(), self.max_batch > 0, f"{version_dir}/model.yaml", self.labels)
        self._check_signature()
        if self.spec.artifacts is not None:
            check_artifact_signatures(self.spec, version_dir, (self.artifact.file, session_signature(self.session)))
        self._graph_outputs = [o.name for o in self.session.get_outputs()]
        self.output_specs = self._served_outputs()
        self.output_names = [o.name for o in self.output_specs]
        self._inputs = {t.name: (V2_TO_NP[t.datatype], t) for t in self.spec.inputs}
        # Float inputs that must hold finite values only (model.yaml non_finite_inputs).
        # (A text model's feeds are its tokens, never a served float input.)
        self._finite = frozenset(
            t.name for t in self.spec.inputs
            if self.spec.non_finite_inputs == "reject" and V2_TO_NP[t.datatype].kind == "f" and self.spec.text is None
        )
        self._limits = None  # model.yaml limits (input_limits.py), from the end of warmup(): its batches may be larger

    # --- loading -------------------------------------------------------------

    def _load_artifact(self, runtime: RuntimeConfig, state_dir: Path) -> tuple[ArtifactChoice, ort.InferenceSession, str]:
        """Pick the artifact for this CPU and the configured providers (model.yaml ``artifacts``) and open it.

        An artifact made for a provider (a QDQ graph for TensorRT) that then
        does not bind is not served on the CPU: the choice is made again
        without that provider."""
        providers = serving_providers(runtime)
        while True:
            choice = choose_artifact(self.spec, this_cpu(), providers)
            path = self.dir / choice.file
            self.digest = sha256_file(path)
            session, provider = self._create_session(path, runtime, state_dir, choice.precision)
            if choice.provider is None or provider == choice.provider:
                break
            log.error("model %s/%s: artifact %s is for %s but the session bound %s; choosing again without %s",
                      self.name, self.version, choice.file, choice.provider, provider, choice.provider)
            providers = [p for p in providers if p != choice.provider]
        if self.spec.artifacts is not None:
            log.info("model %s/%s: serving artifact %s (%s)", self.name, self.version, choice.file, choice.reason)
        return choice, session, provider

    def _create_session(self, path: Path, runtime: RuntimeConfig, state_dir: Path, precision: str) -> tuple[ort.InferenceSession, str]:
        sess, provider, fallbacks = open_session(path, self.spec, runtime, state_dir, self.digest, precision, self.name, self.version)
        self.provider_fallback = [f.as_dict() for f in fallbacks]
        return sess, provider

    def _check_signature(self) -> None:
        """model.yaml must describe the graph it sits beside."""
        where = f"{self.dir}/model.yaml"
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        if self.text is not None:
            spec_in = self.spec.input(self.spec.text.input)
            if spec_in is None or spec_in.datatype != "BYTES":
                raise ModelLoadError(f"{where}: text models need a BYTES input named '{self.spec.text.input}'")
            if self.spec.text.graph_output not in {o.name for o in self.session.get_outputs()}:
                raise ModelLoadError(f"{where}: graph has no output '{self.spec.text.graph_output}'")
            return
        batch = 1 if self.max_batch > 0 else 0
        fed = self.image.graph_inputs() if self.image is not None else set()
        for t in self.spec.inputs:
            if self.image is not None and t.name == self.image.name:
                continue
            g = graph_inputs.get(t.name)
            if g is None:
                raise ModelLoadError(f"{where}: input '{t.name}' is not in the graph (graph has {sorted(graph_inputs)})")
            self._check_tensor(where, "input", t, g, batch)
        extra = set(graph_inputs) - {t.name for t in self.spec.inputs} - fed
        if extra:
            raise ModelLoadError(f"{where}: graph inputs {sorted(extra)} are not described")
        graph_outputs = {o.name: o for o in self.session.get_outputs()}
        derived = self._derived_output_names()
        for t in self.spec.outputs:
            g = graph_outputs.get(t.name)
            if g is None:
                if t.name in derived:
                    continue
                raise ModelLoadError(f"{where}: output '{t.name}' is not in the graph (graph has {sorted(graph_outputs)})")
            self._check_tensor(where, "output", t, g, batch)
        for p in self.spec.postprocess:
            if p.output not in graph_outputs:
                raise ModelLoadError(f"{where}: postprocess reads '{p.output}', which the graph does not produce")

    def _check_tensor(self, where: str, kind: str, t: TensorSpec, g, batch: int) -> None:
        gtype = ORT_TYPES.get(g.type)
        if gtype != t.datatype:
            raise ModelLoadError(f"{where}: {kind} '{t.name}' is {t.datatype}, the graph says {gtype or g.type}")
        gshape = list(g.shape)
        if len(gshape) != len(t.dims) + batch:
            raise ModelLoadError(f"{where}: {kind} '{t.name}' has {len(t.dims)} dims (+{batch} batch), graph rank is {len(gshape)}")
        if batch and isinstance(gshape[0], int) and gshape[0] > 0 and self.max_batch > 1:
            raise ModelLoadError(f"{where}: max_batch_size {self.max_batch} but the graph's first axis of '{t.name}' is fixed at {gshape[0]}")
        for i, (d, gd) in enumerate(zip(t.dims, gshape[batch:])):
            if isinstance(gd, int) and gd > 0 and d != -1 and d != gd:
                raise ModelLoadError(f"{where}: {kind} '{t.name}' dim {i} is {d}, graph says {gd}")

    def _derived_output_names(self) -> set[str]:
        names = set()
        for p in self.spec.postprocess:
            if p.op == "softmax":
                names.add(p.name or p.output)
            else:
                prefix = p.name or f"{p.output}_topk"
                names |= {f"{prefix}_indices", f"{prefix}_values"}
                if self.labels:
                    names.add(f"{prefix}_labels")
        if self.image is not None and self.image.detect is not None:
            names |= self.image.detect.names
        return names

    def _served_outputs(self) -> list[TensorSpec]:
        specs = list(self.spec.outputs)
        have = {t.name for t in specs}
        for p in self.spec.postprocess:
            if p.op != "topk":
                continue
            prefix = p.name or f"{p.output}_topk"
            extra = [TensorSpec(name=f"{prefix}_indices", datatype="INT64", dims=[p.k]),
                     TensorSpec(name=f"{prefix}_values", datatype="FP32", dims=[p.k])]
            if self.labels:
                extra.append(TensorSpec(name=f"{prefix}_labels", datatype="BYTES", dims=[p.k]))
            specs += [t for t in extra if t.name not in have]
        if self.image is not None and self.image.detect is not None:
            specs = self.image.detect.serve(specs)
        return specs

    def warmup(self) -> float:
        """Run the configured warm-up batches; returns seconds taken."""
        t0 = time.perf_counter()
        w = self.spec.warmup
        rng = np.random.default_rng(0)
        sizes = w.batch_sizes if self.max_batch > 0 else [1]
        for n in sizes:
            n = max(1, min(n, self.max_batch or 1))
            per = 1 if self.image is not None and self.image.detect is not None else n  # a detector: n requests of one image
            inputs = {}
            for t in self.spec.inputs:
                dims = [d if d > 0 else 8 for d in t.dims]
                shape = ([per] if self.max_batch > 0 else []) + dims
                if t.datatype == "BYTES":
                    image = self.image is not None and t.name == self.image.name
                    arr = np.full(shape, self.image.warmup_bytes() if image else w.text.encode(), dtype=object)
                elif w.fill == "random":
                    arr = rng.random(shape).astype(V2_TO_NP[t.datatype])
                else:
                    arr = np.full(shape, 1 if w.fill == "ones" else 0, dtype=V2_TO_NP[t.datatype])
                inputs[t.name] = arr
            p = self.prepare(InferRequest(model=self.name, inputs=inputs))
            for out in self.run_batch([p] * (n // per)):
                if isinstance(out, Exception):  # an image model returns a refused image's error in its results
                    raise ModelLoadError(f"model {self.name}/{self.version}: warm-up failed: {out}")
        self._limits = input_limits(self.spec, self.name, self.max_batch > 0)  # clients' requests only
        return time.perf_counter() - t0

    # --- serving -------------------------------------------------------------

    def prepare(self, req: InferRequest) -> Prepared:
        """Validate a request against the served signature (raises InvalidInput)."""
        inputs = req.inputs
        specs = self._inputs
        if len(inputs) != len(specs) or any(n not in specs for n in inputs):
            if IMAGE_BODY in inputs:
                if self.image is None:
                    raise InvalidInput(f"model '{self.name}' takes no image (it has no model.yaml image:); it takes inputs {sorted(specs)}")
                return self.prepare(self.image.resolve(req))
            missing = sorted(set(specs) - set(inputs))
            # A client may send thousands of names: the message (which is
            # logged) names the first few.
            unknown = sorted(set(inputs) - set(specs))
            if len(unknown) > 8:
                unknown = unknown[:8] + [f"... {len(unknown) - 8} more"]
            raise InvalidInput(
                f"model '{self.name}' takes inputs {sorted(specs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        rows = 1
        batched = self.max_batch > 0
        for name, arr in inputs.items():
            dtype, spec = specs[name]
            if arr.dtype != dtype:
                got = "BYTES" if arr.dtype.kind == "O" else arr.dtype.name
                raise InvalidInput(f"input '{name}': datatype {got}, model expects {spec.datatype}")
            shape = arr.shape
            dims = spec.dims
            if len(shape) != len(dims) + batched:
                raise InvalidInput(f"input '{name}': shape {list(shape)}, model expects {self._shape_str(spec)}")
            if batched:
                n = shape[0]
                if n < 1 or n > self.max_batch:
                    raise InvalidInput(f"input '{name}': batch of {n} rows, model takes 1..{self.max_batch}")
                if rows != 1 and n != rows:
                    raise InvalidInput(f"inputs disagree on the batch size ({rows} vs {n})")
                rows = n
                shape = shape[1:]
            for d, want in zip(shape, dims):
                if want != -1 and d != want:
                    raise InvalidInput(f"input '{name}': shape {list(arr.shape)}, model expects {self._shape_str(spec)}")
        outputs = req.outputs
        if outputs is not None:
            for o in outputs:
                if o not in self.output_names:
                    raise InvalidInput(f"model '{self.name}' has no output '{o}' (has {self.output_names})")
        limits = self._limits
        if limits is not None:
            limits.check(inputs)
        if self.image is not None:
            self.image.check(inputs)
        if self.text is not None:
            feeds = self.text.prepare(inputs[self.spec.text.input], inputs[self.spec.text.input].shape)
            if limits is not None:
                limits.check_tokens(feeds)
        else:
            feeds = inputs
        return Prepared(feeds, rows, outputs)

    def _shape_str(self, spec: TensorSpec) -> str:
        return str((["N"] if self.max_batch > 0 else []) + spec.dims)

    def run_batch(self, batch: list[Prepared]) -> list[dict[str, np.ndarray]]:
        """Run requests as one batch; returns each request's outputs (an image model: or
        the error of a request whose image was refused).

        Runs on a batcher thread (ORT releases the GIL during run)."""
        if self.image is not None:
            return self.image.run_batch(batch, self._run_tensors)
        if self._finite:
            refused = self._non_finite_rows(batch)
            if refused:
                kept = [p for i, p in enumerate(batch) if i not in refused]
                outs = iter(self._run_tensors(kept) if kept else ())
                return [refused[i] if i in refused else next(outs) for i in range(len(batch))]
        return self._run_tensors(batch)

    def _non_finite_rows(self, batch: list[Prepared]) -> dict:
        """The requests holding NaN or ±Inf in an input model.yaml says must be finite
        (non_finite_inputs: reject), by their index in ``batch``, each with its refusal.

        Here on the batcher thread, one vectorised pass per input over the whole batch, not
        in ``prepare`` on the event loop: there the check cost the loop 3-5 µs a request
        (docs/BENCHMARKS.md), a seventh of what it spends on one. Only a batch holding a bad
        value is looked at request by request."""
        refused: dict = {}
        for name in self._finite:
            arrs = [p.feeds[name] for p in batch]
            if np.isfinite(arrs[0] if len(arrs) == 1 else np.concatenate(arrs)).all():
                continue
            for i, arr in enumerate(arrs):
                if i not in refused and not np.isfinite(arr).all():
                    refused[i] = _non_finite(name, arr)
        return refused

    def _run_tensors(self, batch: list[Prepared]) -> list[dict[str, np.ndarray]]:
        text = self.text
        if text is not None:
            # Token sequences differ in length: pad to the longest in the batch
            # (mask 0), so each row pools exactly as it would alone.
            feeds = text.pad_and_concat([p.feeds for p in batch])
        elif len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {k: np.concatenate([p.feeds[k] for p in batch]) for k in batch[0].feeds}
        try:
            raw = self.session.run(self._graph_outputs, text.graph_feeds(feeds) if text is not None else feeds)
        except Exception as e:  # noqa: BLE001 - ORT raises untyped errors
            raise InferenceFailed(f"model '{self.name}' version {self.version}: {e}") from None
        outs = dict(zip(self._graph_outputs, raw))
        if text is not None:
            outs = {self.spec.text.output: text.pool(outs, feeds)}
        if self.spec.postprocess:
            outs = self._postprocess(outs)
        if len(batch) == 1:
            return [self._select(outs, batch[0].outputs)]
        results = []
        start = 0
        for p in batch:
            end = start + p.rows
            results.append(self._select({k: v[start:end] for k, v in outs.items()}, p.outputs))
            start = end
        return results

    def _select(self, outs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, np.ndarray]:
        names = self.output_names if wanted is None else wanted
        return {n: outs[n] for n in names}

    def _postprocess(self, outs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for p in self.spec.postprocess:
            x = outs[p.output]
            if p.op == "softmax":
                e = np.exp(x - x.max(axis=-1, keepdims=True))
                outs[p.name or p.output] = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
            else:
                k = min(p.k, x.shape[-1])
                idx = np.argsort(-x, axis=-1, kind="stable")[..., :k]
                prefix = p.name or f"{p.output}_topk"
                outs[f"{prefix}_indices"] = idx.astype(np.int64)
                outs[f"{prefix}_values"] = np.take_along_axis(x, idx, axis=-1).astype(np.float32)
                if self.labels:
                    lab = np.array([lbl.encode() for lbl in self.labels], dtype=object)
                    outs[f"{prefix}_labels"] = lab[idx]
        return outs

    def metadata(self) -> dict:
        """KServe v2 model metadata, plus the bound provider."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": kserve_tensors(self.spec.inputs, self.max_batch > 0),
            "outputs": kserve_tensors(self.output_specs, self.max_batch > 0),
            "parameters": {
                "provider": self.provider,
                "providers": self.session.get_providers(),
                "provider_fallback": self.provider_fallback,
                "max_batch_size": self.max_batch,
                "precision": self.artifact.precision,
                "digest": self.digest,
                "artifact": self.artifact.file,
                "artifact_target": self.artifact.target,
                "artifact_reason": self.artifact.reason,
            },
        }

    def close(self) -> None:
        # ORT frees the session when the last reference goes.
        self.session = None  # type: ignore[assignment]
