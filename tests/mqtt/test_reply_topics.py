"""The reply topic rule (edge_agent/transports/reply_topics.py), without a broker."""

from __future__ import annotations

import pytest

from edge_agent.config import MqttConfig
from edge_agent.errors import ConfigError, ReplyTopicRefused
from edge_agent.transports.reply_topics import DEFAULT_REPLY_TOPICS, ReplyTopics, match, split_filter


def policy(filters=DEFAULT_REPLY_TOPICS, **kw) -> ReplyTopics:
    kw.setdefault("prefix", "edge")
    kw.setdefault("device", "unit1")
    kw.setdefault("default_topic", "edge/unit1/responses")
    kw.setdefault("max_bytes", 256)
    return ReplyTopics(filters, **kw)


def test_default_filters_match_the_config_default():
    assert tuple(MqttConfig().reply_topics) == DEFAULT_REPLY_TOPICS
    assert MqttConfig().max_reply_topic_bytes == 256


@pytest.mark.parametrize("topic, namespace", [
    ("edge/clients/bob/replies", "edge/clients/bob"),  # what the CLI client uses
    ("edge/clients/bob/replies/x/y", "edge/clients/bob"),
    ("replies/me", "replies/me"),  # what docs/MQTT.md's examples use
    ("replies/me/x", "replies/me"),
    ("replies", "replies"),  # '#' matches its parent level too
    ("edge/unit1/responses", "edge/unit1/responses"),  # the default response topic: always, one shared key
])
def test_allowed_topics_and_their_rate_limit_namespace(topic, namespace):
    assert policy().check(topic) == namespace


@pytest.mark.parametrize("topic, why", [
    ("#", "wildcard"),
    ("replies/+", "wildcard"),
    ("replies/a#", "wildcard"),
    ("edge/clients/+/replies", "wildcard"),
    ("$SYS/broker/x", r"starts with \$"),
    ("$share/g/replies/me", r"starts with \$"),
    ("replies/" + "x" * 60_000, "longer than 256"),
    ("replies/" + "é" * 125, "longer than 256"),  # 258 bytes in 133 characters
    ("replies/a\x00b", "character MQTT does not allow"),
    ("replies/a\nERROR forged", "character MQTT does not allow"),
    ("replies/\x85", "character MQTT does not allow"),
    ("replies/\ufffe", "character MQTT does not allow"),
    ("replies/\U0010ffff", "character MQTT does not allow"),
    ("replies/\ud800", "character MQTT does not allow"),
    ("edge/unit1/ota", "command, status"),  # the daemon's own topics
    ("edge/unit1/status", "command, status"),
    ("edge/unit1/infer/digits", "command, status"),
    ("edge/unit1/telemetry", "command, status"),
    ("edge/unit1/anything/else", "command, status"),
    ("edge/unit2/infer/digits", "command, status"),  # another device's
    ("edge/unit2/infer/digits/1", "command, status"),
    ("edge/unit2/ota", "command, status"),
    ("edge/unit2/ota/state", "command, status"),
    ("edge/unit2/status", "command, status"),
    ("fleet/default/ota", "command, status"),
    ("fleet", "command, status"),
    ("offload/digits", "command, status"),
    ("edge/unit2/responses", "not under mqtt.reply_topics"),
    ("elsewhere/x", "not under mqtt.reply_topics"),
    ("edge/clients", "not under mqtt.reply_topics"),
    ("", "empty"),
    (42, "must be a string"),
    (["replies/me"], "must be a string"),
])
def test_refused_topics(topic, why):
    p = policy()
    with pytest.raises(ReplyTopicRefused, match=why) as e:
        p.check(topic)
    assert e.value.code == "reply_topic_refused" and e.value.http_status == 403
    assert len(e.value.message) < 400  # a 60,000-character topic is not echoed whole
    with pytest.raises(ReplyTopicRefused):
        p.check(topic)  # refusals are not cached into allowances


def test_hard_refusals_hold_whatever_the_filters_allow():
    p = policy(["#"])
    assert p.check("anything/at/all") == "anything"
    for topic in ("edge/unit2/infer/m", "fleet/default/ota", "edge/unit1/ota", "edge/unit9/status", "x/+", "$SYS/x"):
        with pytest.raises(ReplyTopicRefused):
            p.check(topic)
    assert p.check("edge/unit2/responses") == "edge"


def test_placeholders_and_companion_offload_replies():
    p = policy(["{prefix}/{device}-clients/+/#"], prefix="site/edge", device="comp-a",
               default_topic="site/edge/comp-a/responses", offload_prefix="site/edge/offload/")
    assert p.check("site/edge/comp-a-clients/bob/r") == "site/edge/comp-a-clients/bob"
    with pytest.raises(ReplyTopicRefused):
        p.check("site/edge/unit7/offload-replies")
    p.allow("{}/+/offload-replies".format("site/edge"))
    # One namespace, so one token bucket, per edge unit.
    assert p.check("site/edge/unit7/offload-replies") == "site/edge/unit7"
    for topic in ("site/edge/offload/digits", "site/edge/comp-a/offload-replies", "site/edge/unit7/infer/x"):
        with pytest.raises(ReplyTopicRefused):
            p.check(topic)


def test_filter_matching():
    assert match(split_filter("a/+/c"), ["a", "b", "c"]) == 1
    assert match(split_filter("a/+/c"), ["a", "b"]) == -1
    assert match(split_filter("a/+/c"), ["a", "b", "c", "d"]) == -1
    assert match(split_filter("a/b"), ["a", "b"]) == 1
    assert match(split_filter("a/#"), ["a"]) == 0
    assert match(split_filter("a/#"), ["a", "b", "c"]) == 1
    assert match(split_filter("#"), ["x", "y"]) == 0
    assert match(split_filter("a/b/#"), ["a", "c"]) == -1
    assert match(split_filter("+/+"), ["", ""]) == 0
    for bad in ("", "a/#/b", "a/b#", "a/+b", "$SYS/#"):
        with pytest.raises(ValueError):
            split_filter(bad)


@pytest.mark.parametrize("filters", [["a/#/b"], ["{nope}/x"], ["$share/g/#"], ["{0}"], [""]])
def test_config_refuses_invalid_filters(filters, tmp_path):
    from edge_agent.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  reply_topics: " + repr(filters).replace("'", '"') + "\n")
    with pytest.raises(ConfigError, match="reply_topics"):
        load_config(path)


def test_cache_stays_bounded():
    p = policy()
    for i in range(5000):
        p.check(f"replies/c{i}")
    assert len(p._cache) <= 1024  # noqa: SLF001
