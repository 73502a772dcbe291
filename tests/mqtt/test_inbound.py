"""parse_request (edge_agent/transports/mqtt/inbound.py) rule by rule, without a broker:
real paho messages and Properties, the real codec and reply-topic rule."""

from __future__ import annotations

import orjson
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import EdgeError
from edge_agent.transports.mqtt.inbound import parse_request
from edge_agent.transports.mqtt.reply_topics import DEFAULT_REPLY_TOPICS, ReplyTopics
from edge_agent.transports.mqtt.topics import DeviceTopics
from edge_agent.types import InferRequest

TOPICS = DeviceTopics.build("edge", "unit1", "default")
RULE = ReplyTopics(DEFAULT_REPLY_TOPICS, prefix="edge", device="unit1", default_topic=TOPICS.responses, max_bytes=512)
GOOD = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def message(rest="tiny", body=GOOD, qos=1, reply_to=None, corr=None, user=None, expiry=None):
    msg = MQTTMessage(mid=7, topic=(TOPICS.infer_prefix + rest).encode())
    msg.payload = body if isinstance(body, bytes) else orjson.dumps(body)
    msg.qos = qos
    props = Properties(PacketTypes.PUBLISH)
    if reply_to is not None:
        props.ResponseTopic = reply_to
    if corr is not None:
        props.CorrelationData = corr
    if user:
        props.UserProperty = user
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    msg.properties = props
    return msg


def parse(msg, v5=True, max_bytes=1 << 20):
    return parse_request(msg, msg.topic[len(TOPICS.infer_prefix):], v5, TOPICS.infer_prefix, max_bytes, RULE)


def test_a_good_v5_request_is_decoded_and_answered_on_its_response_topic_with_its_correlation():
    req, reply = parse(message(rest="tiny/2", reply_to="edge/clients/a/replies", corr=b"c1"))
    assert isinstance(req, InferRequest) and (req.model, req.version) == ("tiny", "2")
    assert (reply.topic, reply.correlation, reply.qos, reply.v5) == ("edge/clients/a/replies", b"c1", 1, True)
    assert reply.namespace.startswith("edge/clients/a")
    assert reply.dedup == "edge/clients/a/replies\0c:6331" and reply.digest is not None


def test_a_topic_that_is_not_model_or_model_version_is_malformed():
    for rest in ("", "a/b/c", "a//", "/a"):
        err, reply = parse(message(rest=rest, reply_to="edge/clients/a/replies", corr=b"c"))
        assert isinstance(err, EdgeError) and err.code == "malformed_request", rest
        assert reply.topic == "edge/clients/a/replies"


def test_the_payload_limit_is_checked_before_decoding():
    err, _ = parse(message(body=b"x" * 101), max_bytes=100)
    assert err.code == "payload_too_large"


def test_a_refused_reply_topic_is_answered_on_the_default_topic():
    err, reply = parse(message(reply_to="edge/unit2/infer/tiny", corr=b"c"))
    assert err.code == "reply_topic_refused"
    assert reply.topic == TOPICS.responses and reply.correlation == b"c"


def test_a_body_that_does_not_decode_still_finds_its_311_reply_path_and_id():
    body = {"inputs": "nope", "parameters": {"reply_to": "edge/clients/b/replies", "id": 42}}
    err, reply = parse(message(body=body, qos=1), v5=False)
    assert err.code == "malformed_request"
    assert (reply.topic, reply.id, reply.v5) == ("edge/clients/b/replies", "42", False)
    assert reply.dedup == "edge/clients/b/replies\0i:42"


def test_user_properties_set_priority_and_timeout_and_bad_ones_are_malformed():
    req, _ = parse(message(user=[("priority", "high"), ("timeout_ms", "250")]))
    assert req.priority == 0 and req.timeout_s == 0.25
    for user in ([("priority", "²")], [("timeout_ms", "nan")], [("Inference-Header-Content-Length", "x")]):
        err, _ = parse(message(user=user))
        assert err.code == "malformed_request", user


def test_message_expiry_bounds_the_deadline_and_the_answer():
    req, reply = parse(message(expiry=2, user=[("timeout_ms", "5000")]))
    assert req.timeout_s == 2.0 and reply.expires is not None


def test_311_answers_carry_no_binary_outputs_and_get_the_request_id():
    body = dict(GOOD, id="r1", parameters={"reply_to": "edge/clients/b/replies"})
    req, reply = parse(message(body=body), v5=False)
    assert req.binary_outputs == frozenset() and req.id == "r1" and reply.id == "r1"


def test_qos0_requests_have_no_dedup_key():
    _, reply = parse(message(qos=0, reply_to="edge/clients/a/replies", corr=b"c"))
    assert reply.dedup is None and reply.qos == 0
