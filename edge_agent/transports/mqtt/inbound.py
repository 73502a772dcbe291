"""What one incoming MQTT request means: ``parse_request``, without a broker.

Given the message (topic tail, payload, MQTT 5 properties, QoS, DUP) it returns
the decoded InferRequest or the coded EdgeError it earns, and the ``Reply``: where
and how its one answer goes (reply topic checked by reply_topics.py, correlation,
id, QoS, expiry, the dedup key of a QoS 1 request). Stateful decisions (rate
limit, redelivery, running the request) are the transport's; everything here is
a function of its arguments, so tests/mqtt/test_inbound.py covers it rule by rule.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from typing import Dict, Optional, Tuple, Union

import orjson

from ...compat import slotted_dataclass
from ...errors import EdgeError, MalformedRequest, PayloadTooLarge, ReplyTopicRefused
from ...serving.codec import HEADER_LENGTH, decode_request, image_request, parse_priority
from ...types import InferRequest
from .reply_topics import ReplyTopics
from .topics import split_image_suffix, split_model_path

log = logging.getLogger(__name__)

_HEADER_LENGTH_KEY = HEADER_LENGTH.lower()
# Decoding a hostile body may raise these from numpy/struct/recursion rather than an
# EdgeError: answered as malformed_request (MemoryError as payload_too_large).
_DECODE_ERRORS = (RecursionError, ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError, struct.error)


@slotted_dataclass
class Reply:
    """Where and how one request's answer goes."""

    topic: str
    correlation: Optional[bytes]
    id: Optional[str]
    qos: int
    v5: bool
    expires: Optional[float]  # wall clock, from the request's Message Expiry Interval
    dedup: Optional[str] = None  # (reply topic, correlation or id) of a QoS 1 request
    running: bool = False  # registered as running: redeliveries wait for this run
    digest: Optional[int] = None  # hash of the request's payload
    namespace: str = ""  # the reply topic's namespace: the rate-limited client


def user_props(props) -> Dict[str, str]:
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    return {k.lower(): v for k, v in pairs} if pairs else {}


def lenient_params(payload: bytes) -> dict:
    """parameters of a body that failed to decode, to find a 3.1.1 reply path."""
    try:
        doc = orjson.loads(payload)
    except Exception:  # JSONDecodeError, or MemoryError on a hostile body: no reply path then
        return {}
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        return {}
    if "id" not in params and isinstance(doc.get("id"), (str, int)):
        params = {**params, "id": doc["id"]}
    return params


def apply_user_props(req: InferRequest, user: Dict[str, str]) -> None:
    """priority and timeout_ms user properties onto a decoded request."""
    if "priority" in user:
        p = user["priority"]
        # "²".isdigit() is True and int("²") raises: only ASCII digits are a number here.
        if p.isascii() and p.isdigit():
            try:
                p = int(p)
            except ValueError:  # more digits than int() takes
                raise MalformedRequest(f"user property priority is not a valid number: {p[:40]!r}...") from None
        req.priority = parse_priority(p)
    if "timeout_ms" in user:
        try:
            tm = float(user["timeout_ms"])
        except ValueError:
            tm = -1
        if not (tm > 0 and math.isfinite(tm)):
            raise MalformedRequest(f"user property timeout_ms must be a positive number, got {user['timeout_ms'][:40]!r}")
        req.timeout_s = min(req.timeout_s or tm / 1000.0, tm / 1000.0)


def decode_failure(e: Exception, topic: str) -> EdgeError:
    """A non-EdgeError out of decoding: still answered, with a code, logged."""
    if isinstance(e, MemoryError):
        log.warning("mqtt: request on %r needs more memory than there is to decode", topic)
        return PayloadTooLarge("the request needs more memory to decode than the daemon can give it")
    if isinstance(e, _DECODE_ERRORS):
        log.warning("mqtt: request on %r could not be decoded: %s: %r", topic, type(e).__name__, str(e)[:200])
        return MalformedRequest(f"the request could not be decoded ({type(e).__name__})")
    log.exception("mqtt: decoding a request on %r failed unexpectedly", topic)
    return EdgeError(f"internal error while decoding the request: {type(e).__name__}")


