"""Golden cases: deterministic inputs, expected outputs, tolerant comparison.

They live in an artifact ``golden.npz`` (bound to the signed manifest by
sha256) rather than inline JSON: an image model's input is 10^5+ floats, npz
keeps exact binary values, and it loads with ``allow_pickle=False`` (BYTES are
stored as fixed-width ``S`` arrays, never pickled objects).

A runner is ``run(inputs) -> outputs`` over client-facing tensors. Raw ONNX
Runtime is the default for plain models; text models must be given the
daemon's text pipeline, because their client input is a string, not tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import numpy as np

from ..runtime.model_spec import DEFAULT_ARTIFACT, ModelSpec, np_dtype
from .errors import GoldenMismatch, GoldenRunnerMissing, ManifestInvalid
from .manifest import GoldenSpec, Tolerance

GoldenRunner = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
RunnerFactory = Callable[[Path, ModelSpec], GoldenRunner]

GOLDEN_TEXTS = [b"the quick brown fox jumps over the lazy dog", b"edge inference", b"hello world"]
SEED = 20240601
VARIABLE_DIM = 4


def make_inputs(spec: ModelSpec, cases: int = 2, seed: int = SEED) -> list[dict[str, np.ndarray]]:
    """Inputs derived only from model.yaml and a fixed seed, so publishes are reproducible."""
    rng = np.random.default_rng(seed)
    one = spec.image is not None and spec.image.detect is not None  # a detector answers one image per request
    batch = [1 if one else min(2, spec.max_batch_size)] if spec.max_batch_size > 0 else []
    out = []
    for _ in range(cases):
        case = {}
        for t in spec.inputs:
            shape = batch + [VARIABLE_DIM if d == -1 else d for d in t.dims]
            if spec.image is not None and t.name == spec.image.input:
                case[t.name] = _images(rng, spec, shape)
            else:
                case[t.name] = _random(rng, t.datatype, shape)
        out.append(case)
    return out


def _images(rng: np.random.Generator, spec: ModelSpec, shape: list[int]) -> np.ndarray:
    """An image model's input: encoded noise images its limits accept (random bytes would all
    be refused with invalid_image, and golden outputs would check nothing)."""
    from ..runtime.image_model import warmup_image

    out = np.empty(int(np.prod(shape)), dtype=object)
    for i in range(out.size):
        out[i] = warmup_image(spec.image, rng)
    return out.reshape(shape)


def _random(rng: np.random.Generator, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        n = int(np.prod(shape)) if shape else 1
        picks = [GOLDEN_TEXTS[i] for i in rng.integers(0, len(GOLDEN_TEXTS), n)]
        return np.array(picks, dtype=object).reshape(shape)
    dt = np_dtype(datatype)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        # Small non-negative ints: safe as indices (token ids, classes) too.
        return rng.integers(0, 10, shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def default_tolerance(precision: str) -> Tolerance:
    if precision == "fp16":
        return Tolerance(kind="allclose", atol=1e-2, rtol=1e-2)
    if precision.startswith("int8"):
        # Quantized graphs may run on different kernels (TensorRT int8 vs CPU):
        # compare direction, not digits.
        return Tolerance(kind="cosine", min_cosine=0.99)
    return Tolerance(kind="allclose", atol=1e-4, rtol=1e-3)


class OrtRunner:
    """Raw graph on the CPU execution provider: the reference every device can reproduce.

    ``artifact`` is the ONNX file of the version to run (model.yaml artifacts):
    validation runs the one the device will serve."""

    def __init__(self, version_dir: Path, spec: ModelSpec, artifact: str = DEFAULT_ARTIFACT) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(version_dir / artifact), opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: (v.astype(str) if v.dtype == object else v) for k, v in inputs.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))


def default_runner_factory(version_dir: Path, spec: ModelSpec, artifact: str = DEFAULT_ARTIFACT) -> GoldenRunner:
    if spec.text is not None or spec.image is not None:
        raise GoldenRunnerMissing(
            f"{'text' if spec.text is not None else 'image'} model: golden outputs need the daemon's "
            f"{'text pipeline' if spec.text is not None else 'decoding and pre-processing'}; pass a runner factory",
            model=spec.name,
        )
    if spec.pipeline is not None:
        raise GoldenRunnerMissing("pipeline: golden outputs are the pipeline's final answers; pass the daemon's runner factory",
                                  model=spec.name)
    return OrtRunner(version_dir, spec, artifact)


def save(path: Path, inputs: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]],
         input_names: list[str], output_names: list[str]) -> None:
    arrays = {}
    for i, (ins, outs) in enumerate(zip(inputs, outputs)):
        for j, name in enumerate(input_names):
            arrays[f"c{i}_in{j}"] = _storable(ins[name])
        for k, name in enumerate(output_names):
            arrays[f"c{i}_out{k}"] = _storable(outs[name])
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _storable(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object or a.dtype.kind == "U":
        return np.array([x if isinstance(x, bytes) else str(x).encode() for x in a.ravel()], dtype="S").reshape(a.shape)
    return a


def load(path: Path, golden: GoldenSpec, input_names: list[str]) -> list[tuple[dict, dict]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ManifestInvalid(f"{path.name}: not a readable npz: {e}") from None
    cases = []
    try:
        for i in range(golden.cases):
            ins = {n: _loaded(data[f"c{i}_in{j}"]) for j, n in enumerate(input_names)}
            outs = {n: _loaded(data[f"c{i}_out{k}"]) for k, n in enumerate(golden.outputs)}
            cases.append((ins, outs))
    except KeyError as e:
        raise ManifestInvalid(f"{path.name}: missing array {e}") from None
    return cases


def _loaded(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "S":
        return np.array([bytes(x) for x in a.ravel()], dtype=object).reshape(a.shape)
    return a


def mismatch(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> str | None:
    """Why ``actual`` is not ``expected`` within ``tol``; None when it is."""
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"shape {list(actual.shape)} != expected {list(expected.shape)}"
    if tol.kind == "exact" or expected.dtype == object or expected.dtype.kind in "biuS":
        if expected.dtype == object:
            actual = np.array([x if isinstance(x, bytes) else str(x).encode() for x in actual.ravel()], dtype=object).reshape(actual.shape)
        return None if np.array_equal(actual, expected) else "values differ (exact comparison)"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not np.all(np.isfinite(a)):
        return "non-finite values"
    if tol.kind == "cosine":
        rows = a.shape[0] if a.ndim > 1 else 1
        a2, e2 = a.reshape(rows, -1), e.reshape(rows, -1)
        denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(e2, axis=1)
        cos = np.where(denom > 0, np.sum(a2 * e2, axis=1) / np.where(denom > 0, denom, 1), 1.0)
        worst = float(cos.min())
        return None if worst >= tol.min_cosine else f"cosine {worst:.6f} < {tol.min_cosine}"
    err = np.abs(a - e)
    if np.all(err <= tol.atol + tol.rtol * np.abs(e)):
        return None
    return f"max abs error {float(err.max()):.3g} exceeds atol {tol.atol} + rtol {tol.rtol}"


def check(runner: GoldenRunner, cases: list[tuple[dict, dict]], golden: GoldenSpec, artifact: str = DEFAULT_ARTIFACT) -> None:
    """Run every case; raise GoldenMismatch naming the first case and output that differs.

    ``artifact`` is the file the runner serves: its tolerance applies (GoldenSpec.tolerance_for)."""
    tolerance = golden.tolerance_for(artifact)
    where = f" ({artifact})" if artifact != DEFAULT_ARTIFACT else ""
    for i, (ins, expected) in enumerate(cases):
        got = runner(ins)
        for name in golden.outputs:
            if name not in got:
                raise GoldenMismatch(f"case {i}: output {name!r} not produced{where}", case=i, output=name)
            why = mismatch(got[name], expected[name], tolerance[name])
            if why:
                raise GoldenMismatch(f"case {i}, output {name!r}{where}: {why}", case=i, output=name)


def pipeline_runner_factory(config: Callable[[], object]) -> RunnerFactory:
    """Runners that go through the daemon's own pipeline (tokenizer + pooling of text
    models; every step of a model.yaml ``pipeline:``, whose golden outputs are its final
    answers), as live requests do; ``config()`` is the daemon's current Config."""
    from ..pipeline.model import open_version
    from ..types import InferRequest

    def factory(version_dir: Path, spec: ModelSpec) -> GoldenRunner:
        cfg = config()
        model = open_version(spec.name or version_dir.parent.name, version_dir.name, version_dir,
                             cfg.runtime, cfg.paths.state_dir)
        if spec.pipeline is not None:
            return model.run_sync

        def run(inputs):
            out = model.run_batch([model.prepare(InferRequest(model=model.name, inputs=inputs))])[0]
            if isinstance(out, Exception):  # an image model answers a refused image with its error
                raise out
            return out
        return run
    return factory
