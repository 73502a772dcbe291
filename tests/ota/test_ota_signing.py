import json
import os
import stat

import pytest

from edge_agent.ota import signing
from edge_agent.ota.errors import KeyInvalid, SignatureInvalid, SignatureUnknownKey

DATA = b'{"model": "linear", "version": "1"}\n'


def test_keygen_writes_private_key_0600_and_refuses_overwrite(tmp_path):
    priv, pub = signing.keygen(tmp_path)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(KeyInvalid):
        signing.keygen(tmp_path)


def test_sign_verify_roundtrip(keys):
    priv, pub = keys
    doc = signing.sign(DATA, signing.load_private_key(priv))
    verified = signing.verify(DATA, doc, [signing.load_public_key(pub)])
    assert verified.key_id == signing.key_id(signing.load_public_key(pub))


def test_tampered_data_is_signature_invalid(keys):
    priv, pub = keys
    doc = signing.sign(DATA, signing.load_private_key(priv))
    with pytest.raises(SignatureInvalid) as e:
        signing.verify(DATA.replace(b"1", b"2"), doc, [signing.load_public_key(pub)])
    assert e.value.code == "signature_invalid"


def test_bad_signature_bytes_is_signature_invalid(keys):
    priv, pub = keys
    doc = json.loads(signing.sign(DATA, signing.load_private_key(priv)))
    doc["signature"] = doc["signature"][:-4] + ("AAA=" if not doc["signature"].endswith("AAA=") else "BBB=")
    with pytest.raises(SignatureInvalid):
        signing.verify(DATA, json.dumps(doc).encode(), [signing.load_public_key(pub)])
    with pytest.raises(SignatureInvalid):
        signing.verify(DATA, b"not json", [signing.load_public_key(pub)])


def test_unknown_key_is_distinct_error(keys, other_keys):
    doc = signing.sign(DATA, signing.load_private_key(other_keys[0]))
    with pytest.raises(SignatureUnknownKey) as e:
        signing.verify(DATA, doc, [signing.load_public_key(keys[1])])
    assert e.value.code == "signature_unknown_key"
    # Pinning several keys: either signer is accepted.
    signing.verify(DATA, doc, signing.load_public_keys([keys[1], other_keys[1]]))


def test_world_readable_private_key_refused(keys):
    os.chmod(keys[0], 0o644)
    with pytest.raises(KeyInvalid, match="chmod 600"):
        signing.load_private_key(keys[0])


def test_public_key_file_errors(tmp_path):
    with pytest.raises(KeyInvalid):
        signing.load_public_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(KeyInvalid):
        signing.load_public_key(tmp_path / "junk.pem")
