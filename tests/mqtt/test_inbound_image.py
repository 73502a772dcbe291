"""parse_request with an image payload: MQTT 5 content type, the 3.1.1 topic suffix, and
what stays a KServe body (real paho messages and Properties, no broker)."""

from __future__ import annotations

import orjson
import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import EdgeError
from edge_agent.transports.mqtt.inbound import parse_request
from edge_agent.transports.mqtt.reply_topics import DEFAULT_REPLY_TOPICS, ReplyTopics
from edge_agent.transports.mqtt.topics import DeviceTopics, infer_image_topic, split_image_suffix
from edge_agent.types import IMAGE_BODY

TOPICS = DeviceTopics.build("edge", "cam", "default")
RULE = ReplyTopics(DEFAULT_REPLY_TOPICS, prefix="edge", device="cam", default_topic=TOPICS.responses, max_bytes=512)
PNG = b"\x89PNG\r\n\x1a\n not decoded here"


def _msg(topic: str, payload: bytes, content_type=None, corr=None) -> MQTTMessage:
    msg = MQTTMessage(mid=3, topic=topic.encode())
    msg.payload = payload
    msg.qos = 1
    props = Properties(PacketTypes.PUBLISH)
    if content_type is not None:
        props.ContentType = content_type
    if corr is not None:
        props.CorrelationData = corr
        props.ResponseTopic = "edge/clients/c1/replies"
    msg.properties = props
    return msg


def _parse(msg, v5=True, max_bytes=1 << 20):
    return parse_request(msg, msg.topic[len(TOPICS.infer_prefix):], v5, TOPICS.infer_prefix, max_bytes, RULE)


def test_mqtt5_content_type_makes_the_payload_an_image():
    req, reply = _parse(_msg(TOPICS.infer_prefix + "ocr/2", PNG, "image/png", corr=b"k1"))
    assert (req.model, req.version) == ("ocr", "2")
    assert list(req.inputs) == [IMAGE_BODY] and req.inputs[IMAGE_BODY].tolist() == [PNG]
    assert (reply.topic, reply.correlation) == ("edge/clients/c1/replies", b"k1")


@pytest.mark.parametrize("suffix", ["jpeg", "png", "jpg", "image"])
def test_mqtt311_topic_suffix_makes_the_payload_an_image(suffix):
    topic = infer_image_topic("edge", "cam", "ocr", None, suffix)
    assert topic == f"edge/cam/infer/ocr/{suffix}"
    req, reply = _parse(_msg(topic, PNG), v5=False)
    assert req.model == "ocr" and req.version is None and req.inputs[IMAGE_BODY].tolist() == [PNG]
    assert reply.topic == TOPICS.responses  # a raw image names no reply topic
    req, _ = _parse(_msg(infer_image_topic("edge", "cam", "ocr", "3", suffix), PNG), v5=False)
    assert (req.model, req.version) == ("ocr", "3")


def test_without_content_type_or_suffix_the_payload_is_a_kserve_body():
    req, _ = _parse(_msg(TOPICS.infer_prefix + "ocr", PNG))
    assert isinstance(req, EdgeError) and req.code == "malformed_request"
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    req, _ = _parse(_msg(TOPICS.infer_prefix + "ocr", orjson.dumps(body), "application/json"))
    assert list(req.inputs) == ["x"]


def test_image_payloads_keep_the_payload_limit():
    req, _ = _parse(_msg(TOPICS.infer_prefix + "ocr", PNG * 100, "image/png"), max_bytes=len(PNG))
    assert req.code == "payload_too_large"


def test_an_empty_image_payload_is_still_a_request_the_model_refuses():
    req, _ = _parse(_msg(TOPICS.infer_prefix + "ocr", b"", "image/jpeg"))
    assert req.inputs[IMAGE_BODY].tolist() == [b""]


def test_split_image_suffix_only_takes_the_last_level():
    assert split_image_suffix("ocr/png") == ("ocr", True)
    assert split_image_suffix("ocr/1/jpeg") == ("ocr/1", True)
    assert split_image_suffix("png") == ("png", False)  # a model named png
    assert split_image_suffix("ocr/1") == ("ocr/1", False)
