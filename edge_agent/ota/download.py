"""Resumable, verified, bandwidth-capped HTTP downloads.

Bytes go to ``dest.part``; after an interruption the next attempt asks for
``Range: bytes={part size}-`` and appends on 206, or starts over on 200 (a
server without range support). sha256 is computed while streaming (seeded
from the bytes already in .part), the file is fsynced, then renamed into
place: ``dest`` exists only complete and verified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

import requests

from ..atomic import fsync_dir
from ..backoff import backoff_delay
from ..digests import sha256_file
from .errors import ArtifactDigestMismatch, ArtifactSizeMismatch, DownloadFailed
from .metrics import DOWNLOAD_BYTES, DOWNLOAD_RETRIES

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (bytes in dest.part so far, expected size)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_CHUNK = 64 * 1024


class _Transient(Exception):
    """One attempt failed in a way worth retrying."""


def _http_error(url: str, r: requests.Response) -> Exception:
    if r.status_code in (408, 429) or r.status_code >= 500:
        return _Transient(f"HTTP {r.status_code}")
    return DownloadFailed(f"{url}: HTTP {r.status_code}", url=url, status=r.status_code)


def fetch_bytes(url: str, *, max_bytes: int = 4 << 20, attempts: int = 3, backoff_s: tuple[float, float] = (0.5, 30.0),
                timeout_s: float = 30.0, session: requests.Session | None = None) -> bytes:
    """A small document (index, manifest, signature) with the same retry policy."""
    http = session or requests
    last = "no attempt"
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_delay(attempt - 1, *backoff_s))
        try:
            with http.get(url, stream=True, timeout=timeout_s, headers={"Accept-Encoding": "identity"}) as r:
                if r.status_code != 200:
                    raise _http_error(url, r)
                data = bytearray()
                for chunk in r.iter_content(_CHUNK):
                    data += chunk
                    if len(data) > max_bytes:
                        raise DownloadFailed(f"{url}: larger than {max_bytes} bytes", url=url)
                return bytes(data)
        except (requests.RequestException, OSError, _Transient) as e:
            last = f"{type(e).__name__}: {e}"
            DOWNLOAD_RETRIES.inc()
            log.warning("fetch %s failed (attempt %d/%d): %s", url, attempt + 1, attempts, last)
    raise DownloadFailed(f"{url}: {last} after {attempts} attempts", url=url, attempts=attempts)


def download(
    url: str,
    dest: Path,
    expected_size: int,
    expected_sha256: str,
    *,
    bandwidth_limit_bps: int | None = None,
    attempts: int = 5,
    backoff_s: tuple[float, float] = (0.5, 30.0),
    timeout_s: float = 30.0,
    progress: Progress | None = None,
    session: requests.Session | None = None,
) -> int:
    """Fetch ``url`` into ``dest`` verified by size and sha256; return bytes transferred by this call.

    Transient failures (connection loss, timeouts, 5xx, 408/429) are retried
    with jittered exponential backoff bounded by ``backoff_s = (base, max)``.
    A size or digest mismatch of a full download is permanent (the registry
    serves other bytes than the signed manifest says) and raises at once.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file() and dest.stat().st_size == expected_size and sha256_file(dest) == expected_sha256:
        return 0
    http = session or requests.Session()
    transferred, last = 0, "no attempt"
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_delay(attempt - 1, *backoff_s))
        try:
            got = _attempt(http, url, part, expected_size, expected_sha256, bandwidth_limit_bps, timeout_s, progress)
            transferred += got[0]
            if got[1]:
                os.replace(part, dest)
                fsync_dir(dest.parent)
                return transferred
            last = "stream ended early"
        except (requests.RequestException, OSError, _Transient) as e:
            last = f"{type(e).__name__}: {e}"
        except _Counted as c:
            transferred += c.transferred
            if c.error is not None:
                raise c.error from None
            last = c.why
        DOWNLOAD_RETRIES.inc()
        log.warning("download %s failed (attempt %d/%d): %s", url, attempt + 1, attempts, last)
    raise DownloadFailed(f"{url}: {last} after {attempts} attempts", url=url, attempts=attempts, transferred=transferred)


class _Counted(Exception):
    """Carries bytes transferred out of a failed attempt, plus a permanent error or a retry reason."""

    def __init__(self, transferred: int, error: Exception | None = None, why: str = "") -> None:
        super().__init__(why)
        self.transferred, self.error, self.why = transferred, error, why


def _attempt(http, url, part: Path, size: int, sha: str, bps, timeout_s, progress) -> tuple[int, bool]:
    """One request. Returns (bytes transferred, complete and verified)."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    hasher = hashlib.sha256()
    if offset:
        _hash_into(hasher, part)
    resumed, transferred = offset > 0, 0
    if offset < size:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with http.get(url, headers=headers, stream=True, timeout=timeout_s) as r:
            if r.status_code == 416:
                # Our .part is not a prefix the server can extend: start over.
                part.unlink(missing_ok=True)
                raise _Transient("416 range not satisfiable; restarting")
            if r.status_code == 206:
                m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"unexpected Content-Range {r.headers.get('Content-Range')!r}; restarting")
                if m.group(3) != "*" and int(m.group(3)) != size:
                    raise ArtifactSizeMismatch(f"{url}: server size {m.group(3)} != manifest {size}", url=url)
                mode = "ab"
            elif r.status_code == 200:
                # No range support (or ignored): the body is the whole file.
                offset, resumed, hasher, mode = 0, False, hashlib.sha256(), "wb"
                cl = r.headers.get("Content-Length")
                if cl is not None and int(cl) != size:
                    raise ArtifactSizeMismatch(f"{url}: server size {cl} != manifest {size}", url=url)
            else:
                raise _http_error(url, r)
            t0 = time.monotonic()
            try:
                with open(part, mode) as f:
                    for chunk in r.iter_content(_CHUNK):
                        if offset + transferred + len(chunk) > size:
                            f.close()
                            part.unlink(missing_ok=True)
                            raise ArtifactSizeMismatch(f"{url}: more than the manifest's {size} bytes", url=url)
                        f.write(chunk)
                        hasher.update(chunk)
                        transferred += len(chunk)
                        DOWNLOAD_BYTES.inc(len(chunk))
                        if progress:
                            progress(offset + transferred, size)
                        if bps:
                            ahead = transferred / bps - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)
                    f.flush()
                    os.fsync(f.fileno())
            except (requests.RequestException, OSError) as e:
                raise _Counted(transferred, why=f"{type(e).__name__}: {e}") from None
            except ArtifactSizeMismatch as e:
                raise _Counted(transferred, error=e) from None
    if offset + transferred < size:
        raise _Counted(transferred, why=f"stream ended at {offset + transferred}/{size} bytes")
    if hasher.hexdigest() != sha:
        part.unlink(missing_ok=True)
        if resumed:
            # The old .part may be what is wrong (torn by a power cut): one clean retry.
            raise _Counted(transferred, why="digest mismatch after resume; restarting from zero")
        raise _Counted(transferred, error=ArtifactDigestMismatch(
            f"{url}: sha256 {hasher.hexdigest()} != manifest {sha}", url=url, expected=sha, actual=hasher.hexdigest()))
    return transferred, True


def _hash_into(hasher, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)

