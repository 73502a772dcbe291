"""OTA commands in, OTA state out: who may command this unit over MQTT, and what it hears.

A command on ``{prefix}/{device}/ota`` or ``fleet/{group}/ota`` is obeyed only when it
names one of ``mqtt.controllers`` (docs/MQTT.md "OTA commands"); the agent's state is
published retained on ``{prefix}/{device}/ota/state``.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Callable, Dict, FrozenSet, List

import orjson

from .inbound import user_props
from .telemetry import MESSAGES

log = logging.getLogger(__name__)


def short(value: object, limit: int = 120) -> object:
    """A client-chosen value for a log line (logged with %r: escaped), cut to a readable length."""
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


class OtaCommands:
    def __init__(self, device_id: str, controllers: FrozenSet[str], state_topic: str) -> None:
        self.device_id = device_id
        self.controllers = controllers
        self.state_topic = state_topic
        self.callbacks: List[Callable] = []
        self.state: Dict[str, dict] = {}

    def on_command(self, msg, v5: bool, spawn: Callable) -> None:
        """Obeyed only when the command names one of mqtt.controllers (user property
        ``controller``, or a top-level "controller" key for MQTT 3.1.1). The name is a
        claim: the broker ACL that lets only controller accounts write the OTA topics is
        what makes it true (docs/MQTT.md "OTA commands"). ``spawn`` runs an async callback."""
        topic = msg.topic
        claimed = user_props(msg.properties if v5 else None).get("controller")
        try:
            doc = orjson.loads(msg.payload)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as e:
            MESSAGES.labels("malformed").inc()
            log.warning("mqtt: ignored OTA command on %r (controller %r): not a JSON object (%s)", topic, short(claimed), e)
            return
        in_body = doc.pop("controller", None)  # the agent's parser refuses unknown keys
        if claimed is None:
            claimed = in_body
        if not isinstance(claimed, str) or claimed not in self.controllers:
            MESSAGES.labels("ota_refused").inc()
            why = "mqtt.controllers is empty" if not self.controllers else "not one of mqtt.controllers"
            log.warning("mqtt: refused OTA command on %r from controller %r: %s", topic, short(claimed), why)
            return
        MESSAGES.labels("ota").inc()
        source = f"mqtt:{claimed} on {topic}"
        for cb in self.callbacks:
            try:
                res = cb(topic, doc, source)
                if inspect.isawaitable(res):
                    spawn(res)
            except Exception:
                log.exception("mqtt: OTA command callback failed")

    def publish_state(self, bridge) -> None:
        doc = {"device": self.device_id, "models": self.state, "ts": time.time()}
        bridge.publish(self.state_topic, orjson.dumps(doc), 1, True)
