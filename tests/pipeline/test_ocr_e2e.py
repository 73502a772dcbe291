"""The OCR pipeline on the real daemon, against RapidOCR 1.4.4 reading the same files
(issue 18's must-shows): >= 20 rendered images over the socket (BYTES in the binary
tensor extension) and over TCP with tritonclient; the text equals RapidOCR's, boxes lie
within a few pixels. Crops of several images share recogniser batches; a repeated image is
a cache hit; one deadline covers the whole chain; metrics per step and whole."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest

from daemon_proc import AgentProcess, metric_sum
from ocr_daemon import differences, free_port, infer_bytes, install_ocr, outputs_of, rendered_cases

import ocr_reference as ref

pytestmark = pytest.mark.slow
CASES = 24


@pytest.fixture(scope="module")
def cases():
    ref.require_rapidocr()
    return rendered_cases(CASES, seed=1818)


@pytest.fixture(scope="module")
def ocr_agent(ocr_build):
    port = free_port()
    a = AgentProcess(config={"server": {"tcp": {"enabled": True, "host": "127.0.0.1", "port": port}},
                             "runtime": {"intra_op_num_threads": 0}})
    install_ocr(ocr_build, a.models_dir)
    a.port = port
    try:
        a.start(timeout=180)
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.stop(timeout=20)
        a.cleanup()


def test_socket_answers_equal_rapidocr_and_crops_of_many_images_batch_together(ocr_agent, cases):
    def one(case):
        data, want = case
        c = ocr_agent.client(timeout=120)
        try:
            status, doc = infer_bytes(c, data)
        finally:
            c.close()
        assert status == 200, doc
        out = outputs_of(doc)
        return differences(out["text"], out["boxes"], want)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        problems = [(i, p) for i, p in enumerate(pool.map(one, cases)) if p]
    assert problems == []
    assert sum(len(w.texts) for _, w in cases) >= CASES  # every image has text to read
    _, _, m = ocr_agent.client().request("GET", "/metrics")
    m = m.decode()
    lab = 'model="ocr",step="rec",version="1"'
    items, batches = metric_sum(m, "edge_agent_pipeline_step_batch_size_sum", lab), metric_sum(m, "edge_agent_pipeline_step_batch_size_count", lab)
    # Six images at a time: the recogniser ran fewer batches than images had lines.
    assert batches > 0 and items / batches > 1.0, (items, batches)
    for step in ("det", "cls", "rec"):
        assert metric_sum(m, "edge_agent_pipeline_step_items_total", f'model="ocr",step="{step}",version="1"') > 0
    assert metric_sum(m, "edge_agent_requests_total", 'model="ocr",outcome="ok",version="1"') >= CASES


def test_tritonclient_over_tcp_with_a_bytes_input(ocr_agent, cases):
    tc = pytest.importorskip("tritonclient.http")
    client = tc.InferenceServerClient(f"127.0.0.1:{ocr_agent.port}", network_timeout=120)
    meta = client.get_model_metadata("ocr")
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("image", "BYTES")]
    problems = []
    for i, (data, want) in enumerate(cases):
        inp = tc.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=object), binary_data=True)
        res = client.infer("ocr", [inp], outputs=[tc.InferRequestedOutput(n, binary_data=True) for n in ("text", "boxes", "scores")])
        text = [t.decode() for t in res.as_numpy("text")]
        boxes = res.as_numpy("boxes").reshape(len(text), 4, 2)
        assert res.as_numpy("scores").shape == (len(text),)
        p = differences(text, boxes, want)
        if p:
            problems.append((i, p))
    assert problems == []


def test_a_repeated_image_is_a_cache_hit(ocr_agent, cases):
    data, want = cases[0]
    c = ocr_agent.client()
    status, first = infer_bytes(c, data + b"")
    assert status == 200
    status, again = infer_bytes(c, data)
    assert status == 200 and again.get("parameters", {}).get("cached") is True
    assert outputs_of(again)["text"] == list(want.texts)


def test_one_deadline_covers_the_whole_chain(ocr_agent, cases):
    # An image not seen before (no cache hit), with 30 ms for decode, det, cls and rec.
    data = rendered_cases(1, seed=99)[0][0]
    c = ocr_agent.client()
    t0 = time.monotonic()
    status, doc = infer_bytes(c, data, parameters={"timeout_ms": 30})
    waited = time.monotonic() - t0
    assert (status, doc.get("code")) == (504, "deadline_exceeded"), doc
    assert waited < 2.0
    # The pipeline keeps serving: the same image without a deadline of its own is read.
    status, doc = infer_bytes(c, data)
    assert status == 200 and outputs_of(doc)["text"]


def test_a_hostile_image_gets_invalid_image_and_others_are_served(ocr_agent, cases):
    c = ocr_agent.client()
    status, doc = infer_bytes(c, cases[1][0][:200])  # truncated PNG
    assert (status, doc.get("code")) == (400, "invalid_image"), doc
    status, doc = infer_bytes(c, cases[2][0])
    assert status == 200 and differences(outputs_of(doc)["text"], outputs_of(doc)["boxes"], cases[2][1]) is None
