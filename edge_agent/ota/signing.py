"""Ed25519 signing of manifests.

The detached signature file ``manifest.json.sig`` is a small JSON document
``{"alg": "ed25519", "key_id": ..., "signature": base64}``. The key id (first
16 hex digits of sha256 of the raw public key) is not trusted; it only lets a
device tell "signed by a key I do not pin" from "signature does not verify".
The signature covers the manifest bytes exactly as stored, never a re-encoding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..atomic import atomic_write
from .errors import KeyInvalid, SignatureInvalid, SignatureUnknownKey

PRIVATE_KEY_FILE = "ota_signing_key.pem"
PUBLIC_KEY_FILE = "ota_signing_key.pub.pem"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out_dir``; refuse to overwrite an existing private key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    if priv_path.exists():
        raise KeyInvalid(f"{priv_path} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    atomic_write(priv_path, pem, mode=0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(pub_path, pub, mode=0o644)
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise KeyInvalid(f"{path}: cannot read: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise KeyInvalid(f"{path}: not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyInvalid(f"{path}: not an Ed25519 key")
    mode = os.stat(path).st_mode & 0o077
    if mode:
        raise KeyInvalid(f"{path}: private key is readable by group/others (chmod 600)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise KeyInvalid(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise KeyInvalid(f"{path}: not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyInvalid(f"{path}: not an Ed25519 key")
    return key


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """Detached signature document for ``data``."""
    doc = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(data)).decode(),
    }
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Verified:
    key_id: str


def verify(data: bytes, signature_doc: bytes, pinned: list[Ed25519PublicKey]) -> Verified:
    """Check ``data`` against its detached signature and the pinned keys.

    Raises SignatureUnknownKey when no pinned key has the signer's id, and
    SignatureInvalid for a malformed signature file or one that does not verify
    (a tampered manifest lands here).
    """
    try:
        doc = json.loads(signature_doc)
        if doc.get("alg") != "ed25519":
            raise ValueError(f"unsupported alg {doc.get('alg')!r}")
        kid = str(doc["key_id"])
        sig = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise SignatureInvalid(f"malformed signature file: {e}") from None
    by_id = {key_id(k): k for k in pinned}
    key = by_id.get(kid)
    if key is None:
        raise SignatureUnknownKey(f"signed by key {kid}, which is not pinned", key_id=kid, pinned=sorted(by_id))
    try:
        key.verify(sig, data)
    except InvalidSignature:
        raise SignatureInvalid(f"signature by key {kid} does not verify (manifest altered or bad signature)", key_id=kid) from None
    return Verified(kid)


def load_public_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    return [load_public_key(Path(p)) for p in paths]
