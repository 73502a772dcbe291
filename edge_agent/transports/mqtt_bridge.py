"""paho-mqtt 2.x bridged to an asyncio loop, with our own reconnect policy.

paho's network thread (``loop_start``) reads and writes the socket; every
callback is handed to the event loop with ``call_soon_threadsafe`` so the rest
of the code never runs on paho's thread. paho's built-in reconnect is turned
off because it has no jitter: a supervisor coroutine reconnects with jittered
exponential backoff, so a fleet of units does not hammer a broker that comes
back, and each failure is logged once with a precise reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Gauge

from ..errors import ConfigError

log = logging.getLogger(__name__)

MQTT_CONNECTED = Gauge("edge_agent_mqtt_connected", "1 while the MQTT connection to the broker is up.", ["client"])
MQTT_RECONNECTS = Counter("edge_agent_mqtt_reconnects_total", "Connection attempts after a lost or failed connection.", ["client"])
MQTT_CONNECT_FAILURES = Counter(
    "edge_agent_mqtt_connect_failures_total", "Failed connection attempts by reason (network, tls, refused).", ["client", "reason"]
)


@dataclass
class TlsSettings:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass
class BrokerSettings:
    host: str
    port: int
    client_id: str
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 30
    # Persistent session: the broker keeps subscriptions and queues QoS 1
    # messages for us while we are away, for session_expiry_s (MQTT 5).
    persistent: bool = True
    session_expiry_s: int = 3600
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # How many unacknowledged QoS 1 messages the broker may send us at once
    # (MQTT 5 Receive Maximum); requests are acknowledged only once answered.
    receive_maximum: int = 256
    # Our own unacknowledged QoS 1 publishes on the wire at once (paho queues the rest).
    max_inflight: int = 256


def read_password(password_file: Path | None) -> str | None:
    """Password from a file, or a systemd credential name under $CREDENTIALS_DIRECTORY.

    The value is never logged; errors name the file only.
    """
    if password_file is None:
        return None
    path = Path(password_file)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds:
        path = Path(creds) / path
    try:
        return path.read_text().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {e.strerror}") from None


def backoff_delay(attempt: int, lo: float, hi: float) -> float:
    """Equal-jitter exponential backoff: half fixed, half random."""
    base = min(hi, lo * (2 ** min(attempt, 30)))
    return random.uniform(base / 2, base)


class PahoBridge:
    """One broker connection. Callbacks run on the asyncio loop.

    on_connect(session_present) after each accepted CONNACK; on_disconnect()
    when a connected session ends; on_message(msg) per PUBLISH; on_publish(mid)
    when paho reports a publish done (PUBACK for QoS 1).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        on_connect: Callable[[bool], None],
        on_disconnect: Callable[[], None],
        on_message: Callable[[paho.MQTTMessage], None],
        on_publish: Callable[[int], None] | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        manual_ack: bool = False,
        name: str = "mqtt",
    ) -> None:
        self.settings = settings
        self.name = name
        self.v5 = settings.protocol == "5"
        self._cb_connect = on_connect
        self._cb_disconnect = on_disconnect
        self._cb_message = on_message
        self._inbox: collections.deque = collections.deque()
        self._drain_scheduled = False
        self._cb_publish = on_publish
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._session_ended = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connected = False
        self.ever_connected = False
        # Bumped per connection: an ack for a message of an older connection
        # must not be sent on the new one (the broker may reuse its mid).
        self.generation = 0
        self._first_connected = asyncio.Event()
        self._refused = False
        self._client = self._make_client(will, manual_ack)

    # --- setup -------------------------------------------------------------

    def _make_client(self, will, manual_ack: bool) -> paho.Client:
        s = self.settings
        proto = paho.MQTTv5 if self.v5 else paho.MQTTv311
        kwargs = {} if self.v5 else {"clean_session": not s.persistent}
        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=proto,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
            **kwargs,
        )
        if s.tls is not None:
            for label, p in (("ca_file", s.tls.ca_file), ("cert_file", s.tls.cert_file), ("key_file", s.tls.key_file)):
                if p is not None and not Path(p).is_file():
                    raise ConfigError(f"mqtt.tls.{label}: {p} does not exist")
            if (s.tls.cert_file is None) != (s.tls.key_file is None):
                raise ConfigError("mqtt.tls: cert_file and key_file must be given together")
            try:
                c.tls_set(
                    ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                    certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                    keyfile=str(s.tls.key_file) if s.tls.key_file else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError) as e:
                raise ConfigError(f"mqtt.tls: cannot load certificates: {e}") from None
            c.tls_insecure_set(s.tls.insecure)
        if s.username is not None:
            c.username_pw_set(s.username, s.password)
        if will is not None:
            topic, payload, qos, retain = will
            c.will_set(topic, payload, qos=qos, retain=retain)
        c.max_inflight_messages_set(s.max_inflight)
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = s.session_expiry_s if s.persistent else 0
            props.ReceiveMaximum = s.receive_maximum
        c.connect_async(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=(not s.persistent) if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        c.on_socket_open = self._t_socket_open
        c.on_connect = self._t_connect
        c.on_disconnect = self._t_disconnect
        c.on_message = self._t_message
        c.on_publish = self._t_publish
        return c

    # --- paho thread callbacks (only hop to the loop) ----------------------

    def _t_socket_open(self, client, userdata, sock) -> None:
        # Without it, small QoS 1 packets wait for Nagle + delayed ACK (~40 ms a hop).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _t_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._loop.call_soon_threadsafe(self._on_connack, bool(flags.session_present), reason_code)

    def _t_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._loop.call_soon_threadsafe(self._on_session_end, str(reason_code))

    def _t_message(self, client, userdata, msg) -> None:
        # Under load many messages arrive per wake-up of the loop: queue them
        # and wake the loop once per burst instead of once per message (each
        # wake-up is a syscall and a context switch).
        self._inbox.append(msg)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._drain_scheduled = False
        inbox, cb = self._inbox, self._cb_message
        while inbox:
            cb(inbox.popleft())

    def _t_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self._cb_publish is not None:
            self._loop.call_soon_threadsafe(self._cb_publish, mid)

    # --- loop side -----------------------------------------------------------

    def _on_connack(self, session_present: bool, reason_code) -> None:
        if reason_code.is_failure:
            self._refused = True
            # A refused CONNACK is a configuration problem (credentials, ACL),
            # not a network blip: say exactly that, then keep retrying.
            MQTT_CONNECT_FAILURES.labels(self.name, "refused").inc()
            log.error(
                "%s: broker %s:%d refused the connection: %s (check username/password and ACLs); retrying",
                self.name, self.settings.host, self.settings.port, reason_code,
            )
            return
        self.connected = True
        self.ever_connected = True
        self.generation += 1
        MQTT_CONNECTED.labels(self.name).set(1)
        log.info("%s: connected to %s:%d (session present: %s)", self.name, self.settings.host, self.settings.port, session_present)
        self._first_connected.set()
        self._cb_connect(session_present)

    def _on_session_end(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        MQTT_CONNECTED.labels(self.name).set(0)
        if was:
            if not self._stopping.is_set():
                log.warning("%s: connection to broker lost: %s", self.name, reason)
            self._cb_disconnect()
        self._session_ended.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        MQTT_CONNECTED.labels(self.name).set(0)
        self._task = self._loop.create_task(self._supervise(), name=f"{self.name}-supervisor")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._first_connected.wait(), timeout)

    def _connect_blocking(self) -> None:
        c = self._client
        c.loop_stop()  # joins the previous, already finished, network thread
        c.reconnect()
        c.loop_start()

    async def _supervise(self) -> None:
        s = self.settings
        attempt = 0
        while not self._stopping.is_set():
            if attempt or self.ever_connected:
                MQTT_RECONNECTS.labels(self.name).inc()
            self._session_ended.clear()
            gen_before = self.generation
            try:
                await asyncio.to_thread(self._connect_blocking)
            except ssl.SSLError as e:
                MQTT_CONNECT_FAILURES.labels(self.name, "tls").inc()
                if isinstance(e, ssl.SSLCertVerificationError):
                    why = f"certificate verify failed: {e.verify_message} (is mqtt.tls.ca_file the broker's CA?)"
                else:
                    why = str(e)
                log.error("%s: TLS handshake with %s:%d failed: %s", self.name, s.host, s.port, why)
            except OSError as e:
                MQTT_CONNECT_FAILURES.labels(self.name, "network").inc()
                log.warning("%s: cannot reach broker %s:%d: %s", self.name, s.host, s.port, e.strerror or e)
            else:
                self._refused = False
                await self._wait_session_end()
                if self.generation != gen_before:
                    attempt = 0  # an accepted session resets the backoff; a refused one does not
                elif not self._refused and not self._stopping.is_set():
                    # With TLS 1.3 a missing or rejected client certificate shows up
                    # only as the broker hanging up before CONNACK.
                    MQTT_CONNECT_FAILURES.labels(self.name, "closed").inc()
                    log.error(
                        "%s: broker %s:%d closed the connection before accepting it (client certificate missing or "
                        "not trusted? protocol mismatch?); retrying", self.name, s.host, s.port,
                    )
            if self._stopping.is_set():
                break
            delay = backoff_delay(attempt, s.reconnect_min_s, s.reconnect_max_s)
            attempt += 1
            log.info("%s: reconnecting in %.1f s", self.name, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _wait_session_end(self) -> None:
        # on_disconnect fires on every normal exit of paho's loop; the thread
        # check covers the few exits that skip it, so we never wait forever.
        while True:
            try:
                await asyncio.wait_for(self._session_ended.wait(), 2.0)
                return
            except asyncio.TimeoutError:
                thread = getattr(self._client, "_thread", None)
                if thread is None or not thread.is_alive():
                    self._on_session_end("network thread ended")
                    return

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.connected:
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._session_ended.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%s: broker did not close the connection within %.1f s", self.name, timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._hard_stop)
        MQTT_CONNECTED.labels(self.name).set(0)

    def _hard_stop(self) -> None:
        c = self._client
        # loop_stop waits for unacknowledged messages while connected; disconnect first.
        if c.is_connected():
            c.disconnect()
        c.loop_stop()

    # --- operations (call on the loop thread) --------------------------------

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, properties: Properties | None = None):
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties if self.v5 else None)

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        if topics:
            self._client.subscribe(topics)

    def unsubscribe(self, topics: list[str]) -> None:
        if topics:
            self._client.unsubscribe(topics)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        if qos > 0 and generation == self.generation and self.connected:
            self._client.ack(mid, qos)
