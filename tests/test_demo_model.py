"""The shipped demo model is exactly what its script builds from scikit-learn's bundled data."""

from __future__ import annotations

import subprocess
import sys

from daemon_proc import DIGITS, REPO


def test_train_digits_reproduces_the_committed_model(tmp_path):
    out = tmp_path / "digits" / "1"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_digits.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test accuracy 0.97" in r.stdout
    for name in ("model.onnx", "model.yaml", "labels.txt", "sample.json", "sample.npy"):
        assert (out / name).read_bytes() == (DIGITS / name).read_bytes(), name
