"""Which version of a model is served: active/previous pointers and keep-K cleanup.

``{state_dir}/models/{model}.json`` = ``{"active": "4", "previous": "3"}``,
replaced atomically. The daemon serves ``active`` when present. Version
directories are ``{models_dir}/{model}/{version}/``; names ending in
``.staging`` or starting with ``.`` are never versions (in-flight or trash).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_json, fsync_dir
from .manifest import version_key

log = logging.getLogger(__name__)
STAGING_SUFFIX = ".staging"


@dataclass(frozen=True)
class Pointers:
    active: str | None = None
    previous: str | None = None


def pointers_path(state_dir: Path, model: str) -> Path:
    return Path(state_dir) / "models" / f"{model}.json"


def read_pointers(state_dir: Path, model: str) -> Pointers:
    path = pointers_path(state_dir, model)
    try:
        raw = json.loads(path.read_text())
        return Pointers(active=raw.get("active"), previous=raw.get("previous"))
    except FileNotFoundError:
        return Pointers()
    except (OSError, ValueError, AttributeError) as e:
        # atomic_write never leaves a torn file, so this is outside damage: say so, serve defaults.
        log.error("%s unreadable (%s); ignoring pointers", path, e)
        return Pointers()


def write_pointers(state_dir: Path, model: str, pointers: Pointers) -> None:
    atomic_write_json(pointers_path(state_dir, model), asdict(pointers))


def is_version_dir(path: Path) -> bool:
    """A model version folder: it holds model.onnx, or a model.yaml declaring a
    ``pipeline:`` (pipeline/spec.py), whose graphs it names."""
    if (path / "model.onnx").is_file():
        return True
    try:
        text = (path / "model.yaml").read_text()
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r"^pipeline\s*:", text, re.M) is not None


def list_versions(models_dir: Path, model: str) -> list[str]:
    """Installed versions (directories holding model.onnx, or a pipeline's model.yaml), oldest first."""
    root = Path(models_dir) / model
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir()
             if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(STAGING_SUFFIX)
             and is_version_dir(p)]
    return sorted(names, key=version_key)


def served_version(models_dir: Path, state_dir: Path, model: str) -> str | None:
    """The pointer's active version, else the newest installed one (first start)."""
    active = read_pointers(state_dir, model).active
    if active and is_version_dir(Path(models_dir) / model / active):
        return active
    versions = list_versions(models_dir, model)
    return versions[-1] if versions else None


def remove_dir(path: Path) -> None:
    """Rename to a hidden trash name first, so a crash mid-delete never leaves a half version."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def cleanup(models_dir: Path, state_dir: Path, model: str, keep: int, protect: tuple[str | None, ...] = ()) -> list[str]:
    """Delete the oldest versions beyond ``keep``; never active, previous or ``protect``. Returns removed."""
    root = Path(models_dir) / model
    ptr = read_pointers(state_dir, model)
    keep_always = {v for v in (ptr.active, ptr.previous, *protect) if v}
    versions = list_versions(models_dir, model)
    removable = [v for v in versions if v not in keep_always]
    excess = len(versions) - max(keep, len(keep_always))
    removed = []
    for v in removable[:max(0, excess)]:
        remove_dir(root / v)
        removed.append(v)
    if root.is_dir():
        # Leftover trash from a crash mid-delete.
        for p in root.iterdir():
            if p.name.startswith(".trash-"):
                shutil.rmtree(p, ignore_errors=True)
    if removed:
        log.info("%s: removed old versions %s (kept %d)", model, removed, keep)
    return removed
