"""The blocking work that brings one version of a model onto the device, state by state.

The updater (``updater.py``) decides: which state comes next, which event to fire, what
the serving side must do (intents). What touches the network and the disk in the three
states before a canary lives here, and each step says only what it found, so that the
decisions stay in one place and the work can be read without them:

- DOWNLOADING, ``download``: the signed manifest and its signature, then every artifact,
  into ``{version}.staging/`` (``registry.py`` checks and fetches; ``download.py`` moves the
  bytes, resumably). Skipped when ``{version}/`` is already on disk.
- VERIFYING, ``verify``: the signature again and every artifact's size and sha256 as they
  are on disk, then ``{version}.staging/`` renamed to ``{version}/``: the moment the version
  exists for the model repository. Files damaged here (the registry's bytes were checked
  while streaming) are removed so the updater downloads them again.
- STAGED, ``validate``: loads, keeps the served version's IO signature, reproduces the golden
  outputs (``validate.py``, or the validator the updater was given).

Blocking; the updater runs it on the model's worker thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Set

from ..atomic import atomic_write, fsync_dir
from ..digests import sha256_file
from .errors import ArtifactDigestMismatch, ArtifactSizeMismatch, OtaError
from .manifest import MANIFEST, SIGNATURE, IOSignature, Manifest
from .registry import RegistryClient
from .validate import served_signature
from .versions import STAGING_SUFFIX, remove_dir

log = logging.getLogger(__name__)
Validator = Callable[[Path, Manifest, Optional[IOSignature]], None]


class Installer:
    """One model's versions on their way in: where they are staged and what each state checks."""

    def __init__(self, model: str, models_dir: Path, registry: RegistryClient, validator: Validator) -> None:
        self.model, self.models_dir = model, models_dir
        self.registry, self.validator = registry, validator

    def version_dir(self, version: str) -> Path:
        return self.models_dir / self.model / version

    def staging(self, version: str) -> Path:
        return self.models_dir / self.model / f"{version}{STAGING_SUFFIX}"

    def download(self, version: str, progress: Callable[[int, int], None]) -> str:
        """DOWNLOADING's work; returns the reason the DOWNLOADED event records."""
        final, staging = self.version_dir(version), self.staging(version)
        if final.is_dir():
            log.info("%s: %s already on disk; verifying it", self.model, final)
            return "already on disk"
        staging.mkdir(parents=True, exist_ok=True)
        body, sig, manifest = self.registry.manifest(version)
        atomic_write(staging / MANIFEST, body)
        atomic_write(staging / SIGNATURE, sig)
        self.registry.download(manifest, staging, progress)
        return f"{len(manifest.artifacts)} artifacts, {manifest.total_size} bytes"

    def verify(self, version: str, protected: Callable[[], Set[str]]) -> Optional[OtaError]:
        """VERIFYING's work. None: verified and in place as ``{version}/``. An error: the files
        on disk were damaged and are removed, to be downloaded again. Raises that error instead
        when the damaged copy is one the device serves (``protected()``: never removed)."""
        final, staging = self.version_dir(version), self.staging(version)
        vdir = final if final.is_dir() else staging
        manifest = self.registry.check_manifest((vdir / MANIFEST).read_bytes(), (vdir / SIGNATURE).read_bytes(),
                                                version)
        try:
            for a in manifest.artifacts:
                p = vdir / a.path
                size = p.stat().st_size if p.is_file() else -1
                if size != a.size:
                    raise ArtifactSizeMismatch(f"{a.path}: {size} bytes on disk, manifest says {a.size}")
                digest = sha256_file(p)
                if digest != a.sha256:
                    raise ArtifactDigestMismatch(f"{a.path}: sha256 on disk {digest} != manifest {a.sha256}")
        except (ArtifactSizeMismatch, ArtifactDigestMismatch) as e:
            # The registry's bytes were checked while streaming, so this is local damage: fetch again.
            if vdir == final and version in protected():
                raise
            remove_dir(vdir)
            return e
        for leftover in vdir.rglob("*.part"):
            leftover.unlink()
        if vdir == staging:
            staging.rename(final)
            fsync_dir(final.parent)
        return None

    def validate(self, version: str, fallback: Optional[str]) -> str:
        """STAGED's work: raises when the version is unfit; returns the reason VALIDATED records."""
        vdir = self.version_dir(version)
        manifest = Manifest.parse((vdir / MANIFEST).read_bytes())
        served = served_signature(self.version_dir(fallback) if fallback else None)
        checked = self.validator(vdir, manifest, served)
        on = f" by {checked.file}, the file this device serves" if getattr(checked, "file", "model.onnx") != "model.onnx" else ""
        return f"loads, IO signature matches, golden outputs reproduced{on}"
