"""Registry documents: ``{model}/index.json`` and ``{model}/{version}/manifest.json``.

The manifest is the one signed document; everything else it names (artifacts,
golden.npz) is bound to it by sha256 and size. index.json is deliberately not
signed: it only points at versions, and whatever it points at is verified.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Dict, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import Section
from ..runtime.model_spec import ModelSpec, TensorSpec
from .errors import ManifestInvalid

SCHEMA_VERSION = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
GOLDEN = "golden.npz"


def safe_name(v: str) -> str:
    """Model and version names become path components and URL segments."""
    if not _SAFE_NAME.match(v) or v.endswith(".staging"):
        raise ValueError(f"{v!r} must match {_SAFE_NAME.pattern} and not end in .staging")
    return v


def version_key(v: str) -> tuple:
    """Natural order: "10" after "9", "1.10" after "1.9"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[._-]", v))


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_agent_version(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


class Artifact(Section):
    path: str = Field(description="Path relative to the version directory (POSIX, no '..').")
    sha256: str = Field(description="Lowercase hex sha256 of the file.")
    size: int = Field(ge=0, description="Size in bytes.")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or not p.parts or any(part in ("..", ".", "") for part in p.parts) or "\\" in v:
            raise ValueError("must be a relative path without '..'")
        if v in (MANIFEST, SIGNATURE) or any(part.startswith(".") for part in p.parts):
            raise ValueError("reserved or hidden name")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("must be 64 lowercase hex digits")
        return v


class IOSignature(Section):
    """What clients see of a model: compared with the served version before any traffic."""

    max_batch_size: int = Field(ge=0, description="As in model.yaml; > 0 means dims exclude the batch axis.")
    inputs: list[TensorSpec] = Field(description="Served inputs (model.yaml).")
    outputs: list[TensorSpec] = Field(description="Served outputs (model.yaml).")

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> IOSignature:
        return cls(max_batch_size=spec.max_batch_size, inputs=spec.inputs, outputs=spec.outputs)

    def differences(self, other: IOSignature) -> list[str]:
        """Human-readable differences, empty when both serve the same contract."""
        out = []
        if (self.max_batch_size > 0) != (other.max_batch_size > 0):
            out.append(f"batch axis: max_batch_size {other.max_batch_size} -> {self.max_batch_size}")
        for kind in ("inputs", "outputs"):
            mine = {t.name: t for t in getattr(self, kind)}
            theirs = {t.name: t for t in getattr(other, kind)}
            for name in sorted(theirs.keys() - mine.keys()):
                out.append(f"{kind[:-1]} {name!r} missing")
            for name in sorted(mine.keys() - theirs.keys()):
                out.append(f"{kind[:-1]} {name!r} added")
            for name in sorted(mine.keys() & theirs.keys()):
                a, b = theirs[name], mine[name]
                if (a.datatype, a.dims) != (b.datatype, b.dims):
                    out.append(f"{kind[:-1]} {name!r}: {a.datatype}{a.dims} -> {b.datatype}{b.dims}")
        return out


class Tolerance(Section):
    kind: Literal["allclose", "cosine", "exact"] = Field("allclose", description="allclose: |a-e| <= atol + rtol*|e|; cosine: per-row cosine similarity >= min_cosine; exact: equal.")
    atol: float = Field(1e-4, ge=0, description="Absolute tolerance (allclose).")
    rtol: float = Field(1e-3, ge=0, description="Relative tolerance (allclose).")
    min_cosine: float = Field(0.999, ge=-1, le=1, description="Minimum per-row cosine similarity (cosine).")


class GoldenSpec(Section):
    file: str = Field(GOLDEN, description="npz artifact holding inputs and expected outputs (must be listed in artifacts).")
    cases: int = Field(ge=1, description="Number of cases; npz keys c{i}_in{j} (j indexes io.inputs) and c{i}_out{k} (k indexes outputs).")
    outputs: list[str] = Field(min_length=1, description="Outputs compared, in npz order.")
    tolerance: dict[str, Tolerance] = Field(description="Tolerance per compared output.")
    runner: Literal["onnxruntime", "pipeline"] = Field("onnxruntime", description="onnxruntime: raw graph; pipeline: the daemon's pre/post-processing (text models).")
    artifact_tolerance: Dict[str, Dict[str, Tolerance]] = Field(
        default_factory=dict,
        description="For versions with several ONNX files (model.yaml artifacts): tolerance per output for a device that serves "
        "the named file, replacing `tolerance` there. The expected outputs come from one file (the publisher's), so another "
        "build of the graph (e.g. int8 instead of uint8 weights) is compared within its own bounds.",
    )

    @model_validator(mode="after")
    def _tolerance_for_each(self):
        missing = set(self.outputs) - self.tolerance.keys()
        if missing:
            raise ValueError(f"no tolerance for outputs {sorted(missing)}")
        for f, tol in self.artifact_tolerance.items():
            if set(tol) != set(self.outputs):
                raise ValueError(f"artifact_tolerance[{f!r}] must give a tolerance for exactly the outputs {self.outputs}")
        return self

    def tolerance_for(self, artifact: str) -> Dict[str, Tolerance]:
        """The tolerances that apply on a device serving ``artifact``."""
        return self.artifact_tolerance.get(artifact, self.tolerance)


class Lineage(Section):
    source_model_digest: str | None = Field(None, description="sha256 of the model this one was derived from (e.g. the FP32 export).")
    quantization_recipe: dict | str | None = Field(None, description="How it was quantized (method, calibration set, excluded ops...).")
    details: dict = Field(default_factory=dict, description="Other lineage keys from model.yaml, kept verbatim.")


class Manifest(Section):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Manifest format version.")
    model: str = Field(description="Model name (registry directory).")
    version: str = Field(description="Version name (registry directory).")
    created_at: str = Field(description="UTC creation time, ISO 8601.")
    min_agent_version: str = Field(description="Oldest edge-agent that may install this version.")
    precision: str = Field("fp32", description="Numeric form of the graph (model.yaml precision).")
    artifacts: list[Artifact] = Field(min_length=1, description="Every file of the version directory except manifest and signature.")
    io: IOSignature = Field(description="Served IO signature.")
    golden: GoldenSpec | None = Field(None, description="Golden cases; None only when the publisher explicitly skipped them.")
    accuracy: dict | None = Field(None, description="Accuracy figures (e.g. from the quantize gate).")
    lineage: Lineage = Field(default_factory=Lineage, description="Where this model came from.")

    _check_model = field_validator("model", "version")(classmethod(lambda cls, v: safe_name(v)))

    @model_validator(mode="after")
    def _consistent(self):
        paths = [a.path for a in self.artifacts]
        if len(set(paths)) != len(paths):
            raise ValueError("artifact paths must be unique")
        if "model.yaml" not in paths:
            raise ValueError("artifacts must include model.yaml")
        if "model.onnx" not in paths and not any(p.endswith(".onnx") for p in paths):
            raise ValueError("artifacts must include model.onnx (a pipeline: its steps' .onnx files)")
        if self.golden is not None and self.golden.file not in paths:
            raise ValueError(f"golden file {self.golden.file} is not an artifact")
        if self.golden is not None:
            unknown = sorted(set(self.golden.artifact_tolerance) - set(paths))
            if unknown:
                raise ValueError(f"golden.artifact_tolerance names files that are not artifacts: {unknown}")
        return self

    def artifact(self, path: str) -> Artifact:
        for a in self.artifacts:
            if a.path == path:
                return a
        raise KeyError(path)

    @property
    def total_size(self) -> int:
        return sum(a.size for a in self.artifacts)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str = MANIFEST) -> Manifest:
        return _parse(cls, data, where)


class IndexEntry(Section):
    version: str = Field(description="Version name.")
    created_at: str = Field(description="Manifest creation time.")
    manifest_sha256: str = Field(description="sha256 of the manifest bytes (informative; the signature is what counts).")

    _check = field_validator("version")(classmethod(lambda cls, v: safe_name(v)))


class RegistryIndex(Section):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Index format version.")
    model: str = Field(description="Model name.")
    versions: list[IndexEntry] = Field(default_factory=list, description="Published versions, oldest first.")
    channels: dict[str, str] = Field(default_factory=dict, description="Channel name -> version, e.g. {stable: '3', canary: '4'}.")

    @model_validator(mode="after")
    def _channels_point_at_versions(self):
        known = {e.version for e in self.versions}
        for ch, v in self.channels.items():
            if v not in known:
                raise ValueError(f"channel {ch!r} points at unpublished version {v!r}")
        return self

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str = "index.json") -> RegistryIndex:
        return _parse(cls, data, where)


def _parse(cls, data: bytes, where: str):
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestInvalid(f"{where}: not JSON: {e}") from None
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ManifestInvalid(f"{where}: {loc}: {first['msg']}", errors=len(e.errors())) from None
