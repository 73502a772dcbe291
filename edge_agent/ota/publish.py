"""``edge-agent registry publish``: a model version directory -> signed registry entry.

The version is assembled in a hidden temp directory beside its final place and
renamed in, so an HTTP server never serves half a version; index.json is
replaced atomically last, so a channel only ever points at a complete version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import atomic_write, fsync_dir
from ..digests import sha256_file
from ..errors import ModelLoadError
from ..runtime.artifacts import check_artifact_files, check_artifact_signatures
from ..runtime.model_spec import DEFAULT_ARTIFACT, load_model_spec
from . import golden as golden_mod
from .errors import OtaError, PublishError
from .manifest import (GOLDEN, MANIFEST, SIGNATURE, Artifact, GoldenSpec, IndexEntry, IOSignature, Lineage,
                       Manifest, RegistryIndex, Tolerance, safe_name, utc_now, version_key)
from .signing import load_private_key, sign
from .versions import is_version_dir

log = logging.getLogger(__name__)
_SKIP = {MANIFEST, SIGNATURE, GOLDEN}


def publish(
    model_dir: Path,
    registry_root: Path,
    key_file: Path,
    channel: str | None = None,
    *,
    runner_factory: golden_mod.RunnerFactory | None = None,
    golden_inputs: list[dict[str, np.ndarray]] | None = None,
    golden_cases: int = 2,
    tolerance: Tolerance | dict[str, Tolerance] | None = None,
    artifact_tolerance: dict[str, Tolerance | dict[str, Tolerance]] | None = None,
    accuracy: dict | None = None,
    lineage: Lineage | None = None,
    min_agent_version: str = __version__,
) -> Manifest:
    """Publish ``model_dir`` (model.onnx + model.yaml + extras) as ``{root}/{model}/{version}``.

    The version name is the directory name; the model name is model.yaml's
    ``name`` or the parent directory's name. Golden outputs are computed with
    ``runner_factory(version_dir, spec)`` (default: raw ONNX Runtime; text models
    must pass the daemon's text pipeline).

    A version with several ONNX files (model.yaml ``artifacts``) gets its
    expected outputs from one of them (the default runner: model.onnx) and a
    tolerance for each other file (``artifact_tolerance``, by file; default:
    the default tolerance of that file's precision), so that a device serving
    another build is judged within that build's own bounds. All files must
    exist and have the same inputs and outputs, or nothing is published.
    """
    model_dir, registry_root = Path(model_dir), Path(registry_root)
    if golden_cases < 1:
        raise PublishError("golden_cases must be >= 1")
    try:
        spec = load_model_spec(model_dir / "model.yaml")
    except ModelLoadError as e:
        raise PublishError(e.message) from None
    model, version = spec.name or model_dir.resolve().parent.name, model_dir.name
    try:
        safe_name(model), safe_name(version)
    except ValueError as e:
        raise PublishError(str(e)) from None
    if channel is not None:
        try:
            safe_name(channel)
        except ValueError as e:
            raise PublishError(f"channel: {e}") from None
    if not is_version_dir(model_dir):
        raise PublishError(f"{model_dir}: no model.onnx (nor a pipeline in model.yaml)")
    try:
        check_artifact_files(spec, model_dir)
        check_artifact_signatures(spec, model_dir)
    except ModelLoadError as e:
        raise PublishError(e.message) from None
    key = load_private_key(key_file)
    model_root = registry_root / model
    dest = model_root / version
    if dest.exists():
        raise PublishError(f"{model} version {version} is already published; versions are immutable", model=model, version=version)
    model_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=model_root))
    try:
        _copy_tree(model_dir, tmp)
        gspec = _write_golden(tmp, spec, runner_factory, golden_inputs, golden_cases, tolerance, artifact_tolerance)
        artifacts = [Artifact(path=p.relative_to(tmp).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
                     for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest = Manifest(
            model=model, version=version, created_at=utc_now(), min_agent_version=min_agent_version,
            precision=spec.precision, artifacts=artifacts, io=IOSignature.from_spec(spec), golden=gspec,
            accuracy=accuracy if accuracy is not None else spec.accuracy,
            lineage=lineage or _lineage(spec.lineage),
        )
        body = manifest.to_bytes()
        atomic_write(tmp / MANIFEST, body)
        atomic_write(tmp / SIGNATURE, sign(body, key))
        os.chmod(tmp, 0o755)
        os.rename(tmp, dest)
        fsync_dir(model_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _update_index(model_root, model, IndexEntry(version=version, created_at=manifest.created_at,
                                                manifest_sha256=hashlib.sha256(body).hexdigest()), channel)
    log.info("published %s version %s (%d artifacts, %d bytes)%s", model, version, len(artifacts),
             manifest.total_size, f" on channel {channel}" if channel else "")
    return manifest


def set_channel(registry_root: Path, model: str, channel: str, version: str) -> RegistryIndex:
    """Point ``channel`` at an already published version (e.g. promote canary -> stable)."""
    safe_name(channel)
    return _update_index(Path(registry_root) / model, model, None, channel, version)


def read_index(model_root: Path, model: str) -> RegistryIndex:
    path = model_root / "index.json"
    if not path.exists():
        return RegistryIndex(model=model)
    return RegistryIndex.parse(path.read_bytes(), str(path))


def _update_index(model_root: Path, model: str, entry: IndexEntry | None, channel: str | None,
                  version: str | None = None) -> RegistryIndex:
    index = read_index(model_root, model)
    versions = [e for e in index.versions if entry is None or e.version != entry.version]
    if entry is not None:
        versions.append(entry)
        version = entry.version
    versions.sort(key=lambda e: version_key(e.version))
    channels = dict(index.channels)
    if channel is not None:
        if version not in {e.version for e in versions}:
            raise PublishError(f"{model}: version {version} is not published", model=model, version=version)
        channels[channel] = version
    index = RegistryIndex(model=model, versions=versions, channels=channels)
    atomic_write(model_root / "index.json", index.to_bytes())
    return index


def _copy_tree(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in _SKIP or p.name.endswith(".part"):
            continue
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif p.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)
            with open(dst / rel, "rb") as f:
                os.fsync(f.fileno())


def _write_golden(vdir: Path, spec, runner_factory, inputs, cases, tolerance, artifact_tolerance=None) -> GoldenSpec:
    factory = runner_factory or golden_mod.default_runner_factory
    try:
        runner = factory(vdir, spec)
        inputs = inputs if inputs is not None else golden_mod.make_inputs(spec, cases)
        outputs = [runner(case) for case in inputs]
    except OtaError:
        raise
    except Exception as e:  # the runner is ORT or the daemon pipeline: anything can come out
        raise PublishError(f"cannot compute golden outputs: {type(e).__name__}: {e}") from None
    names = list(outputs[0])
    if isinstance(tolerance, Tolerance) or tolerance is None:
        tol = tolerance or golden_mod.default_tolerance(spec.precision)
        tolerance = {n: tol for n in names}
    per_file = {}
    given = artifact_tolerance or {}
    unknown = sorted(set(given) - set(spec.artifact_files()))
    if unknown:
        raise PublishError(f"artifact_tolerance names files the version does not declare: {unknown}")
    for a in spec.artifacts or ():
        if a.file == DEFAULT_ARTIFACT or a.file in per_file:
            continue
        tol = given.get(a.file) or golden_mod.default_tolerance(a.precision or spec.precision)
        per_file[a.file] = tol if isinstance(tol, dict) else {n: tol for n in names}
    golden_mod.save(vdir / GOLDEN, inputs, outputs, [t.name for t in spec.inputs], names)
    return GoldenSpec(cases=len(inputs), outputs=names, tolerance=tolerance,
                      runner="pipeline" if runner_factory else "onnxruntime", artifact_tolerance=per_file)


def _lineage(raw: dict | None) -> Lineage:
    raw = dict(raw or {})
    digest = raw.pop("source_model_digest", None) or raw.pop("source_model_sha256", None)
    recipe = raw.pop("quantization_recipe", None) or raw.pop("quantization", None)
    return Lineage(source_model_digest=digest, quantization_recipe=recipe, details=raw)
