"""Image inputs on the real daemon, driven as users do: curl with an image body on the socket,
tritonclient with a BYTES input over TCP, MQTT 5 with a content type (mosquitto_rr and the
daemon's own client), MQTT 3.1.1 with a topic suffix, and the CLI; every hostile image gets its
code over the socket and over MQTT while another client keeps being served.

One daemon and one broker for the module (2 cores shared): the digits graph served twice,
as ``digits`` (64 floats) and as ``digits-image`` (a PNG of a digit, model.yaml ``image:``).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import orjson
import paho.mqtt.client as paho
import pytest

from brokers import Mosquitto, free_port
from daemon_proc import DIGITS, REPO, AgentProcess, copy_digits, digits_body
from edge_agent.client import AgentClient
from edge_agent.transports.mqtt.client import MqttInferClient
from image_files import digit_pixels, digit_png, digits_image_model, encode, hostile_images, zlib_bomb_png

PREFIX = "img"
DEVICE = "cam-unit"
MODEL = "digits-image"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    broker = Mosquitto(root / "broker").start()
    port = free_port()
    a = AgentProcess(config={
        "device_id": DEVICE,
        "server": {"tcp": {"enabled": True, "host": "127.0.0.1", "port": port}},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "prefix": PREFIX,
                 "client_id": "edge-agent-img", "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
    })
    copy_digits(a.models_dir)
    digits_image_model(a.models_dir)
    try:
        a.start()
        yield a, broker, port
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.stop(timeout=15)
        a.cleanup()
        broker.kill()


@pytest.fixture(scope="module")
def png_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("png") / "digit.png"
    p.write_bytes(digit_png())
    return p


def _outputs(doc: dict) -> dict:
    assert "outputs" in doc, doc
    return {o["name"]: o["data"] for o in doc["outputs"]}


def _tensor_answer(a) -> dict:
    """The digits model's answer for the same digit sent as 64 floats."""
    status, doc = a.client().infer("digits", digits_body(np.load(DIGITS / "sample.npy")))
    assert status == 200
    return _outputs(doc)


def _same_answer(outs: dict, ref: dict) -> None:
    assert outs["label"] == ref["label"] == [2]
    assert outs["probabilities_topk_labels"] == ref["probabilities_topk_labels"]
    # 0..16 -> 0..255 in 8 bits -> x 16/255: within 1/30 of the floats the tensor path sends.
    np.testing.assert_allclose(outs["probabilities"], ref["probabilities"], atol=2e-3)


def _curl(a, path: str, ctype: str) -> tuple[int, dict]:
    r = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--unix-socket", str(a.socket), "--data-binary", f"@{path}",
                        "-H", f"Content-Type: {ctype}", f"http://localhost/v2/models/{MODEL}/infer"],
                       capture_output=True, timeout=30, check=True)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code), orjson.loads(body)


# --- every transport ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_image_body_on_the_socket(rig, png_file, tmp_path):
    a, _, _ = rig
    status, doc = _curl(a, str(png_file), "image/png")
    assert status == 200, doc
    _same_answer(_outputs(doc), _tensor_answer(a))
    jpeg = tmp_path / "digit.jpg"
    jpeg.write_bytes(encode(digit_pixels(), "JPEG", quality=95))
    status, doc = _curl(a, str(jpeg), "image/jpeg")
    assert status == 200 and _outputs(doc)["label"] == [2], doc


def test_tritonclient_bytes_input_over_tcp(rig):
    tc = pytest.importorskip("tritonclient.http")
    a, _, port = rig
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    # Three images in one request: a batch of 3 rows, each decoded on the batcher's thread.
    images = np.array([[digit_png()], [encode(digit_pixels(), "JPEG", quality=95)], [digit_png()]], dtype=object)
    inp = tc.InferInput("image", [3, 1], "BYTES")
    inp.set_data_from_numpy(images, binary_data=True)
    res = client.infer(MODEL, [inp])
    assert res.as_numpy("label").tolist() == [2, 2, 2]
    ref = _tensor_answer(a)
    np.testing.assert_allclose(res.as_numpy("probabilities")[0], ref["probabilities"][:10], atol=2e-3)
    # An image body and the same bytes as a BYTES input are one request to the cache.
    inp1 = tc.InferInput("image", [1, 1], "BYTES")
    inp1.set_data_from_numpy(images[:1], binary_data=True)
    status, doc = a.client().infer_image(MODEL, digit_png(), "image/png")
    assert status == 200 and doc.get("parameters", {}).get("cached") is True, doc


def _mqtt_client(broker, protocol: str = "5") -> MqttInferClient:
    return MqttInferClient("127.0.0.1", broker.port, device=DEVICE, prefix=PREFIX, protocol=protocol)


def test_mqtt5_payload_with_content_type(rig, png_file):
    a, broker, _ = rig

    async def go():
        c = _mqtt_client(broker)
        await c.connect()
        try:
            ok = await c.infer(MODEL, digit_png(), content_type="image/png", timeout=20)
            bad = await c.infer(MODEL, b"", content_type="image/png", timeout=20)
            return ok.doc, bad.doc
        finally:
            await c.close()

    ok, bad = asyncio.run(go())
    _same_answer(_outputs(ok), _tensor_answer(a))
    assert bad["code"] == "invalid_image", bad


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
def test_mosquitto_pub_sends_a_png_file(rig, png_file):
    """mosquitto_pub -f (mosquitto_rr 2.0.11 sends an empty payload for -f/-s: its answer would be
    invalid_image), with the content type and a response topic as MQTT 5 properties."""
    a, broker, _ = rig
    reply = f"{PREFIX}/clients/pub/replies"
    got: list = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5)
    c.on_message = lambda cl, ud, msg: got.append(orjson.loads(msg.payload))
    c.connect("127.0.0.1", broker.port)
    c.subscribe(reply, qos=1)
    c.loop_start()
    try:
        time.sleep(0.3)
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "5", "-q", "1",
                        "-t", f"{PREFIX}/{DEVICE}/infer/{MODEL}", "-f", str(png_file), "-D", "PUBLISH", "content-type", "image/png",
                        "-D", "PUBLISH", "response-topic", reply], check=True, timeout=30)
        end = time.monotonic() + 20
        while not got and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        c.loop_stop()
        c.disconnect()
    assert got and _outputs(got[0])["label"] == [2], got


