#!/usr/bin/env python3
"""The digits model behind Mosec (Rust HTTP front, Python workers, dynamic
batching), doing the same work per request as edge-agent: decode the KServe v2
JSON body, batch, run ONNX Runtime, the model.yaml's post-processing (top-3
indices, values and labels), encode a v2 JSON answer with the same five
outputs (bench.py checks the answers match byte for byte). bench.py drives it
with the same client as the daemon, as the reference point for the target.

    python scripts/mosec_digits.py --port 8001 --address 127.0.0.1
"""

from __future__ import annotations

import os

import numpy as np
import orjson
from mosec import Server, Worker

MODEL = os.environ.get("DIGITS_MODEL", os.path.join(os.path.dirname(__file__), "..", "models", "digits", "1", "model.onnx"))
LABELS = os.path.join(os.path.dirname(MODEL), "labels.txt")
TOPK = 3


class Digits(Worker):
    def __init__(self) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
        with open(LABELS) as f:
            self.labels = np.array([line.strip() for line in f if line.strip()], dtype=object)

    def deserialize(self, data: bytes) -> np.ndarray:
        doc = orjson.loads(data)
        t = doc["inputs"][0]
        return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

    def forward(self, data: list[np.ndarray]) -> list[dict]:
        x = np.concatenate(data)
        label, proba = self.session.run(None, {"input": x})
        idx = np.argsort(-proba, axis=-1, kind="stable")[:, :TOPK]
        values = np.take_along_axis(proba, idx, axis=-1)
        names = self.labels[idx]
        out, start = [], 0
        for d in data:
            end = start + len(d)
            n = end - start
            out.append({
                "model_name": "digits",
                "model_version": "1",
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [n], "data": label[start:end]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [n, 10], "data": proba[start:end].ravel()},
                    {"name": "probabilities_topk_indices", "datatype": "INT64", "shape": [n, TOPK], "data": idx[start:end].ravel()},
                    {"name": "probabilities_topk_values", "datatype": "FP32", "shape": [n, TOPK], "data": values[start:end].ravel()},
                    {"name": "probabilities_topk_labels", "datatype": "BYTES", "shape": [n, TOPK], "data": names[start:end].ravel().tolist()},
                ],
            })
            start = end
        return out

    def serialize(self, data: dict) -> bytes:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


if __name__ == "__main__":
    server = Server()
    # MOSEC_WAIT_MS: how long a partial batch waits (Mosec's own default is 10 ms).
    server.append_worker(Digits, num=1, max_batch_size=64, max_wait_time=int(os.environ.get("MOSEC_WAIT_MS", "10")))
    server.run()
