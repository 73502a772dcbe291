#!/usr/bin/env python3
"""Train the demo digits classifier and export it as an ONNX model version.

Data: scikit-learn's bundled 8x8 digits set (ships inside the scikit-learn
wheel, nothing is downloaded). Fixed seed, so the export is reproducible.
Writes {out}/model.onnx, {out}/model.yaml, {out}/labels.txt and
{out}/sample.json (one test digit as a KServe v2 request body).

    python scripts/train_digits.py --out models/digits/1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEED = 0

MODEL_YAML = """\
# Demo model: 8x8 handwritten digits (scikit-learn's bundled set), MLP 64-64-10.
# Input: 64 pixel intensities 0..16, row-major. Built by scripts/train_digits.py.
name: digits
max_batch_size: 64
inputs:
  - name: input
    datatype: FP32
    dims: [64]
outputs:
  - name: label
    datatype: INT64
    dims: []
  - name: probabilities
    datatype: FP32
    dims: [10]
batching:
  # No added wait: under load the next batch fills while one runs.
  max_queue_delay_us: 0
warmup:
  batch_sizes: [1, 8, 64]
labels: labels.txt
postprocess:
  - op: topk
    output: probabilities
    k: 3
cache:
  enabled: true
  ttl_s: 86400
accuracy:
  task: classification
  test_top1: {acc}
  test_samples: {n}
"""


def export_onnx(clf) -> onnx.ModelProto:
    """Standard ONNX ops only (no ai.onnx.ml domain), so TensorRT can take the
    whole graph on a Jetson: (x - mean) / scale -> MatMul+Add -> Relu ->
    MatMul+Add -> Softmax; ArgMax gives the label."""
    scaler, mlp = clf[0], clf[1]
    f32 = lambda a, name: numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)  # noqa: E731
    inits = [
        f32(scaler.mean_, "mean"),
        f32(scaler.scale_, "scale"),
        f32(mlp.coefs_[0], "w1"),
        f32(mlp.intercepts_[0], "b1"),
        f32(mlp.coefs_[1], "w2"),
        f32(mlp.intercepts_[1], "b2"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-agent train_digits.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/digits/1"))
    args = ap.parse_args()

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=SEED))
    clf.fit(x_train, y_train)
    acc = float(clf.score(x_test, y_test))
    print(f"test accuracy {acc:.4f} on {len(y_test)} held-out digits")

    onx = export_onnx(clf)
    # The exported graph must agree with scikit-learn before it is shipped.
    import onnxruntime as ort

    sess = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {"input": x_test})
    np.testing.assert_allclose(proba, clf.predict_proba(x_test), rtol=1e-4, atol=1e-5)
    assert (label == clf.predict(x_test)).all()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.onnx").write_bytes(onx.SerializeToString())
    (args.out / "model.yaml").write_text(MODEL_YAML.format(acc=round(acc, 4), n=len(y_test)))
    (args.out / "labels.txt").write_text("".join(f"digit-{i}\n" for i in range(10)))
    sample = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x_test[0].tolist()}]}
    (args.out / "sample.json").write_text(json.dumps(sample) + "\n")
    np.save(args.out / "sample.npy", x_test[:1])
    print(f"sample digit is a {int(y_test[0])}; wrote {args.out}/")


if __name__ == "__main__":
    main()