def test_mqtt311_topic_suffix_answers_on_the_default_response_topic(rig):
    a, broker, _ = rig
    got: list = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"cam311-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
    c.on_message = lambda cl, ud, msg: got.append(orjson.loads(msg.payload))
    c.connect("127.0.0.1", broker.port)
    c.subscribe(f"{PREFIX}/{DEVICE}/responses", qos=1)
    c.loop_start()
    try:
        time.sleep(0.3)
        c.publish(f"{PREFIX}/{DEVICE}/infer/{MODEL}/png", digit_png(), qos=1)
        c.publish(f"{PREFIX}/{DEVICE}/infer/{MODEL}/1/jpeg", b"\xff\xd8\xff not really a jpeg", qos=1)
        end = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        c.loop_stop()
        c.disconnect()
    assert len(got) == 2, got
    by_kind = {("error" in d): d for d in got}
    assert _outputs(by_kind[False])["label"] == [2]
    assert by_kind[True]["code"] == "invalid_image"


def test_cli_infer_image_over_socket_and_mqtt(rig, png_file):
    a, broker, _ = rig
    base = [sys.executable, "-m", "edge_agent.cli", "infer", MODEL, str(png_file), "--compact"]
    out = subprocess.run(base + ["--socket", str(a.socket)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert _outputs(orjson.loads(out.stdout))["probabilities_topk_labels"][0] == "digit-2"
    out = subprocess.run(base + ["--mqtt", f"127.0.0.1:{broker.port}", "--device", DEVICE, "--prefix", PREFIX, "--timeout", "20"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert _outputs(orjson.loads(out.stdout))["label"] == [2]


def test_an_image_body_to_a_tensor_model_is_invalid_input(rig):
    a, _, _ = rig
    status, doc = a.client().infer_image("digits", digit_png(), "image/png")
    assert (status, doc["code"]) == (400, "invalid_input") and "takes no image" in doc["error"]


# --- hostile images -------------------------------------------------------------------------


def _vm_hwm_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


class _Bystander(threading.Thread):
    """Another client, sending tensors to ``digits`` over the socket the whole time."""

    def __init__(self, a) -> None:
        super().__init__(daemon=True)
        self.client = a.client()
        self.body = digits_body(np.load(DIGITS / "sample.npy"))
        self.stop = threading.Event()
        self.statuses: list = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.statuses.append(self.client.infer("digits", self.body)[0])
            time.sleep(0.01)


def test_hostile_images_get_their_codes_on_both_transports_while_others_are_served(rig):
    a, broker, _ = rig
    hostile = hostile_images()
    # A real bomb as well: ~70 KB of PNG that would be 192 MB as BGR (the model takes 1M pixels).
    hostile["zlib_bomb"] = (zlib_bomb_png(8000), "image_too_large")
    hostile["over_max_bytes"] = (digit_png() + b"\0" * 70000, "image_too_large")
    bystander = _Bystander(a)
    hwm_before = _vm_hwm_kb(a.proc.pid)
    bystander.start()
    try:
        client = a.client()
        for name, (data, code) in hostile.items():
            status, doc = client.infer_image(MODEL, data, "image/png")
            assert doc.get("code") == code, (name, status, doc)
            assert status == (413 if code == "image_too_large" else 400), name

        async def over_mqtt():
            c = _mqtt_client(broker)
            await c.connect()
            try:
                return {name: (await c.infer(MODEL, data, content_type="image/png", timeout=20)).doc
                        for name, (data, _) in hostile.items()}
            finally:
                await c.close()

        answers = asyncio.run(over_mqtt())
        for name, (_, code) in hostile.items():
            assert answers[name].get("code") == code, (name, answers[name])
        # The same hostile bytes as a BYTES input of a KServe body: the same codes.
        for name in ("truncated_png", "huge_dimensions"):
            data, code = hostile[name]
            body, hl = _binary_bytes_body(data)
            status, _, raw = client.request("POST", f"/v2/models/{MODEL}/infer", body,
                                            {"Inference-Header-Content-Length": str(hl)})
            assert orjson.loads(raw)["code"] == code, name
    finally:
        bystander.stop.set()
        bystander.join(10)
    assert bystander.statuses and set(bystander.statuses) == {200}, bystander.statuses[-5:]
    # Served once more after all that, and the bomb never grew the daemon by its size.
    assert _outputs(a.client().infer_image(MODEL, digit_png(), "image/png")[1])["label"] == [2]
    grown_mb = (_vm_hwm_kb(a.proc.pid) - hwm_before) / 1024
    assert grown_mb < 64, f"the daemon's peak RSS grew {grown_mb:.0f} MB"
    log = a.log()
    assert "invalid_image" in log and "image_too_large" in log


def _binary_bytes_body(data: bytes) -> tuple[bytes, int]:
    import struct

    head = orjson.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data) + 4}}]})
    return head + struct.pack("<I", len(data)) + data, len(head)
