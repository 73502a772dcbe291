"""Power-cut-safe file writes: temp file, fsync, rename, fsync directory."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new, never half.

    The temp file lives in the same directory so the rename stays on one
    filesystem; the directory is fsynced so the rename itself is durable.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
