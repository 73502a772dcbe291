"""The shipped demo model is what its script builds from scikit-learn's bundled data.

The graph and every other file must match byte for byte. The weights must
match to a few float32 ulps, not bit for bit: training runs through
OpenBLAS, whose kernels (chosen per CPU: Haswell, SkylakeX, Zen...) sum in
different orders, so two CPUs train weights that differ in the last bits
(1.2e-7 at most between an AMD Zen 1 and the machine that built the shipped
file). The answers must not differ: every one of the 1,797 digits gets the
same label.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from sklearn.datasets import load_digits

from daemon_proc import DIGITS, REPO


def _graph_and_weights(path):
    model = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    del model.graph.initializer[:]
    return model.SerializeToString(), weights


def test_train_digits_reproduces_the_committed_model(tmp_path):
    out = tmp_path / "digits" / "1"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "train_digits.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test accuracy 0.97" in r.stdout
    for name in ("model.yaml", "labels.txt", "sample.json", "sample.npy"):
        assert (out / name).read_bytes() == (DIGITS / name).read_bytes(), name

    graph, weights = _graph_and_weights(out / "model.onnx")
    shipped_graph, shipped = _graph_and_weights(DIGITS / "model.onnx")
    assert graph == shipped_graph
    assert sorted(weights) == sorted(shipped)
    for name, w in weights.items():
        assert w.dtype == shipped[name].dtype and w.shape == shipped[name].shape, name
        np.testing.assert_allclose(w, shipped[name], rtol=0, atol=1e-5, err_msg=name)

    x = load_digits().data.astype(np.float32)
    built = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    ref = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_array_equal(built[0], ref[0])
    np.testing.assert_allclose(built[1], ref[1], rtol=0, atol=1e-5)
