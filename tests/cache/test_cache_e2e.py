"""The response cache inside the real daemon: real SQLite files, restarts, corruption."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import time

import numpy as np
import orjson
import onnx
from sklearn.datasets import load_digits

from daemon_proc import copy_digits, digits_body, metric_sum, wait_for

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)


def _cached(doc: dict) -> bool:
    return bool(doc.get("parameters", {}).get("cached"))


def _rows_run(a) -> float:
    _, _, m = a.client().request("GET", "/metrics")
    return metric_sum(m.decode(), "edge_agent_batch_size_sum", 'model="digits"')


def test_hit_after_restart(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    body = digits_body(X[:1])
    s1, d1 = a.client().infer("digits", body)
    s2, d2 = a.client().infer("digits", body)
    assert s1 == s2 == 200 and not _cached(d1) and _cached(d2)
    assert d1["outputs"] == d2["outputs"]
    assert a.stop() == 0
    a.start()
    s3, d3 = a.client().infer("digits", body)
    assert s3 == 200 and _cached(d3) and d3["outputs"] == d1["outputs"]
    assert _rows_run(a) == 0  # answered from disk, no inference after the restart
    body["parameters"] = {"cache": False}
    assert not _cached(a.client().infer("digits", body)[1])


def test_garbage_over_database_is_rebuilt(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    body = digits_body(X[1:2])
    a.client().infer("digits", body)
    assert a.stop() == 0
    db = a.root / "cache" / "responses.sqlite3"
    assert db.exists()
    db.write_bytes(b"\x00garbage" * 50000)
    a.start()
    status, doc = a.client().infer("digits", body)
    assert status == 200 and not _cached(doc)
    assert "corrupt" in a.log().lower()
    assert list((a.root / "cache").glob("responses.sqlite3.corrupt-*"))
    # It caches again, on disk too: a restart still hits.
    assert _cached(a.client().infer("digits", body)[1])
    assert a.stop() == 0
    a.start()
    assert _cached(a.client().infer("digits", body)[1])


def test_bounds_evict_and_ttl_expires(agent_factory):
    a = agent_factory(config={"cache": {"memory_max_bytes": 8192, "disk_max_bytes": 16384}})
    copy_digits(a.models_dir, cache__ttl_s=1.0)
    a.start()
    c = a.client()
    first = digits_body(X[:1])
    c.infer("digits", first)
    assert _cached(c.infer("digits", first)[1])
    time.sleep(1.3)
    assert not _cached(c.infer("digits", first)[1]), "an entry past its TTL was served"
    for i in range(200):
        c.infer("digits", digits_body(X[10 + i : 11 + i]))
    _, _, m = c.request("GET", "/metrics")
    text = m.decode()
    assert metric_sum(text, "edge_agent_cache_evictions_total", 'tier="memory"') > 0
    wait_for(lambda: metric_sum(c.request("GET", "/metrics")[2].decode(), "edge_agent_cache_evictions_total", 'tier="disk"') > 0)
    assert metric_sum(c.request("GET", "/metrics")[2].decode(), "edge_agent_cache_bytes", 'tier="memory"') <= 8192
    assert not _cached(c.infer("digits", digits_body(X[10:11]))[1]), "the oldest entry should have been evicted"


def test_fifty_identical_requests_run_one_inference(agent_factory):
    a = agent_factory()
    # A batching delay keeps the first request in flight while the others arrive.
    copy_digits(a.models_dir, batching__max_queue_delay_us=300_000)
    a.start()
    body = digits_body(X[5:6])

    def one(_):
        return a.infer_once("digits", body)

    with cf.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert all(s == 200 for s, _ in results)
    assert len({str(d["outputs"]) for _, d in results}) == 1
    assert _rows_run(a) == 1


def test_new_version_does_not_serve_old_answers(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    body = digits_body(X[7:8])
    a.client().infer("digits", body)
    assert _cached(a.client().infer("digits", body)[1])
    assert _cached(a.client().infer("digits", body)[1]) and _memo_hits(a) == 1  # kept bytes, version 1
    # Version 2: the same graph, a different file (so a different digest).
    v2 = copy_digits(a.models_dir, version="2")
    m = onnx.load(v2 / "model.onnx")
    m.producer_version = "2"
    onnx.save(m, v2 / "model.onnx")
    a.signal(signal.SIGHUP)
    wait_for(lambda: len(a.client().json("POST", "/v2/repository/index")[1]) == 2)
    status, doc = a.client().infer("digits", body)
    assert status == 200 and doc["model_version"] == "2" and not _cached(doc)
    status, doc = a.client().infer("digits", body, version="1")
    assert doc["model_version"] == "1" and _cached(doc)
    # Kept under the version that answered, so version 1 asked by name gets
    # the bytes kept when it was the default; version 2 never did.
    assert _memo_hits(a) == 2


def test_a_stream_of_unique_inputs_samples_and_repeats_bring_the_cache_back(agent_factory):
    """Unique inputs: the cache stops looking every request up (a metric says
    so); inputs that repeat: the sample sees hits, and every request is
    looked up and answered from the cache again."""
    a = agent_factory(config={"cache": {"sample_window": 256}})
    copy_digits(a.models_dir)
    a.start()
    c = a.client()

    def sampling() -> float:
        _, _, m = c.request("GET", "/metrics")
        return metric_sum(m.decode(), "edge_agent_cache_sampling", 'model="digits"')

    rng = np.random.default_rng(7)
    for _ in range(2000):  # ~31 sample look-ups: a verdict needs 16
        s, d = c.infer("digits", digits_body(rng.random((1, 64), dtype=np.float32) * 16))
        assert s == 200 and not _cached(d)
    assert sampling() == 1
    assert "looking up a 1/64 sample" in a.log()
    # While sampling, request bytes are not digested for the memo either.
    again = digits_body(rng.random((1, 64), dtype=np.float32) * 16)
    for _ in range(3):
        assert c.infer("digits", again)[0] == 200
    assert _memo_hits(a) == 0 and sampling() == 1
    # The same 160 inputs, over and over. While the model is dormant (about a
    # second of traffic, governor.py) nothing is fingerprinted; in the next
    # window of fingerprints the table of recent ones sees them repeat (and
    # the sampled few hit), which brings back every request.
    inputs = [digits_body(rng.random((1, 64), dtype=np.float32) * 16) for _ in range(160)]
    rounds = 0
    while sampling() == 1:
        rounds += 1
        assert rounds <= 30, "repeating inputs never brought the cache back"
        for body in inputs:
            assert c.infer("digits", body)[0] == 200
    assert "looking up every request again" in a.log()
    for body in inputs:  # stored in the round before, now looked up
        c.infer("digits", body)
    answers = [c.infer("digits", body)[1] for body in inputs]
    assert all(_cached(d) for d in answers)


def _memo_hits(a) -> float:
    return metric_sum(a.client().request("GET", "/metrics")[2].decode(), "edge_agent_cache_hits_total", 'tier="memo"')


def test_repeated_request_bytes_get_the_kept_answer_bytes(agent_factory):
    """The memo of encoded answers: from the third identical request on, the
    answer's bytes come back without decoding, keying or encoding; it
    follows the request's exact bytes (id, binary framing), the routed
    version, and the cache's TTL and clear."""
    a = agent_factory()
    copy_digits(a.models_dir, cache__ttl_s=2.0)
    a.start()
    c = a.client()
    url = "/v2/models/digits/infer"
    body = orjson.dumps(digits_body(X[20:21]))
    answers = [c.request("POST", url, body) for _ in range(4)]
    assert [s for s, _, _ in answers] == [200] * 4
    first, second, third, fourth = (orjson.loads(d) for _, _, d in answers)
    assert not _cached(first) and _cached(second) and third == second == fourth
    assert answers[2][2] == answers[1][2]  # the same bytes
    assert _memo_hits(a) == 2 and _rows_run(a) == 1

    # Another id: other bytes, so a memo entry of its own (the cache entry
    # is shared: the id does not change the answer), with its own id.
    with_id = dict(digits_body(X[20:21]), id="req-7")
    for _ in range(3):
        s, doc = c.infer("digits", with_id)
        assert s == 200 and doc["id"] == "req-7" and _cached(doc)
    assert _memo_hits(a) == 4

    # Binary framing: the header length is part of the key.
    x = X[21:22]
    head = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
    hdrs = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    got = [c.request("POST", url, head + x.tobytes(), hdrs) for _ in range(3)]
    assert [s for s, _, _ in got] == [200] * 3 and got[1][2] == got[2][2]
    hl = int(got[2][1]["Inference-Header-Content-Length"])  # a binary answer, framed as the first
    assert hl == int(got[1][1]["Inference-Header-Content-Length"]) and _cached(orjson.loads(got[2][2][:hl]))
    assert len(got[2][2]) == hl + 40  # the ten probabilities, FP32
    assert _memo_hits(a) == 5

    # A request that bypasses the cache is never answered from the memo,
    # however often its bytes repeat.
    bypass = orjson.dumps(dict(digits_body(X[20:21]), parameters={"cache": False}))
    for _ in range(3):
        s, _, data = c.request("POST", url, bypass)
        assert s == 200 and not _cached(orjson.loads(data))
    assert _memo_hits(a) == 5

    # The TTL of the cache entry bounds the kept bytes too.
    time.sleep(2.2)
    s, _, data = c.request("POST", url, body)
    assert s == 200 and not _cached(orjson.loads(data)), "an answer past its TTL was served from the memo"
    assert _memo_hits(a) == 5
