"""One model's side of the registry: its index, signed manifests and artifacts.

Everything the updater fetches comes through here, with the same retry policy
(``download.py``) and the same trust: a manifest counts only when a pinned key
signed it, it names the model and version asked for, and this agent is new
enough for it. Blocking; the updater runs it in its worker thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union
from urllib.parse import quote

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .. import __version__
from . import download as dl
from .errors import AgentTooOld, ManifestInvalid
from .manifest import MANIFEST, SIGNATURE, Manifest, RegistryIndex, parse_agent_version
from .signing import load_public_keys, verify

log = logging.getLogger(__name__)


class RegistryClient:
    def __init__(self, registry_url: str, model: str, public_keys: Union[List[Path], List[Ed25519PublicKey]], *,
                 download_attempts: int = 3, backoff_s: Tuple[float, float] = (0.5, 30.0),
                 bandwidth_limit_bps: Optional[int] = None, agent_version: str = __version__,
                 session: Optional[requests.Session] = None) -> None:
        self.registry_url, self.model = registry_url.rstrip("/"), model
        keys = [k if isinstance(k, Ed25519PublicKey) else None for k in public_keys]
        self.keys = load_public_keys([Path(k) for k in public_keys]) if None in keys else keys
        self.attempts, self.backoff_s = download_attempts, backoff_s
        self.bandwidth_limit_bps = bandwidth_limit_bps
        self.agent_version = agent_version
        self.session = session or requests.Session()

    def url(self, *parts: str) -> str:
        return "/".join([self.registry_url, quote(self.model)] + [quote(p) for p in parts])

    def _fetch(self, *parts: str) -> bytes:
        return dl.fetch_bytes(self.url(*parts), attempts=self.attempts, backoff_s=self.backoff_s, session=self.session)

    def index(self) -> RegistryIndex:
        index = RegistryIndex.parse(self._fetch("index.json"), self.url("index.json"))
        if index.model != self.model:
            raise ManifestInvalid(f"index.json is for model {index.model!r}, not {self.model!r}")
        return index

    def manifest(self, version: str) -> Tuple[bytes, bytes, Manifest]:
        """The signed manifest of ``version``: (body, signature, parsed), checked."""
        body, sig = self._fetch(version, MANIFEST), self._fetch(version, SIGNATURE)
        return body, sig, self.check_manifest(body, sig, version)

    def check_manifest(self, body: bytes, sig: bytes, version: str) -> Manifest:
        signer = verify(body, sig, self.keys)
        manifest = Manifest.parse(body)
        if (manifest.model, manifest.version) != (self.model, version):
            raise ManifestInvalid(f"manifest is for {manifest.model} {manifest.version}, expected "
                                  f"{self.model} {version}")
        if parse_agent_version(self.agent_version) < parse_agent_version(manifest.min_agent_version):
            raise AgentTooOld(f"needs edge-agent >= {manifest.min_agent_version}, this is {self.agent_version}")
        log.debug("%s %s: manifest signed by %s", self.model, manifest.version, signer.key_id)
        return manifest

    def download(self, manifest: Manifest, into: Path, progress: Callable[[int, int], None]) -> None:
        """Every artifact of ``manifest`` into ``into``, each checked while it streams
        (size, sha256) and resumed from its ``.part`` file; ``progress(done, total)``."""
        total, done_before = manifest.total_size, 0
        for a in manifest.artifacts:
            dest = into / a.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            base = done_before
            dl.download(self.url(manifest.version, *a.path.split("/")), dest, a.size, a.sha256,
                        bandwidth_limit_bps=self.bandwidth_limit_bps, attempts=self.attempts,
                        backoff_s=self.backoff_s, session=self.session,
                        progress=lambda done, _size, base=base: progress(base + done, total))
            done_before += a.size
