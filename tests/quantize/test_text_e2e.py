"""A real transformer served end to end: text in over the socket and MQTT, embedding out."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import yaml
from tokenizers import Tokenizer

from edge_agent.transports.mqtt.client import MqttInferClient
from brokers import Mosquitto

TEXTS = [
    "The forklift is parked in bay 4.",
    "Camera 2 reports a blocked conveyor belt near the packing station.",
    "Stop.",
]


def reference_embeddings(version_dir, texts, max_length=256) -> np.ndarray:
    """Tokenizer + the exported FP32 graph + mean pooling, computed here without the daemon."""
    tok = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    out = []
    for t in texts:
        enc = tok.encode(t)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        hidden = sess.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})[0][0]
        v = hidden.mean(axis=0)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def _body(texts) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}], "parameters": {"cache": False}}


def _embedding(doc) -> np.ndarray:
    o = next(o for o in doc["outputs"] if o["name"] == "embedding")
    return np.array(o["data"], dtype=np.float32).reshape(o["shape"])


def _variant(src, dest, **text_changes):
    shutil.copytree(src, dest)
    spec = yaml.safe_load((dest / "model.yaml").read_text())
    spec["text"].update(text_changes)
    (dest / "model.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture
def minilm_agent(agent_factory, minilm_build, tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    a = agent_factory(config={"mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": prefix,
                                       "client_id": f"ea-{prefix}", "reconnect_min_s": 0.1}})
    m = a.models_dir / "minilm"
    shutil.copytree(minilm_build / "1", m / "1")  # FP32
    shutil.copytree(minilm_build / "2", m / "2")  # INT8 dynamic
    _variant(minilm_build / "1", m / "11", max_length=8, on_overflow="error")
    _variant(minilm_build / "1", m / "12", max_length=8, on_overflow="truncate")
    a.start(timeout=120)
    yield a, broker, prefix
    broker.kill()


def _mqtt(broker, prefix, body, version):
    async def run():
        c = MqttInferClient("127.0.0.1", broker.port, device="test-unit", prefix=prefix)
        await c.connect()
        try:
            return (await c.infer("minilm", body, version=version, timeout=60)).doc
        finally:
            await c.close()

    return asyncio.run(run())


def test_text_in_embedding_out_over_socket_and_mqtt(minilm_agent, minilm_build):
    a, broker, prefix = minilm_agent
    ref = reference_embeddings(minilm_build / "1", TEXTS)
    status, doc = a.client().infer("minilm", _body(TEXTS), version="1")
    assert status == 200, doc
    np.testing.assert_allclose(_embedding(doc), ref, atol=1e-5)
    np.testing.assert_allclose(_embedding(_mqtt(broker, prefix, _body(TEXTS), "1")), ref, atol=1e-5)
    # INT8 (dynamic): within the accuracy gate's bound, not bit-equal.
    status, doc = a.client().infer("minilm", _body(TEXTS), version="2")
    cos = (_embedding(doc) * ref).sum(axis=1)
    assert cos.min() >= 0.98 and cos.mean() >= 0.99, cos
    cos_mqtt = (_embedding(_mqtt(broker, prefix, _body(TEXTS), "2")) * ref).sum(axis=1)
    np.testing.assert_allclose(cos_mqtt, cos, atol=1e-5)


def test_concurrent_text_requests_batch_with_padding_and_match(minilm_agent, minilm_build):
    import concurrent.futures as cf

    a, _, _ = minilm_agent
    ref = reference_embeddings(minilm_build / "1", TEXTS)

    def one(i):
        c = a.client()
        try:
            return i, c.infer("minilm", _body([TEXTS[i % 3]]), version="1")
        finally:
            c.close()

    with cf.ThreadPoolExecutor(12) as pool:
        for i, (status, doc) in pool.map(one, range(36)):
            assert status == 200
            np.testing.assert_allclose(_embedding(doc)[0], ref[i % 3], atol=1e-5)


def test_over_long_text_truncated_or_refused_and_invalid_utf8(minilm_agent, minilm_build):
    a, _, _ = minilm_agent
    long_text = "the quick brown fox jumps over the lazy dog " * 5
    status, doc = a.client().infer("minilm", _body([long_text]), version="11")
    assert (status, doc["code"]) == (400, "sequence_too_long")
    status, doc = a.client().infer("minilm", _body([long_text]), version="12")
    assert status == 200
    np.testing.assert_allclose(_embedding(doc), reference_embeddings(minilm_build / "1", [long_text], max_length=8), atol=1e-5)
    # Invalid UTF-8 can only travel in the binary-tensor form.
    raw = b"\xff\xfe not utf-8"
    blob = len(raw).to_bytes(4, "little") + raw
    head = orjson.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}]})
    status, _, data = a.client().request("POST", "/v2/models/minilm/versions/1/infer", head + blob,
                                         {"Inference-Header-Content-Length": str(len(head))})
    assert (status, orjson.loads(data)["code"]) == (400, "invalid_utf8")
    assert a.client().infer("minilm", _body(TEXTS[:1]), version="1")[0] == 200
