"""Default validation of a staged version, before it sees any traffic.

1. its model.yaml matches the signed manifest's IO signature;
2. that signature matches the version being served (clients must not notice);
3. every ONNX file it declares (model.yaml artifacts) is there, and all have the same inputs/outputs;
4. the file THIS device will serve (chosen as the daemon chooses: runtime/artifacts.py) loads in ONNX Runtime;
5. it reproduces the manifest's golden outputs within that file's tolerance.
"""

from __future__ import annotations

import logging
from pathlib import Path

from typing import Optional, Sequence

from ..errors import EdgeError, ModelLoadError
from ..runtime.artifacts import ArtifactChoice, check_artifact_files, check_artifact_signatures, choose_artifact, serving_providers
from ..runtime.cpu import CpuInfo, this_cpu
from ..runtime.model_spec import load_model_spec
from . import golden as golden_mod
from .errors import GoldenMismatch, GoldenRunnerMissing, IOSignatureMismatch
from .manifest import IOSignature, Manifest

log = logging.getLogger(__name__)


def served_signature(version_dir: Path | None) -> IOSignature | None:
    """IO signature of a served version directory (None on first install)."""
    if version_dir is None or not (version_dir / "model.yaml").is_file():
        return None
    return IOSignature.from_spec(load_model_spec(version_dir / "model.yaml"))


def validate_version(version_dir: Path, manifest: Manifest, served: IOSignature | None,
                     runner_factory: golden_mod.RunnerFactory | None = None, *,
                     providers: Optional[Sequence[str]] = None, cpu: Optional[CpuInfo] = None) -> ArtifactChoice:
    """Raise IOSignatureMismatch, ModelLoadError, GoldenMismatch or GoldenRunnerMissing; return the
    artifact validated (the one this device will serve) when fit to serve.

    ``runner_factory`` is the daemon's pipeline (required when the golden cases
    were produced with ``runner: pipeline``, i.e. text models); it opens the
    version as the daemon does, so it picks the same file. ``providers``
    (short names; default: the default config's providers that this ONNX
    Runtime has) and ``cpu`` (default: this machine) decide that file.
    """
    spec = load_model_spec(version_dir / "model.yaml")
    diffs = IOSignature.from_spec(spec).differences(manifest.io)
    if diffs:
        raise IOSignatureMismatch(f"model.yaml differs from the signed manifest: {'; '.join(diffs)}", differences=diffs)
    if served is not None:
        diffs = manifest.io.differences(served)
        if diffs:
            raise IOSignatureMismatch(f"IO signature differs from the served version: {'; '.join(diffs)}", differences=diffs)
    check_artifact_files(spec, version_dir)
    if providers is None:
        from ..config import RuntimeConfig

        providers = serving_providers(RuntimeConfig())
    choice = choose_artifact(spec, cpu or this_cpu(), providers)
    if spec.artifacts is not None:
        log.info("%s %s: validating artifact %s, the one this device serves (%s)", manifest.model, manifest.version,
                 choice.file, choice.reason)
    pipeline = manifest.golden is not None and manifest.golden.runner == "pipeline"
    if pipeline and runner_factory is None:
        raise GoldenRunnerMissing("golden cases need the daemon's pipeline runner; none was given")
    try:
        check_artifact_signatures(spec, version_dir)
        runner = runner_factory(version_dir, spec) if pipeline else golden_mod.default_runner_factory(version_dir, spec, choice.file)
    except EdgeError:
        raise
    except Exception as e:  # ORT raises its own exception types for bad graphs
        raise ModelLoadError(f"{version_dir}: does not load: {type(e).__name__}: {e}") from None
    if manifest.golden is None:
        log.warning("%s %s: manifest has no golden cases; only load was checked", manifest.model, manifest.version)
        return choice
    cases = golden_mod.load(version_dir / manifest.golden.file, manifest.golden, [t.name for t in manifest.io.inputs])

    def guarded(inputs):
        try:
            return runner(inputs)
        except EdgeError:
            raise
        except Exception as e:
            raise GoldenMismatch(f"running a golden case raised {type(e).__name__}: {e}") from None

    golden_mod.check(guarded, cases, manifest.golden, choice.file)
    return choice
