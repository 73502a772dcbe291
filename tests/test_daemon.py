"""The core daemon driven as a user drives it: a real process, its real socket."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from sklearn.datasets import load_digits

from daemon_proc import DIGITS, REPO, copy_digits, digits_body, make_slow_model, metric_sum, wait_for

X, _ = load_digits(return_X_y=True)
X = X.astype(np.float32)


@pytest.fixture(scope="module")
def reference():
    return ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])


def _status(a) -> dict:
    status, _, data = a.client().request("GET", "/edge/status")
    assert status == 200
    return orjson.loads(data)


def test_concurrent_requests_batch_and_match_session_run(agent_factory, reference):
    a = agent_factory()
    copy_digits(a.models_dir, batching__max_queue_delay_us=2000)
    a.start()
    n = 400

    def one(i: int):
        return (i, *a.infer_once("digits", digits_body(X[i % len(X)][None, :])))

    with cf.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(n)))
    for i, status, doc in results:
        assert status == 200, doc
        x = X[i % len(X)][None, :]
        label, proba = reference.run(None, {"input": x})
        outs = {o["name"]: o for o in doc["outputs"]}
        assert outs["label"]["data"] == label.tolist()
        np.testing.assert_allclose(outs["probabilities"]["data"], proba.ravel(), rtol=1e-5, atol=1e-6)
        assert outs["probabilities_topk_indices"]["data"][0] == int(label[0])
    _, _, metrics = a.client().request("GET", "/metrics")
    text = metrics.decode()
    batches = metric_sum(text, "edge_agent_batch_size_count", 'model="digits"')
    rows = metric_sum(text, "edge_agent_batch_size_sum", 'model="digits"')
    assert rows >= n  # warm-up rows are not counted in the histogram
    assert rows / batches > 1.0, f"average batch {rows / batches}"
    assert metric_sum(text, "edge_agent_requests_total", 'outcome="ok"') == n


def test_batch_requests_split_back_correctly(agent_factory, reference):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    x = X[:5]
    status, doc = a.client().infer("digits", digits_body(x))
    assert status == 200
    outs = {o["name"]: o for o in doc["outputs"]}
    assert outs["probabilities"]["shape"] == [5, 10]
    np.testing.assert_allclose(np.array(outs["probabilities"]["data"]).reshape(5, 10), reference.run(None, {"input": x})[1], rtol=1e-5, atol=1e-6)
    assert outs["probabilities_topk_labels"]["data"][0].startswith("digit-")


def test_coded_errors_while_others_are_served(agent_factory):
    a = agent_factory(config={"server": {"max_body_bytes": 64 * 1024}})
    copy_digits(a.models_dir)
    a.start()
    stop = threading.Event()
    good = {"ok": 0, "bad": 0}

    def steady():
        c = a.client()
        while not stop.is_set():
            status, _ = c.infer("digits", digits_body(X[:1]))
            good["ok" if status == 200 else "bad"] += 1

    t = threading.Thread(target=steady)
    t.start()
    try:
        c = a.client()
        cases = [
            (b"{not json", "digits", None, 400, "malformed_request"),
            (b'{"inputs": "x"}', "digits", None, 400, "malformed_request"),
            (orjson.dumps({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}]}), "digits", None, 400, "invalid_input"),
            (orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP64", "data": [0.0] * 64}]}), "digits", None, 400, "invalid_input"),
            (orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 10}]}), "digits", None, 400, "invalid_input"),
            (orjson.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}), "digits", None, 400, "invalid_input"),
            (orjson.dumps(digits_body(X[:1])), "nosuchmodel", None, 404, "unknown_model"),
            (orjson.dumps(digits_body(X[:1])), "digits", "7", 404, "unknown_version"),
            (b"[" + b"0," * 40000 + b"0]", "digits", None, 413, "payload_too_large"),
        ]
        for body, model, version, want_status, want_code in cases:
            url = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
            status, _, data = c.request("POST", url, body, {"Content-Type": "application/json"})
            doc = orjson.loads(data)
            assert (status, doc["code"]) == (want_status, want_code), doc
            assert doc["error"]
    finally:
        stop.set()
        t.join()
    assert good["ok"] > 0 and good["bad"] == 0
    _, _, m = a.client().request("GET", "/metrics")
    text = m.decode()
    assert metric_sum(text, "edge_agent_request_errors_total", 'code="malformed_request"') == 2
    # Shape/datatype/name errors are counted against the model; a body whose
    # data does not fill its shape is refused while decoding, before routing.
    assert metric_sum(text, "edge_agent_requests_total", 'outcome="invalid_input"') == 3
    assert metric_sum(text, "edge_agent_request_errors_total", 'code="invalid_input"') == 1
    assert metric_sum(text, "edge_agent_request_errors_total", 'code="payload_too_large"') == 1
    assert "invalid_input" in a.log() and "malformed_request" in a.log()
    assert _status(a)["stats"]["inflight"] == 0


def test_expired_deadline_and_full_queue(agent_factory):
    # Identical requests would share one inference through the cache.
    a = agent_factory(config={"cache": {"enabled": False}})
    # A long batching delay keeps requests queued, so the queue bound is reachable.
    copy_digits(a.models_dir, batching__max_queue_delay_us=1_500_000, batching__max_queue_size=4)
    a.start()
    body = digits_body(X[:1])
    body["parameters"] = {"timeout_ms": 50}
    status, doc = a.client().infer("digits", body)
    assert (status, doc["code"]) == (504, "deadline_exceeded")

    def one(_):
        return a.infer_once("digits", digits_body(X[:1]))

    with cf.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(one, range(10)))
    codes = [doc.get("code", "ok") if s != 200 else "ok" for s, doc in results]
    assert codes.count("overloaded") >= 1, codes
    assert codes.count("ok") >= 4, codes
    assert set(codes) <= {"ok", "overloaded"}
    assert _status(a)["stats"]["inflight"] == 0  # answered and refused requests alike are let go


def test_high_priority_goes_first(agent_factory):
    a = agent_factory()
    make_slow_model(a.models_dir, layers=300)  # ~20 ms per request, one at a time
    a.start()
    done: list[str] = []
    lock = threading.Lock()
    x = np.ones((1, 1024), dtype=np.float32)

    def one(tag: str, prio: str):
        c = a.client()
        body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": x.ravel().tolist()}], "parameters": {"priority": prio}}
        status, doc = c.infer("slow", body)
        assert status == 200, doc
        with lock:
            done.append(tag)

    threads = [threading.Thread(target=one, args=(f"n{i}", "normal")) for i in range(30)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # the normal requests are queued behind each other
    high = threading.Thread(target=one, args=("high", "high"))
    high.start()
    for t in threads + [high]:
        t.join()
    assert len(done) == 31
    # Sent after 30 queued normal requests, it must overtake most of them.
    assert done.index("high") < 15, done


def test_sigterm_drains_in_flight(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir, batching__max_queue_delay_us=1_500_000)
    a.start()
    results = []

    def one(_):
        return a.infer_once("digits", digits_body(X[:1]))

    with cf.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(one, i) for i in range(8)]
        time.sleep(0.5)  # all 8 are queued, waiting for the batch to fill
        a.signal(signal.SIGTERM)
        results = [f.result() for f in futs]
    assert [s for s, _ in results] == [200] * 8
    assert a.wait_exit(20) == 0
    assert not a.socket.exists()
    with pytest.raises(OSError):
        a.client().json("GET", "/v2/health/live")


def test_sighup_adds_and_removes_versions_without_failing_requests(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    stop = threading.Event()
    seen = {"ok": 0, "fail": []}

    def steady():
        c = a.client()
        while not stop.is_set():
            status, doc = c.infer("digits", digits_body(X[:1]))
            if status == 200:
                seen["ok"] += 1
            else:
                seen["fail"].append(doc)

    workers = [threading.Thread(target=steady) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        copy_digits(a.models_dir, version="2")
        a.signal(signal.SIGHUP)
        wait_for(lambda: [m["version"] for m in a.client().json("POST", "/v2/repository/index")[1]] == ["1", "2"])
        status, doc = a.client().infer("digits", digits_body(X[:1]), version="2")
        assert status == 200 and doc["model_version"] == "2"
        # The default moves to the highest version.
        assert a.client().infer("digits", digits_body(X[:1]))[1]["model_version"] == "2"
        shutil.rmtree(a.models_dir / "digits" / "1")
        a.signal(signal.SIGHUP)
        wait_for(lambda: [m["version"] for m in a.client().json("POST", "/v2/repository/index")[1]] == ["2"])
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert seen["fail"] == [] and seen["ok"] > 0
    status, doc = a.client().infer("digits", digits_body(X[:1]), version="1")
    assert (status, doc["code"]) == (404, "unknown_version")


def test_notify_socket_gets_ready_then_watchdog(agent_factory, tmp_path):
    path = f"/tmp/ea-notify-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        a = agent_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"})
        copy_digits(a.models_dir)
        a.start(wait=False)
        messages = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
        wd_at = next(i for i, m in enumerate(messages) if "WATCHDOG=1" in m)
        assert ready_at < wd_at
        assert "STATUS=serving digits/1" in messages[ready_at]
        a.wait_ready()
        a.signal(signal.SIGTERM)
        while True:
            m = sock.recv(4096).decode()
            if "STOPPING=1" in m:
                break
        assert a.wait_exit(20) == 0
    finally:
        sock.close()
        import os

        os.unlink(path)


def test_gpu_providers_configured_but_absent_fall_back_to_cpu(agent_factory):
    a = agent_factory(config={"runtime": {"providers": ["tensorrt", "cuda", "cpu"], "intra_op_num_threads": 1}})
    copy_digits(a.models_dir)
    a.start()
    status, meta = a.client().json("GET", "/v2/models/digits")
    assert status == 200
    assert meta["parameters"]["provider"] == "cpu"
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
    assert re.search(r"preferred provider tensorrt unavailable .* running on cpu", a.log())
    _, _, m = a.client().request("GET", "/metrics")
    assert 'edge_agent_model_info{default="true",model="digits",precision="fp32",provider="cpu",version="1"} 1.0' in m.decode()
    out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "models", "--socket", str(a.socket)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"digits\s+1\s+READY\s+cpu", out)


def test_binary_tensor_extension(agent_factory, reference):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    x = X[:3]
    head = orjson.dumps({
        "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    })
    status, headers, data = a.client().request(
        "POST", "/v2/models/digits/infer", head + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200
    hl = int(headers["Inference-Header-Content-Length"])
    doc = orjson.loads(data[:hl])
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    proba = np.frombuffer(data[hl:], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(proba, reference.run(None, {"input": x})[1], rtol=1e-5, atol=1e-6)


def test_health_metadata_and_cli_infer(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.start()
    c = a.client()
    assert c.json("GET", "/v2/health/live") == (200, {"live": True})
    assert c.json("GET", "/v2/models/digits/ready") == (200, {"name": "digits", "ready": True})
    status, meta = c.json("GET", "/v2/models/digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "infer", "digits", str(DIGITS / "sample.npy"), "--socket", str(a.socket), "--compact"],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout
    doc = orjson.loads(out)
    outs = {o["name"]: o["data"] for o in doc["outputs"]}
    assert outs["label"] == [2]  # the shipped sample is a 2
    assert outs["probabilities_topk_labels"][0] == "digit-2"


def test_tritonclient_over_tcp(agent_factory, reference):
    tc = pytest.importorskip("tritonclient.http")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = agent_factory(config={"server": {"tcp": {"enabled": True, "host": "127.0.0.1", "port": port}}})
    copy_digits(a.models_dir)
    a.start()
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert client.get_model_metadata("digits")["inputs"][0]["name"] == "input"
    x = X[:4]
    inp = tc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    res = client.infer("digits", [inp], outputs=[tc.InferRequestedOutput("probabilities", binary_data=True), tc.InferRequestedOutput("label", binary_data=False)])
    np.testing.assert_allclose(res.as_numpy("probabilities"), reference.run(None, {"input": x})[1], rtol=1e-5, atol=1e-6)
    assert res.as_numpy("label").tolist() == reference.run(None, {"input": x})[0].tolist()
    with pytest.raises(Exception, match="unknown model"):
        client.infer("nope", [inp])


def test_check_config_names_key_path_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  socket: /tmp/x.sock\n  tcp:\n    porrt: 1\nbatching:\n  max_queue_size: 0\n")
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{bad}:4: server.tcp.porrt: unknown key" in r.stderr
    assert f"{bad}:6: batching.max_queue_size: Input should be greater than 0" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "check-config", str(REPO / "config.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_broken_model_does_not_stop_the_others(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    bad = a.models_dir / "broken" / "1"
    bad.mkdir(parents=True)
    (bad / "model.onnx").write_bytes(b"this is not an onnx file")
    (bad / "model.yaml").write_text("max_batch_size: 4\ninputs: [{name: x, datatype: FP32, dims: [2]}]\noutputs: [{name: y, datatype: FP32, dims: [2]}]\n")
    a.start()
    assert a.client().infer("digits", digits_body(X[:1]))[0] == 200
    status, doc = a.client().infer("broken", digits_body(X[:1]))
    assert (status, doc["code"]) == (503, "model_not_ready")
    index = a.client().json("POST", "/v2/repository/index")[1]
    assert {"name": "broken", "version": "1", "state": "UNAVAILABLE"}.items() <= next(m for m in index if m["name"] == "broken").items()
    assert "model broken/1 failed to load" in a.log()


def test_startup_removes_temp_files_left_by_a_crash(agent_factory):
    a = agent_factory()
    copy_digits(a.models_dir)
    a.state_dir.mkdir(parents=True, exist_ok=True)
    stray = [a.state_dir / "ota" / ".state.json.ab12cd34.tmp", a.models_dir / "digits" / ".active.x9y8z7w6.tmp"]
    kept = a.state_dir / "ota" / "state.json"
    stray[0].parent.mkdir(parents=True, exist_ok=True)
    for f in [*stray, kept]:
        f.write_text("{}")
        os.utime(f, (1_000_000_000, 1_000_000_000))
    a.start()
    assert not any(f.exists() for f in stray)
    assert kept.exists()
    assert "left by an interrupted write" in a.log_path.read_text()
