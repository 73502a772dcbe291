"""Property-based fuzzing of the MQTT inbound path (hypothesis, derandomized: the same cases every run).

``test_inbound_fuzz``: 10,000+ generated messages -- topics under the infer prefix and beside it,
valid-ish v2 JSON and its mutations, binary-extension bodies with header lengths right and
wrong, deep BYTES nesting, garbage, user properties, ResponseTopic / CorrelationData / 3.1.1
reply_to, QoS, the DUP flag -- straight into ``MqttTransport._on_message`` with a recording bridge
in place of paho (the transport, its codec, its outbox and a real ORT model are the real ones).
Each message must be acknowledged exactly once and answered exactly once (a broker redelivery of
a request seen before: at most once) with a v2 response or ``{"error", "code"}`` of a known code,
never on a topic answers may not go to; no exception escapes, nothing is logged at ERROR, RSS
stays bounded.

``test_inbound_fuzz_through_mosquitto``: 300 of the same kind of messages (only what mosquitto
itself accepts) published through a real broker to a real transport, each answered once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import Counter, deque
from types import SimpleNamespace

import numpy as np
import orjson
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent import errors
from edge_agent.serving.codec import HEADER_LENGTH
from edge_agent.transports.mqtt import MqttTransport
from edge_agent.transports.mqtt.bridge import PublishProperties
from edge_agent.transports.mqtt.delivery import Delivery
from edge_agent.transports.mqtt.outbox import Outbox
from mqtt_helpers import DEVICE, assert_nothing_left_unacknowledged, mqtt_cfg, wait_for

PREFIX = "fz"
BASE = f"{PREFIX}/{DEVICE}"
INFER = f"{BASE}/infer/"
DEFAULT_TOPIC = f"{BASE}/responses"
MESSAGES_PER_EXAMPLE = 25
EXAMPLES = 410  # x 25 = 10,250 messages


def _codes() -> set[str]:
    out, todo = set(), [errors.EdgeError]
    while todo:
        cls = todo.pop()
        out.add(cls.code)
        todo.extend(cls.__subclasses__())
    return out


KNOWN_CODES = _codes()

# --- strategies ----------------------------------------------------------------------------
# Built once at import: hypothesis' cost is per choice and per strategy object, so the
# composites below draw from these constants instead of building strategies per call.

# What mosquitto refuses in a string (it disconnects the sender): kept out of the broker test.
_BROKER_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
texts = st.text(max_size=24)
i64 = st.integers(-(2**63), 2**64 - 1)  # what orjson can write
booleans = st.booleans()
seeds = st.integers(0, 2**32)
one_to_three = st.integers(1, 3)
zero_to_three = st.integers(0, 3)
zero_to_two = st.integers(0, 2)
one_to_four = st.integers(1, 4)
bytes_0_255 = st.integers(0, 255)
dims = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**62, 10**12, 200_000_000]), st.integers(-2, 2**63))
shapes = st.lists(dims, max_size=4)
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "INT8", "UINT8", "BOOL", "FP16", "BYTES", "BF16", "nope", 7])
json_scalars = st.one_of(st.none(), booleans, i64, st.floats(allow_nan=False), texts)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
                           max_leaves=8)
ids = st.one_of(texts, st.integers(0, 5))
params_docs = st.dictionaries(
    st.sampled_from(["priority", "timeout_ms", "cache", "binary_data_output", "reply_to", "id", "x"]),
    st.one_of(json_scalars, st.sampled_from(["high", "normal", "²", "replies/me", "#", "fleet/default/ota"])),
    max_size=3,
)
mutations = st.sampled_from(["shape", "datatype", "name", "data", "drop", "outputs", "inputs", "extra"])
dropped = st.sampled_from(["name", "shape", "datatype", "data"])
names = st.one_of(texts, i64)
outputs_docs = st.one_of(json_values, st.just([{"name": "y", "parameters": {"binary_data": True}}]))
binary_sizes = st.one_of(st.integers(-1, 100), st.sampled_from([2**31, 2**62]))
binary_types = st.sampled_from(["FP32", "FP32", "INT8", "BYTES"])
tails = st.binary(max_size=80)
odd_header_lengths = st.one_of(st.integers(-5, 300).map(str), st.sampled_from(["²", "", "0x10", "9" * 5000, " 12 "]))
payload_kinds = st.sampled_from(["v2", "v2", "v2", "mutated", "binary", "garbage", "json", "deep"])
garbage = st.binary(max_size=200)
depths = st.integers(900, 1100)
edits = st.sampled_from(["flip", "cut", "insert"])
inserts = st.binary(min_size=1, max_size=8)
positions = st.integers(0, 10_000)


@st.composite
def v2_body(draw) -> dict:
    n = draw(one_to_three)
    # Values from a drawn seed: one choice instead of 4n floats.
    rows = np.random.default_rng(draw(seeds)).normal(0, 100, (n, 4)).astype(np.float32).tolist()
    inp: dict = {"name": "x", "shape": [n, 4], "datatype": "FP32", "data": rows}
    doc: dict = {"inputs": [inp]}
    if draw(booleans):
        doc["id"] = draw(ids)
    params = draw(params_docs)
    if params:
        doc["parameters"] = params
    # Structural mutations of a valid request.
    for _ in range(draw(zero_to_two)):
        what = draw(mutations)
        if what == "shape":
            inp["shape"] = draw(shapes)
        elif what == "datatype":
            inp["datatype"] = draw(datatypes)
        elif what == "name":
            inp["name"] = draw(names)
        elif what == "data":
            inp["data"] = draw(json_values)
        elif what == "drop":
            inp.pop(draw(dropped), None)
        elif what == "outputs":
            doc["outputs"] = draw(outputs_docs)
        elif what == "inputs":
            doc["inputs"] = draw(json_values)
        else:
            doc[draw(texts)] = draw(json_values)
    if inp.get("datatype") == "BYTES" and isinstance(inp.get("shape"), list):
        # The codec is to bound BYTES allocations by the bytes present (issue 15 item 2, its
        # own fix): until then huge BYTES shapes stay out of this fuzz.
        inp["shape"] = [d if isinstance(d, int) and d < 1000 else 1 for d in inp["shape"]]
    return doc


V2_BODIES = v2_body()


@st.composite
def binary_body(draw) -> tuple[bytes, str | None]:
    n = draw(zero_to_three)
    size = n * 16 if draw(booleans) else draw(binary_sizes)
    dt = draw(binary_types)
    shape = [n, 4] if dt != "BYTES" else [draw(zero_to_three)]
    head = orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": dt, "parameters": {"binary_data_size": size}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": draw(booleans)}}]})
    tail = draw(tails)
    hl = str(len(head)) if draw(booleans) else (draw(odd_header_lengths) if draw(booleans) else None)
    return head + tail, hl


BINARY_BODIES = binary_body()


def _nested(depth: int) -> bytes:
    return (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": '
            + b"[" * depth + b'"x"' + b"]" * depth + b"}]}")


@st.composite
def payloads(draw) -> tuple[bytes, str | None]:
    kind = draw(payload_kinds)
    if kind == "binary":
        return draw(BINARY_BODIES)
    if kind == "garbage":
        return draw(garbage), None
    if kind == "json":
        return orjson.dumps(draw(json_values)), None
    if kind == "deep":
        return _nested(draw(depths)), None
    raw = orjson.dumps(draw(V2_BODIES))
    if kind == "mutated":
        b = bytearray(raw)
        for _ in range(draw(one_to_four)):
            op = draw(edits)
            i = draw(positions) % max(len(b), 1)
            if op == "flip" and b:
                b[i] = draw(bytes_0_255)
            elif op == "cut":
                del b[i:]
            else:
                b[i:i] = draw(inserts)
        raw = bytes(b)
    return raw, None


PAYLOADS = payloads()
reply_topics = st.one_of(
    st.none(),
    st.sampled_from(["replies/me", f"{PREFIX}/clients/c1/replies", "replies/a/b", DEFAULT_TOPIC, "",
                     "#", "replies/+", "+", "$SYS/x", "fleet/default/ota", f"{BASE}/ota", f"{BASE}/status",
                     f"{PREFIX}/unit2/infer/tiny", "replies/" + "x" * 60_000, "replies/\x00", "replies/a\nb", "replies/\ufffe"]),
    texts.map(lambda s: "replies/" + s),
    texts,
)
user_props = st.lists(st.tuples(
    st.sampled_from(["priority", "timeout_ms", "client_id", HEADER_LENGTH, "controller", "x"]),
    st.one_of(texts, st.sampled_from(["high", "normal", "0", "1", "²", "١", "nan", "inf", "-5", "9" * 5000, "1e309"])),
), max_size=3)
correlations = st.one_of(st.none(), st.binary(max_size=16), st.sampled_from([b"a", b"b", b"c"]))
topics = st.one_of(
    st.sampled_from(["tiny", "tiny", "tiny", "tiny", "tiny/1", "tiny/2", "nope", "", "tiny/1/x", "/tiny"]).map(INFER.__add__),
    st.sampled_from(["tiny", "tiny", "tiny", "tiny/1", "tiny/2", "nope", "", "tiny/1/x", "/tiny"]).map(INFER.__add__),
    texts.map(INFER.__add__),
    st.sampled_from([f"{BASE}/ota", "fleet/default/ota", f"{BASE}/other"]),
)
qos_levels = st.sampled_from([0, 1, 1])
expiries = st.one_of(st.none(), st.integers(1, 100))


@st.composite
def messages(draw) -> dict:
    payload, hl = draw(PAYLOADS)
    user = draw(user_props)
    if hl is not None:
        user.append((HEADER_LENGTH, hl))
    return {
        "topic": draw(topics), "payload": payload, "user": user, "v5": draw(booleans),
        "reply": draw(reply_topics), "corr": draw(correlations), "qos": draw(qos_levels),
        "dup": draw(booleans) and draw(booleans), "expiry": draw(expiries),
    }


MESSAGES = messages()
BATCHES = st.lists(MESSAGES, min_size=MESSAGES_PER_EXAMPLE, max_size=MESSAGES_PER_EXAMPLE)


# --- the harness ---------------------------------------------------------------------------


def may_receive_answers(topic: str) -> bool:
    """Where answers may go, written independently of reply_topics.py."""
    if topic == DEFAULT_TOPIC:
        return True
    if not topic or len(topic.encode("utf-8", "surrogatepass")) > 256 or "+" in topic or "#" in topic or topic[0] == "$":
        return False
    if _BROKER_BAD.search(topic) or topic.startswith((f"{BASE}/", "fleet/")) or topic == "fleet":
        return False
    levels = topic.split("/")
    if len(levels) >= 3 and levels[0] == PREFIX and levels[2] in ("infer", "ota", "status", "telemetry"):
        return False
    return topic.startswith((f"{PREFIX}/clients/", "replies/")) or topic == "replies"


class RecordingBridge:
    """Stands in for PahoBridge: records acks and publishes; the broker 'takes' each QoS 1 publish."""

    def __init__(self, loop, transport) -> None:
        self.v5 = True
        self.connected = True
        self.generation = 1
        self.acks: Counter = Counter()
        self.published: list = []
        self._mids = itertools.count(1)
        self._loop = loop
        self._t = transport

    def publish(self, topic, payload, qos, retain=False, properties=None):
        if not topic or "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")  # what paho does
        mid = next(self._mids)
        self.published.append((topic, bytes(payload), properties))
        if qos:
            self._loop.call_soon(self._t._delivery.on_publish, mid)  # noqa: SLF001
        return SimpleNamespace(rc=0, mid=mid)

    def publish_events(self, on: bool) -> None:
        pass

    def ack(self, mid, qos, generation) -> None:
        self.acks[mid] += 1

    def subscribe(self, topics) -> None:
        pass


def build_message(m: dict, mid: int) -> MQTTMessage:
    msg = MQTTMessage(mid=mid, topic=m["topic"].encode("utf-8", "surrogatepass"))
    msg.payload = m["payload"]
    msg.qos = m["qos"]
    msg.dup = m["dup"]
    if m["v5"]:
        p = Properties(PacketTypes.PUBLISH)
        if m["reply"] is not None:
            p.ResponseTopic = m["reply"]
        if m["corr"] is not None:
            p.CorrelationData = m["corr"]
        if m["expiry"] is not None:
            p.MessageExpiryInterval = m["expiry"]
        if m["user"]:
            p.UserProperty = list(m["user"])
        msg.properties = p
    return msg


def answer_doc(payload: bytes, properties) -> tuple[dict, bytes | None]:
    corr, hl = None, None
    if properties is not None:
        p = Properties(PacketTypes.PUBLISH)
        p.unpack(properties.pack())
        corr = getattr(p, "CorrelationData", None)
        for k, v in getattr(p, "UserProperty", None) or []:
            if k == HEADER_LENGTH:
                hl = int(v)
    return orjson.loads(payload[:hl] if hl is not None else payload), corr


def check_answer(doc: dict) -> None:
    if "error" in doc:
        assert isinstance(doc["error"], str) and doc.get("code") in KNOWN_CODES, doc
    else:
        assert doc.get("model_name") == "tiny" and isinstance(doc.get("outputs"), list), doc


class ErrorLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list = []

    def emit(self, record) -> None:
        self.records.append(record.getMessage()[:500])


@pytest.fixture
def error_logs(caplog):
    caplog.set_level(logging.ERROR, logger="edge_agent")  # 10,000 refusals at INFO would only cost time
    h = ErrorLogs()
    logging.getLogger("edge_agent").addHandler(h)
    yield h
    logging.getLogger("edge_agent").removeHandler(h)


@pytest.mark.timeout(300)
def test_inbound_fuzz(tmp_path, broker_less_cfg, service, error_logs):
    loop = asyncio.new_event_loop()
    # Python 3.8: asyncio.Event() and friends made outside a running loop
    # bind to the current one, which must be set.
    asyncio.set_event_loop(loop)
    t = MqttTransport(broker_less_cfg, DEVICE, service, tmp_path / "outbox", service.info, "fuzz")
    bridge = RecordingBridge(loop, t)
    t._bridge, t._loop = bridge, loop  # noqa: SLF001 -- the recording bridge stands in for paho
    t._delivery = Delivery(Outbox(tmp_path / "outbox", 64 << 20, 3600), loop, bridge)  # noqa: SLF001
    mids = itertools.count(1)
    stats: Counter = Counter()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss

    async def one(m: dict) -> None:
        bridge.v5 = m["v5"]
        mid = next(mids)
        n0 = len(bridge.published)
        t._on_message(build_message(m, mid))  # noqa: SLF001 -- raises if anything escapes
        while t._tasks:  # noqa: SLF001
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the broker's "PUBACK"s
        assert bridge.acks[mid] == 1, (mid, bridge.acks[mid], m["topic"][:80])
        answers = bridge.published[n0:]
        stats["messages"] += 1
        if not m["topic"].startswith(INFER):
            assert answers == [], answers  # OTA commands and stray topics: acknowledged, not answered
            stats["not_requests"] += 1
            return
        if m["dup"]:
            assert len(answers) <= 1, answers
        else:
            assert len(answers) == 1, (m["topic"][:80], m["payload"][:120], m["user"], answers)
        for topic, payload, props in answers:
            assert may_receive_answers(topic), topic[:120]
            doc, corr = answer_doc(payload, props)
            check_answer(doc)
            stats[doc.get("code", "ok")] += 1
            if m["v5"] and m["corr"] is not None:
                assert corr == m["corr"]

    recent: deque = deque(maxlen=2000)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(BATCHES)
    def run(batch: list) -> None:
        for m in batch:
            recent.append(m)
            loop.run_until_complete(one(m))

    t0 = time.monotonic()
    try:
        run()
        # hypothesis keeps every choice it made (~150 MiB here): the transport's own growth is
        # measured by sending the last 2,000 messages twice more, outside hypothesis.
        rss1 = proc.memory_info().rss
        for m in list(recent) * 2:
            loop.run_until_complete(one(m))
        rss2 = proc.memory_info().rss
    finally:
        t._delivery.outbox.close()  # noqa: SLF001
        asyncio.set_event_loop(None)
        loop.close()
    print(f"fuzz: {stats['messages']} messages in {time.monotonic() - t0:.1f} s, RSS +{(rss1 - rss0) >> 20} MiB with "
          f"hypothesis, +{(rss2 - rss1) >> 20} MiB over 4,000 more; outcomes {dict(stats.most_common())}")
    assert stats["messages"] >= 10_000 + 4000
    # The generated mix reached the model and each refusal hundreds of times
    # (hypothesis 6.113 on the Python 3.8 stack draws fewer valid requests than
    # 6.151: ~460 of 14,250, against ~600).
    assert stats["ok"] > 250 and stats["malformed_request"] > 500 and stats["reply_topic_refused"] > 500, stats
    assert error_logs.records == []
    assert rss2 - rss1 < 32 << 20
    # Every per-request structure is empty or at its bound.
    d = t._delivery  # noqa: SLF001
    assert not t._tasks and not d.running and not d.waiting and not d.unconfirmed  # noqa: SLF001
    assert len(d.answered) <= 4096 and d.answered_bytes <= 4 << 20
    assert len(t._reply_topics._cache) <= 1024 and len(t._limiter) <= 10_000  # noqa: SLF001


@pytest.fixture
def broker_less_cfg():
    return mqtt_cfg(SimpleNamespace(port=1), PREFIX, rate_limit={"rate": 1e6, "burst": 1_000_000, "total_rate": 1e6, "total_burst": 1_000_000})


def _broker_safe(m: dict) -> bool:
    """What mosquitto accepts from a publisher (it drops the connection otherwise)."""
    strings = [m["topic"]] + [s for kv in m["user"] for s in kv] + ([m["reply"]] if m["reply"] else [])
    return not any(_BROKER_BAD.search(s) for s in strings) and not any(c in m["topic"] for c in "+#")


def _header_length(props) -> int | str | None:
    for k, v in getattr(props, "UserProperty", None) or []:
        if k == HEADER_LENGTH:
            return int(v) if v.isascii() and v.isdigit() else v  # (the watcher sees the requests' too)
    return None


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_inbound_fuzz_through_mosquitto(broker, make_transport, make_client, error_logs):
    t = await make_transport(mqtt_cfg(broker, PREFIX, rate_limit={"rate": 1e6, "burst": 1_000_000, "total_rate": 1e6, "total_burst": 1_000_000}))
    seen: list = []
    watcher = await make_client("5", reply_topic="#")
    watcher._bridge._cb_message = lambda msg: seen.append(  # noqa: SLF001
        (msg.topic, bytes(msg.payload), getattr(msg.properties, "CorrelationData", None), _header_length(msg.properties)))
    sender = await make_client("5")
    await asyncio.sleep(0.3)

    batch: list = []

    @settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(BATCHES)
    def collect(ms: list) -> None:
        batch.extend(m for m in ms if _broker_safe(m) and m["topic"].startswith(INFER))

    collect()
    batch = batch[:300]
    assert len(batch) == 300
    for i, m in enumerate(batch):
        # Each its own CorrelationData, to match its answer; the broker cannot set DUP for us.
        props = PublishProperties(correlation=b"fz-%d" % i, response_topic=m["reply"] or None,
                                  expiry_s=m["expiry"], user=m["user"] or None)
        sender._bridge.publish(m["topic"], m["payload"], m["qos"], False, props)  # noqa: SLF001
        if i % 50 == 0:
            await asyncio.sleep(0)
    want = {b"fz-%d" % i for i in range(len(batch))}

    def answers() -> list:
        return [a for a in seen if a[2] in want and not a[0].startswith(INFER)]

    await wait_for(lambda: len({a[2] for a in answers()}) == len(batch), timeout=60, what="an answer to each of 300")
    await asyncio.sleep(0.5)
    assert len(answers()) == len(batch)  # one each
    for topic, payload, _, hl in answers():
        assert may_receive_answers(topic), topic[:120]
        check_answer(orjson.loads(payload[:hl] if hl is not None else payload))
    # Nothing left unacknowledged: a new connection gets no redelivery.
    await assert_nothing_left_unacknowledged(t)
    assert error_logs.records == []
