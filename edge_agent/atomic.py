"""Power-cut-safe file writes: temp file, fsync, rename, fsync directory."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# atomic_write's temp names: "." + target name + "." + mkstemp's 8 random characters + ".tmp".
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


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


def sweep_stale_temp_files(root: str | os.PathLike, older_than_s: float = 300.0, max_depth: int = 3) -> int:
    """Remove atomic_write temp files that a crash left behind under ``root``.

    A crash between the write and the rename leaves ``.name.XXXXXXXX.tmp``
    beside the file it was replacing; the old file is intact, the temp file is
    garbage. Only files with that exact name form, older than ``older_than_s``
    (so a writer in another process is never raced), down to ``max_depth``
    directories below ``root``, are removed. Returns how many were.
    """
    root = Path(root)
    removed = 0
    cutoff = time.time() - older_than_s
    for dirpath, dirnames, filenames in os.walk(root):
        if len(Path(dirpath).relative_to(root).parts) >= max_depth:
            dirnames[:] = []
        for name in filenames:
            if not _TEMP_NAME.match(name):
                continue
            p = Path(dirpath) / name
            try:
                if p.lstat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
                    log.info("removed %s, left by an interrupted write", p)
            except OSError as e:
                log.warning("cannot remove stale temp file %s: %s", p, e.strerror)
    return removed
