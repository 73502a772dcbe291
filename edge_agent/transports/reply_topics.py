"""Where the MQTT transport may publish an answer: the one rule for reply topics.

A requester names its reply topic (MQTT 5 ResponseTopic, 3.1.1 ``parameters.reply_to``)
and the daemon publishes there with its own broker account. Unchecked, that lets any
requester publish, as the daemon, wherever the broker lets the daemon and not the
requester: another device's infer or ota topic, ``fleet/+/ota``, the daemon's own status.
A topic the broker takes as malformed (control characters, non-characters) makes
mosquitto drop the daemon's connection before the request is acknowledged, and the
redelivered request does it again. So a reply topic is checked here, once per request
(the verdict on a topic is cached: a client keeps its reply topic), and the same check
gives the rate limiter its key: the reply topic's namespace.

Rules, in order (docs/MQTT.md "Reply topics"):

1. the daemon's default response topic is always allowed (one shared namespace);
2. refused whatever the configuration: not a string or empty, longer than
   ``max_bytes`` (UTF-8), wildcards ``+`` ``#``, a leading ``$``, characters MQTT or
   mosquitto refuse in a topic (U+0000, C0/C1 controls, surrogates, non-characters),
   anything under the daemon's own ``{prefix}/{device}/``, under ``fleet/``, a device's
   ``{prefix}/+/infer/...``, ``.../ota...``, ``.../status``, ``.../telemetry``, and the
   offload request topics ``offload/...`` (``{offload prefix}/offload/...``);
3. allowed when a configured filter (``mqtt.reply_topics``, placeholders ``{prefix}``
   and ``{device}``) matches; refused otherwise.

The namespace of an allowed topic is the topic up to and including the first level
the allowing filter matched with a wildcard: ``edge/clients/bob/replies/x`` under
``edge/clients/+/replies/#`` is ``edge/clients/bob``; ``replies/me/x`` under
``replies/#`` is ``replies/me``.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

from ..errors import ReplyTopicRefused

DEFAULT_REPLY_TOPICS = ("{prefix}/clients/+/replies/#", "replies/#")

# What mosquitto_validate_utf8 refuses (mosquitto drops a client that publishes such a topic):
# U+0000, C0 and C1 controls, surrogates, U+FDD0..U+FDEF and U+xxFFFE/U+xxFFFF in every plane.
_NONCHARS = "".join(chr((plane << 16) | low) for plane in range(17) for low in (0xFFFE, 0xFFFF))
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + re.escape(_NONCHARS) + "]")

# Verdicts kept per topic (allowed ones only, each at most max_bytes long).
_CACHE_SIZE = 1024


def split_filter(filt: str) -> Tuple[str, ...]:
    """The levels of an MQTT topic filter; ValueError when it is not a valid filter."""
    if not filt:
        raise ValueError("a topic filter must not be empty")
    if filt.startswith("$"):
        raise ValueError(f"{filt!r}: a reply topic filter must not start with $")
    levels = tuple(filt.split("/"))
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"{filt!r}: # must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"{filt!r}: + must be a whole level")
    return levels


def match(filt: Sequence[str], levels: Sequence[str]) -> int:
    """-1 when ``filt`` does not match the topic ``levels``; else the index of the first
    level a wildcard matched (``len(levels) - 1`` when the filter matched it literally)."""
    n = len(levels)
    first = -1
    for i, f in enumerate(filt):
        if f == "#":
            # Matches this level and below, or none (the parent itself).
            if i < n and first < 0:
                first = i
            return first if first >= 0 else n - 1
        if i >= n:
            return -1
        if f == "+":
            if first < 0:
                first = i
        elif f != levels[i]:
            return -1
    if len(filt) != n:
        return -1
    return first if first >= 0 else n - 1


class ReplyTopics:
    """check(topic) -> the topic's rate-limit namespace, or raises ReplyTopicRefused."""

    def __init__(
        self,
        filters: Iterable[str],
        *,
        prefix: str,
        device: str,
        default_topic: str,
        max_bytes: int,
        offload_prefix: Optional[str] = None,
    ) -> None:
        self.default_topic = default_topic
        self.max_bytes = max_bytes
        self.filters: List[Tuple[str, ...]] = [
            split_filter(f.format(prefix=prefix, device=device)) for f in filters
        ]
        deny = [
            f"{prefix}/{device}/#",  # the daemon's own topics
            "fleet/#",
            f"{prefix}/+/infer/#",
            f"{prefix}/+/ota/#",
            f"{prefix}/+/status/#",
            f"{prefix}/+/telemetry/#",
            "offload/#",
        ]
        if offload_prefix:
            deny.append(f"{offload_prefix.strip('/')}/#")
        self._deny = [split_filter(f) for f in deny]
        self._cache: dict = {}

    def allow(self, filt: str) -> None:
        """Also allow topics under ``filt`` (a companion: the edge units' offload-replies)."""
        self.filters.append(split_filter(filt))
        self._cache.clear()

    def check(self, topic: object) -> str:
        if type(topic) is str:
            ns = self._cache.get(topic)
            if ns is not None:
                return ns
        ns = self._check(topic)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = ns
        return ns

    def _check(self, topic: object) -> str:
        if topic == self.default_topic:
            return self.default_topic
        if not isinstance(topic, str):
            raise ReplyTopicRefused(f"the reply topic must be a string, got {type(topic).__name__}")
        if not topic:
            raise ReplyTopicRefused("the reply topic is empty")
        shown = repr(topic[:80]) + ("..." if len(topic) > 80 else "")
        # Characters first: a surrogate cannot be encoded to count its bytes.
        if len(topic) > self.max_bytes:
            raise ReplyTopicRefused(f"reply topic {shown} is longer than {self.max_bytes} bytes (mqtt.max_reply_topic_bytes)")
        if _BAD_CHARS.search(topic):
            raise ReplyTopicRefused(f"reply topic {shown} holds a character MQTT does not allow in a topic")
        if len(topic.encode()) > self.max_bytes:
            raise ReplyTopicRefused(f"reply topic {shown} is longer than {self.max_bytes} bytes (mqtt.max_reply_topic_bytes)")
        if "+" in topic or "#" in topic:
            raise ReplyTopicRefused(f"reply topic {shown} holds a wildcard (+ or #)")
        if topic[0] == "$":
            raise ReplyTopicRefused(f"reply topic {shown} starts with $ (broker topics)")
        levels = topic.split("/")
        for d in self._deny:
            if match(d, levels) >= 0:
                raise ReplyTopicRefused(
                    f"reply topic {shown} is a command, status or request topic (or under fleet/): answers never go there"
                )
        for f in self.filters:
            k = match(f, levels)
            if k >= 0:
                return "/".join(levels[: k + 1])
        raise ReplyTopicRefused(f"reply topic {shown} is not under mqtt.reply_topics")
