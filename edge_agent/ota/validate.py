"""Default validation of a staged version, before it sees any traffic.

1. its model.yaml matches the signed manifest's IO signature;
2. that signature matches the version being served (clients must not notice);
3. the graph loads in ONNX Runtime;
4. it reproduces the manifest's golden outputs within tolerance.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EdgeError, ModelLoadError
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
                     runner_factory: golden_mod.RunnerFactory | None = None) -> None:
    """Raise IOSignatureMismatch, ModelLoadError, GoldenMismatch or GoldenRunnerMissing; return when fit to serve.

    ``runner_factory`` is the daemon's pipeline (required when the golden cases
    were produced with ``runner: pipeline``, i.e. text models).
    """
    spec = load_model_spec(version_dir / "model.yaml")
    diffs = IOSignature.from_spec(spec).differences(manifest.io)
    if diffs:
        raise IOSignatureMismatch(f"model.yaml differs from the signed manifest: {'; '.join(diffs)}", differences=diffs)
    if served is not None:
        diffs = manifest.io.differences(served)
        if diffs:
            raise IOSignatureMismatch(f"IO signature differs from the served version: {'; '.join(diffs)}", differences=diffs)
    pipeline = manifest.golden is not None and manifest.golden.runner == "pipeline"
    if pipeline and runner_factory is None:
        raise GoldenRunnerMissing("golden cases need the daemon's pipeline runner; none was given")
    factory = runner_factory if pipeline else golden_mod.default_runner_factory
    try:
        runner = factory(version_dir, spec)
    except EdgeError:
        raise
    except Exception as e:  # ORT raises its own exception types for bad graphs
        raise ModelLoadError(f"{version_dir}: does not load: {type(e).__name__}: {e}") from None
    if manifest.golden is None:
        log.warning("%s %s: manifest has no golden cases; only load was checked", manifest.model, manifest.version)
        return
    cases = golden_mod.load(version_dir / manifest.golden.file, manifest.golden, [t.name for t in manifest.io.inputs])

    def guarded(inputs):
        try:
            return runner(inputs)
        except EdgeError:
            raise
        except Exception as e:
            raise GoldenMismatch(f"running a golden case raised {type(e).__name__}: {e}") from None

    golden_mod.check(guarded, cases, manifest.golden)
