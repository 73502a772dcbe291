"""Which of a model version's ONNX files this machine serves.

A version may carry several builds of one graph (model.yaml ``artifacts``):
an INT8 build with int8 weights is twice as fast as FP32 on a CPU with VNNI
but loses accuracy on an AVX2 CPU without it, where uint8 weights are exact
and barely faster (runtime/cpu.py). The daemon, the OTA validation and the
benchmarks all pick with ``choose_artifact``, so what OTA validated is what
the daemon serves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ModelLoadError
from .cpu import CpuInfo
from .model_spec import DEFAULT_ARTIFACT, ArtifactSpec, ModelSpec

log = logging.getLogger("edge_agent.runtime")

_ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


@dataclass(frozen=True)
class ArtifactChoice:
    """The file served, the model.yaml entry that chose it (None: the version declares no artifacts) and why."""

    file: str
    precision: str
    reason: str
    entry: Optional[ArtifactSpec] = None

    @property
    def target(self) -> str:
        if self.entry is None:
            return ""
        return self.entry.target or ("default" if self.entry.is_default else "")

    @property
    def provider(self) -> Optional[str]:
        return self.entry.provider if self.entry is not None else None


def serving_providers(runtime, available: Optional[Sequence[str]] = None) -> List[str]:
    """Short names of the providers the daemon offers ONNX Runtime: configured (runtime.providers) and
    present in this ONNX Runtime (``available``, default: ``onnxruntime.get_available_providers()``)."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    return [p for p in runtime.providers if _ORT_PROVIDERS[p] in available]


def choose_artifact(spec: ModelSpec, cpu: CpuInfo, providers: Sequence[str] = ("cpu",)) -> ArtifactChoice:
    """The first artifact whose CPU features ``cpu`` has and whose provider is in ``providers``.

    ``providers`` are short names (serving_providers). The default (last)
    entry always matches, so there is always an answer.
    """
    if spec.artifacts is None:
        return ArtifactChoice(DEFAULT_ARTIFACT, spec.precision, "no artifacts declared")
    passed_over = []
    for a in spec.artifacts:
        missing = [f for f in a.requires if not cpu.has(f)]
        no_provider = a.provider is not None and a.provider not in providers
        if not missing and not no_provider:
            if a.is_default:
                why = "default" + (f" (this CPU/provider does not fit: {'; '.join(passed_over)})" if passed_over else "")
            else:
                why = " and ".join(([f"CPU has {', '.join(a.requires)}"] if a.requires else [])
                                   + ([f"{a.provider} provider configured and available"] if a.provider else []))
            return ArtifactChoice(a.file, a.precision or spec.precision, why, a)
        lacks = ([f"no {', '.join(missing)}"] if missing else []) + ([f"no {a.provider} provider"] if no_provider else [])
        passed_over.append(f"{a.target or a.file}: {' and '.join(lacks)}")
    raise AssertionError("model.yaml validation guarantees a default artifact")


def check_artifact_files(spec: ModelSpec, version_dir: Path) -> None:
    """Every file the version declares is there (a device must not find out only when it picks it)."""
    for f in spec.artifact_files():
        if not (version_dir / f).is_file():
            raise ModelLoadError(f"{version_dir / f}: missing" + (" (declared in model.yaml artifacts)" if spec.artifacts else ""))


Signature = Dict[str, Dict[str, Tuple[str, Tuple]]]


def graph_signature(path: Path) -> Signature:
    """Inputs and outputs of an ONNX file as ONNX Runtime reads them: {kind: {name: (type, shape)}}.

    Graph optimizations are off: only the IO is wanted (about 0.1 s for a 25 MB file).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {e}") from None
    return session_signature(sess)


def session_signature(sess) -> Signature:
    """IO of an open session; symbolic dims (names differ between exporters and quantizers) compare as '?'."""
    return {kind: {t.name: (t.type, tuple(d if isinstance(d, int) else "?" for d in t.shape)) for t in getattr(sess, f"get_{kind}")()}
            for kind in ("inputs", "outputs")}


def signature_differences(a: Signature, b: Signature, a_name: str = "one", b_name: str = "other") -> List[str]:
    def show(t) -> str:
        return f"{t[0]} {list(t[1])}" if t else "absent"

    out = []
    for kind in ("inputs", "outputs"):
        for name in sorted(a[kind].keys() | b[kind].keys()):
            x, y = a[kind].get(name), b[kind].get(name)
            if x != y:
                out.append(f"{kind[:-1]} {name!r}: {show(x)} in {a_name}, {show(y)} in {b_name}")
    return out


def check_artifact_signatures(spec: ModelSpec, version_dir: Path, reference: Optional[Tuple[str, Signature]] = None) -> None:
    """Every declared file has the same graph inputs and outputs (names, types, ranks, fixed dims).

    ``reference`` is (file, signature) of a file already loaded (the daemon's
    chosen one), so it is not read twice; default: model.onnx. Raises
    ModelLoadError naming the first file that differs.
    """
    files = spec.artifact_files()
    if spec.artifacts is None or len(files) < 2:  # a pipeline's files are different graphs, not builds of one
        return
    ref_file, ref_sig = reference if reference is not None else (DEFAULT_ARTIFACT, graph_signature(version_dir / DEFAULT_ARTIFACT))
    for f in files:
        if f == ref_file:
            continue
        diffs = signature_differences(ref_sig, graph_signature(version_dir / f), ref_file, f)
        if diffs:
            raise ModelLoadError(f"{version_dir}: artifact {f} has other inputs/outputs than {ref_file}: {'; '.join(diffs)}")
