"""The controller's one broker connection: what it hears and what it publishes.

It subscribes to every unit's retained status and OTA state (fed into an
``Inventory``), the group's retained rollout records and their control topics,
and publishes OTA commands to one unit at a time and the rollout record,
retained. Topic names come from transports/mqtt/topics.py; the connection is
the daemon's own PahoBridge (reconnects, TLS, password file).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Dict, Optional

import orjson

from ..transports.mqtt.bridge import BrokerSettings, PahoBridge, PublishProperties
from ..transports.mqtt.topics import (ota_state_filter, rollout_control_topic, rollout_topic, rollouts_filter,
                                      status_filter, unit_of, unit_ota_topic)
from .inventory import Inventory
from .record import RolloutRecord, parse_record

log = logging.getLogger(__name__)


class FleetBus:
    def __init__(self, settings: BrokerSettings, prefix: str, group: str) -> None:
        self.prefix, self.group = prefix, group
        self.inventory = Inventory()
        self.records: Dict[str, RolloutRecord] = {}
        self.controls: Dict[str, dict] = {}
        self.received = 0
        self.published = 0
        self.changed = asyncio.Event()
        self._pending: set = set()  # mids of publishes the broker has not acknowledged yet
        self._last_message = time.monotonic()
        # The controller fails stop on a lost connection (controller.py ``_check_broker``): it
        # must not go on deciding (timeouts, halts, rollbacks) on what it no longer hears, nor
        # have paho replay what it queued meanwhile over a record another controller took.
        self.connected = False
        self.lost = False
        self._acked_at = time.monotonic()
        self._rollouts_prefix = rollouts_filter(group)[:-1]  # "fleet/{group}/rollouts/"
        self._bridge = PahoBridge(settings, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                                  on_message=self._on_message, on_publish=self._acked, name="fleet")
        self._bridge.publish_events(True)

    async def connect(self, timeout: float = 10.0) -> None:
        self._bridge.start()
        await self._bridge.wait_connected(timeout)

    async def settle(self, quiet_s: float = 0.5, max_s: float = 10.0) -> None:
        """Wait for the burst of retained messages after subscribing to end (``quiet_s`` without one)."""
        end = time.monotonic() + max_s
        await asyncio.sleep(quiet_s)
        while time.monotonic() < end and time.monotonic() - self._last_message < quiet_s:
            await asyncio.sleep(0.05)

    async def close(self, timeout: float = 5.0) -> None:
        await self._bridge.stop(timeout=timeout)

    def _on_disconnect(self) -> None:
        if self.connected:
            self.lost = True
        self.connected = False

    def _acked(self, mid: int) -> None:
        self._pending.discard(mid)
        self._acked_at = time.monotonic()

    def unacked_for(self) -> float:
        """Seconds the oldest wait for a publish acknowledgement has lasted (0 with none
        outstanding): a half-open connection shows here before the keepalive notices it."""
        return time.monotonic() - self._acked_at if self._pending else 0.0

    def _on_connect(self, session_present: bool) -> None:
        self.connected = True
        self._bridge.subscribe([(status_filter(self.prefix), 1), (ota_state_filter(self.prefix), 1),
                                (rollouts_filter(self.group), 1), (rollouts_filter(self.group) + "/control", 1)])

    def _on_message(self, msg) -> None:
        self.received += 1
        self._last_message = time.monotonic()
        topic, payload = msg.topic, bytes(msg.payload)
        try:
            if topic.startswith(self._rollouts_prefix):
                self._on_rollout(topic[len(self._rollouts_prefix):], payload)
            else:
                device = unit_of(self.prefix, topic, "status")
                if device is not None:
                    self.inventory.on_status(device, _json(payload))
                else:
                    device = unit_of(self.prefix, topic, "ota/state")
                    if device is not None:
                        self.inventory.on_ota_state(device, _json(payload))
        except Exception:  # a hostile document must not stop the controller
            log.exception("fleet: message on %r not understood", topic[:120])
        self.changed.set()

    def _on_rollout(self, rest: str, payload: bytes) -> None:
        rollout_id, _, tail = rest.partition("/")
        if tail == "control":
            doc = _json(payload)
            if isinstance(doc, dict):
                self.controls[rollout_id] = doc
            else:
                self.controls.pop(rollout_id, None)
        elif not tail:
            rec = parse_record(payload)
            if rec is not None:
                self.records[rollout_id] = rec
            else:
                self.records.pop(rollout_id, None)

    # --- publishing --------------------------------------------------------------------

    def command(self, device: str, model: str, version: str, controller: str, force: bool = False) -> None:
        """One OTA command to one unit, naming the controller identity the units obey (mqtt.controllers):
        as the MQTT 5 user property and in the body (what an MQTT 3.1.1 unit reads)."""
        body = {"model": model, "version": version, "force": force, "controller": controller}
        self._publish(unit_ota_topic(self.prefix, device), orjson.dumps(body), False,
                      PublishProperties(user=[("controller", controller)]))

    def publish_record(self, rec: RolloutRecord) -> None:
        self._publish(rollout_topic(rec.group, rec.id), orjson.dumps(rec.model_dump(mode="json")), True)

    def control(self, rollout_id: str, action: str) -> None:
        """Ask the controller holding the lease: retained, so it is seen even when sent between two of its looks."""
        self._publish(rollout_control_topic(self.group, rollout_id),
                      orjson.dumps({"action": action, "ts": time.time()}), True)

    def clear_control(self, rollout_id: str) -> None:
        self.controls.pop(rollout_id, None)
        self._publish(rollout_control_topic(self.group, rollout_id), b"", True)

    def _publish(self, topic: str, payload: bytes, retain: bool, props: Optional[PublishProperties] = None) -> None:
        self.published += 1
        self._pending.add(self._bridge.publish(topic, payload, 1, retain, props).mid)

    async def drained(self, timeout: float = 5.0) -> None:
        """Wait until paho has handed every queued publish to the broker (best effort, bounded)."""
        end = time.monotonic() + timeout
        while self._pending and time.monotonic() < end:
            await asyncio.sleep(0.02)


def _json(payload: bytes) -> object:
    if not payload:
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
