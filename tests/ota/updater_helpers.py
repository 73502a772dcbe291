"""What the updater's tests share (test_ota_updater_e2e.py, test_ota_statemachine.py): the
serving side as a recorder of what the updater asks, an updater on a device folder, version 1
installed, and the ways a published version is spoiled (each ``(version_dir, keys)``)."""

import json
import shutil

import numpy as np

from edge_agent.digests import sha256_file
from edge_agent.ota.signing import load_private_key, sign
from edge_agent.ota.updater import Updater
from edge_agent.ota.versions import Pointers, write_pointers

FAST = (0.01, 0.05)


class FakeDaemonSide:
    """Records what the updater asks of the daemon; verdicts are scripted."""

    def __init__(self, verdicts=("promote",), fail_start=False):
        self.calls, self.verdicts, self.fail_start = [], list(verdicts), fail_start

    def start_canary(self, model, version, version_dir):
        self.calls.append(("start_canary", version))
        assert (version_dir / "model.onnx").is_file()  # never a half-written dir
        if self.fail_start:
            raise RuntimeError("session failed to load")

    def canary_verdict(self, model, version):
        self.calls.append(("verdict", version))
        return self.verdicts.pop(0) if self.verdicts else None

    def promote(self, model, version):
        self.calls.append(("promote", version))

    def rollback(self, model, version):
        self.calls.append(("rollback", version))


def make_updater(url, device, pub, **kw):
    kw.setdefault("backoff_s", FAST)
    kw.setdefault("download_attempts", 2)
    return Updater("linear", registry_url=url, models_dir=device / "models", state_dir=device / "state",
                   public_keys=[pub], **kw)


def install_v1(registry, device):
    shutil.copytree(registry / "linear" / "1", device / "models" / "linear" / "1")
    write_pointers(device / "state", "linear", Pointers(active="1"))


def _resign(vdir, key_file, edit):
    m = json.loads((vdir / "manifest.json").read_text())
    edit(m)
    body = (json.dumps(m, indent=2, sort_keys=True) + "\n").encode()
    (vdir / "manifest.json").write_bytes(body)
    (vdir / "manifest.json.sig").write_bytes(sign(body, load_private_key(key_file)))


def _rehash(m, vdir, path):
    for a in m["artifacts"]:
        if a["path"] == path:
            a["sha256"], a["size"] = sha256_file(vdir / path), (vdir / path).stat().st_size


def tamper_artifact(vdir, keys):
    data = bytearray((vdir / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (vdir / "model.onnx").write_bytes(bytes(data))


def grow_artifact(vdir, keys):
    with open(vdir / "model.onnx", "ab") as f:
        f.write(b"\0" * 10)


def tamper_manifest(vdir, keys):
    m = json.loads((vdir / "manifest.json").read_text())
    m["min_agent_version"] = "0.0.1"
    (vdir / "manifest.json").write_text(json.dumps(m))


def corrupt_signature(vdir, keys):
    doc = json.loads((vdir / "manifest.json.sig").read_text())
    sig = bytearray(__import__("base64").b64decode(doc["signature"]))
    sig[0] ^= 1
    doc["signature"] = __import__("base64").b64encode(bytes(sig)).decode()
    (vdir / "manifest.json.sig").write_text(json.dumps(doc))


def wrong_golden(vdir, keys):
    with np.load(vdir / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["c1_out0"] = arrays["c1_out0"] + 0.5
    np.savez(vdir / "golden.npz", **arrays)
    _resign(vdir, keys[0], lambda m: _rehash(m, vdir, "golden.npz"))


def agent_too_new(vdir, keys):
    _resign(vdir, keys[0], lambda m: m.update(min_agent_version="99.0"))
