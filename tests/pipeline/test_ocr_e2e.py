"""The OCR pipeline on the real daemon, against RapidOCR 1.4.4 reading the same files
(issue 18's must-shows): 24 rendered images (generated strings; fonts, sizes, slight
rotations, noise; PNG and JPEG) sent as curl sends them (an image body on the socket), with
tritonclient over TCP (a BYTES input), as MQTT 5 binary payloads with a content type, and
with the CLI (`edge-agent infer ocr photo.png`, socket and --mqtt): every answer's text
equals RapidOCR's, its boxes lie within a few pixels. Crops of several images share
recogniser batches; a repeated image is a cache hit; one deadline covers the whole chain;
metrics per step and whole. One daemon and one broker for the module (2 shared cores)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest

from brokers import Mosquitto
from daemon_proc import REPO, AgentProcess, metric_sum
from edge_agent.transports.mqtt.client import MqttInferClient
from ocr_daemon import differences, free_port, infer_bytes, install_ocr, outputs_of, rendered_cases

import ocr_reference as ref

pytestmark = pytest.mark.slow
CASES = 24


@pytest.fixture(scope="module")
def cases():
    ref.require_rapidocr()
    return rendered_cases(CASES, seed=1818)


JPEG = b"\xff\xd8"
PREFIX = "cams"
DEVICE = "ocr-unit"


@pytest.fixture(scope="module")
def files(cases, tmp_path_factory):
    """The cases as files, as a user has them (photo.png / photo.jpg)."""
    d = tmp_path_factory.mktemp("photos")
    out = []
    for i, (data, want) in enumerate(cases):
        ext = "jpg" if data[:2] == JPEG else "png"
        p = d / f"photo-{i:02d}.{ext}"
        p.write_bytes(data)
        out.append((p, want))
    return out


@pytest.fixture(scope="module")
def ocr_agent(ocr_build, tmp_path_factory):
    broker = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    port = free_port()
    a = AgentProcess(config={"device_id": DEVICE,
                             "server": {"tcp": {"enabled": True, "host": "127.0.0.1", "port": port}},
                             "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": PREFIX,
                                      "client_id": "edge-agent-ocr", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5,
                                      "rate_limit": {"rate": 100, "burst": 100}},
                             # Every transport's answer is the pipeline's own, not the cache's (its test has its own daemon).
                             "cache": {"enabled": False},
                             "runtime": {"intra_op_num_threads": 0}})
    install_ocr(ocr_build, a.models_dir)
    a.port, a.broker = port, broker
    try:
        a.start(timeout=180)
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.stop(timeout=20)
        a.cleanup()
        broker.kill()


def _answer(doc: dict, want) -> str | None:
    if "outputs" not in doc:
        return f"no outputs: {doc}"
    out = outputs_of(doc)
    return differences(out["text"], out["boxes"], want)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_image_bodies_read_as_rapidocr_reads_them_and_crops_of_many_images_batch_together(ocr_agent, files):
    def one(case):
        path, want = case
        ctype = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        r = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", str(ocr_agent.socket), "--data-binary",
                            f"@{path}", "-H", f"Content-Type: {ctype}", "http://localhost/v2/models/ocr/infer"],
                           capture_output=True, timeout=120, check=True)
        body, _, code = r.stdout.rpartition(b"\n")
        doc = orjson.loads(body)
        return _answer(doc, want) if code == b"200" else f"{code}: {doc}"

    cases = files

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        problems = [(i, p) for i, p in enumerate(pool.map(one, cases)) if p]
    assert problems == []
    assert all(len(w.texts) for _, w in cases)  # every image has text to read
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


def test_mqtt5_binary_payloads_with_a_content_type(ocr_agent, cases):
    async def go():
        c = MqttInferClient("127.0.0.1", ocr_agent.broker.port, device=DEVICE, prefix=PREFIX, protocol="5")
        await c.connect()
        try:
            sem = asyncio.Semaphore(6)

            async def one(data):
                async with sem:
                    ctype = "image/jpeg" if data[:2] == JPEG else "image/png"
                    return (await c.infer("ocr", data, content_type=ctype, timeout=120)).doc
            return await asyncio.gather(*(one(d) for d, _ in cases))
        finally:
            await c.close()

    docs = asyncio.run(go())
    problems = [(i, p) for i, (doc, (_, want)) in enumerate(zip(docs, cases)) if (p := _answer(doc, want))]
    assert problems == []


def test_cli_infer_ocr_photo_over_the_socket_and_mqtt(ocr_agent, files):
    def one(case, mqtt=False):
        path, want = case
        cmd = [sys.executable, "-m", "edge_agent.cli", "infer", "ocr", str(path), "--compact"]
        cmd += (["--mqtt", f"127.0.0.1:{ocr_agent.broker.port}", "--device", DEVICE, "--prefix", PREFIX, "--timeout", "60"]
                if mqtt else ["--socket", str(ocr_agent.socket)])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=180)
        if out.returncode != 0:
            return f"exit {out.returncode}: {out.stderr[-500:]}"
        return _answer(orjson.loads(out.stdout), want)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        problems = [(i, p) for i, p in enumerate(pool.map(one, files)) if p]
        problems += [("mqtt", i, p) for i, p in enumerate(pool.map(lambda c: one(c, mqtt=True), files[:4])) if p]
    assert problems == []


def test_a_repeated_image_is_a_cache_hit_whichever_way_it_comes(agent_factory, ocr_build, cases):
    a = agent_factory(config={"runtime": {"intra_op_num_threads": 0}})
    install_ocr(ocr_build, a.models_dir)
    a.start(timeout=180)
    data, want = cases[0]
    c = a.client()
    status, first = infer_bytes(c, data)
    assert status == 200 and not first.get("parameters", {}).get("cached")
    # The same bytes as an image body: the same request to the cache (keyed on the image bytes).
    status, _, raw = c.request("POST", "/v2/models/ocr/infer", data, {"Content-Type": "image/png"})
    again = orjson.loads(raw)
    assert status == 200 and again.get("parameters", {}).get("cached") is True, again
    assert outputs_of(again)["text"] == list(want.texts)
    # Another image is not.
    status, other = infer_bytes(c, cases[1][0])
    assert status == 200 and not other.get("parameters", {}).get("cached")
    _, _, m = c.request("GET", "/metrics")
    assert metric_sum(m.decode(), "edge_agent_pipeline_step_items_total", 'model="ocr",step="det",version="1"') == 2 + 1  # warm-up + 2 misses


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