def parse_request(
    msg, rest: str, v5: bool, topic_prefix: str, max_payload_bytes: int, reply_topics: ReplyTopics,
) -> Tuple[Union[InferRequest, EdgeError], Reply]:
    """One request message -> (the request, or the error to answer it with; its Reply).

    ``rest`` is the topic after ``topic_prefix`` (``model[/version]``). The payload is an
    encoded image (``codec.image_request``) when the MQTT 5 content type is ``image/*`` or
    the topic ends with an image suffix (``model[/version]/jpeg``, topics.py). The answer goes
    to the request's reply topic (MQTT 5 ResponseTopic, else ``parameters.reply_to``)
    when reply_topics allows it; otherwise, and when there is none, to the default
    response topic, refused topics with ``reply_topic_refused``. An id or correlation
    is found even in a body that does not decode, so the error reaches its requester.
    """
    props = msg.properties if v5 else None
    user = user_props(props)
    reply_topic = getattr(props, "ResponseTopic", None) if props is not None else None
    correlation = getattr(props, "CorrelationData", None) if props is not None else None
    expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
    payload = msg.payload
    req = None
    err: EdgeError | None = None
    params: dict = {}
    try:
        rest, image = split_image_suffix(rest)
        if not image and props is not None:
            ctype = getattr(props, "ContentType", None)
            image = ctype is not None and ctype[:6] == "image/"
        path = split_model_path(rest)
        if path is None:
            raise MalformedRequest(f"topic must be {topic_prefix}{{model}}[/{{version}}], got {msg.topic!r}")
        if len(payload) > max_payload_bytes:
            raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds the limit of {max_payload_bytes}")
        hl = user.get(_HEADER_LENGTH_KEY)
        try:
            header_length = int(hl) if hl is not None else None
        except ValueError:
            raise MalformedRequest(f"user property {HEADER_LENGTH} must be an integer, got {hl[:40]!r}") from None
        if image:
            decoded = image_request(payload, path[0], path[1])
        else:
            decoded = decode_request(payload, path[0], path[1], header_length)
        params = decoded.parameters
        apply_user_props(decoded, user)
        req = decoded
    except EdgeError as e:
        err = e
    except Exception as e:
        err = decode_failure(e, msg.topic)
    if req is None and not params and not (reply_topic and correlation is not None) and err.code != "payload_too_large":
        params = lenient_params(payload)
    rid = params.get("id") if isinstance(params.get("id"), (str, int)) else None
    rid = str(rid) if rid is not None else (req.id if req is not None else None)

    # Where the answer may go (reply_topics.py); a refused topic is answered on the default one.
    asked = reply_topic or params.get("reply_to")
    topic = namespace = reply_topics.default_topic
    if asked is not None and asked != "":
        try:
            namespace = reply_topics.check(asked)
            topic = asked
        except ReplyTopicRefused as e:
            err = e
    reply = Reply(
        topic=topic, correlation=correlation, id=rid, qos=min(msg.qos, 1), v5=v5,
        expires=time.time() + expiry if expiry else None, namespace=namespace,
    )
    if msg.qos > 0 and (correlation is not None or rid is not None):
        reply.dedup = f"{topic}\0" + (f"c:{correlation.hex()}" if correlation is not None else f"i:{rid}")
        reply.digest = hash(payload if type(payload) is bytes else bytes(payload))
    if err is not None:
        return err, reply
    if reply.id is not None and req.id is None:
        req.id = reply.id
    if expiry:
        req.timeout_s = min(req.timeout_s or expiry, float(expiry))
    if not v5:
        req.binary_outputs = frozenset()  # 3.1.1 has no user property to carry the header length
    return req, reply
