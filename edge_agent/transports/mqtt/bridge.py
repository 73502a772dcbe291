"""paho-mqtt 2.x driven by the asyncio event loop, with our own reconnect policy.

There is no paho network thread: the loop watches the socket and calls paho's
``loop_read`` / ``loop_write`` / ``loop_misc`` itself (as aiomqtt does), so
every paho callback runs on the loop thread. A paho thread would cost, per
message, a hop to the loop and, per answer, a wake-up of paho's thread through
its socketpair, with the two threads fighting over the GIL.

This module is the connection's life: the paho client built from the settings,
the session's events (CONNACK, disconnect, messages), the supervisor that
connects and reconnects, ``stop``, and the operations the transport calls.
The bytes of an open connection are ``pump.py``'s: reads served from one large
``recv`` and writes gathered into one ``send`` per loop iteration, where paho
alone would make several syscalls per packet. Only the blocking part of a
connection (TCP connect + TLS handshake) runs in an executor; paho's state is
touched on the loop thread alone.

paho's built-in reconnect is off because it has no jitter: a supervisor
coroutine reconnects with jittered exponential backoff, so a fleet of units
does not hammer a broker that comes back, and each failure is logged once with
a precise reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter, Gauge

from ...backoff import backoff_delay
from ...errors import ConfigError
from . import paho_fast
from .pump import SocketPump
from .settings import BrokerSettings, TlsSettings, read_password  # noqa: F401 - re-exported
from .wire import BrokerSocket, PublishProperties  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

MQTT_CONNECTED = Gauge("edge_agent_mqtt_connected", "1 while the MQTT connection to the broker is up.", ["client"])
MQTT_RECONNECTS = Counter("edge_agent_mqtt_reconnects_total", "Connection attempts after a lost or failed connection.", ["client"])
MQTT_CONNECT_FAILURES = Counter(
    "edge_agent_mqtt_connect_failures_total", "Failed connection attempts by reason (network, tls, refused).", ["client", "reason"]
)


# Incoming MQTT 5 PUBLISH properties decoded in one pass instead of paho's
# ~25 us per message (paho_fast.py; same result, paho's on doubt).
paho_fast.install()

class PahoBridge:
    """One broker connection, driven by the running asyncio loop.

    on_connect(session_present) after each accepted CONNACK; on_disconnect()
    when a connected session ends; on_message(msg) per PUBLISH; on_publish(mid)
    when paho reports a publish done (written for QoS 0, PUBACK for QoS 1),
    while publish_events(True) is in force. All
    run on the loop thread, inside paho's read or write: they must not block.
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
        self._disconnect_reason: str | None = None
        self._connected_gauge = MQTT_CONNECTED.labels(name)
        paho_fast.require_socket_seam()
        self._client = self._make_client(will, manual_ack)
        self._io = SocketPump(self._client, name, self._on_session_end)  # the open socket's reads and writes

    # --- setup -------------------------------------------------------------

    def _make_client(self, will, manual_ack: bool) -> paho.Client:
        s = self.settings
        proto = paho.MQTTv5 if self.v5 else paho.MQTTv311
        kwargs = {} if self.v5 else {"clean_session": not s.persistent}
        c = paho_fast.LoopClient(
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
        # Only records the target; the supervisor connects.
        c.connect_async(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            clean_start=(not s.persistent) if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        c.on_connect = self._p_connect
        c.on_disconnect = self._p_disconnect
        c.on_message = self._p_message
        # Off until publish_events(True): paho builds a ReasonCode and a Properties per
        # QoS 0 write just to report it, which nobody reads for plain answers.
        c.on_publish = None
        return c

    # --- paho callbacks (on the loop thread, inside loop_read/loop_write) ----
    # The socket's own (open, close, want write) are the pump's (pump.py).
    # An exception escaping into paho mid-packet would leave its reader out of
    # step with the stream: each callback keeps its own.

    def _p_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            self._on_connack(bool(flags.session_present), reason_code)
        except Exception:
            log.exception("%s: connect handler failed", self.name)

    def _p_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._disconnect_reason = str(reason_code)

    def _p_message(self, client, userdata, msg) -> None:
        try:
            self._cb_message(msg)
        except Exception:
            log.exception("%s: message handler failed on %s", self.name, msg.topic)

    def _p_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if self._cb_publish is not None:
            try:
                self._cb_publish(mid)
            except Exception:
                log.exception("%s: publish handler failed", self.name)

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
        self._connected_gauge.set(1)
        log.info("%s: connected to %s:%d (session present: %s)", self.name, self.settings.host, self.settings.port, session_present)
        self._first_connected.set()
        self._cb_connect(session_present)

    def _on_session_end(self) -> None:
        reason, self._disconnect_reason = self._disconnect_reason or "connection closed", None
        was = self.connected
        self.connected = False
        self._connected_gauge.set(0)
        if was:
            if not self._stopping.is_set():
                log.warning("%s: connection to broker lost: %s", self.name, reason)
            try:
                self._cb_disconnect()
            except Exception:
                log.exception("%s: disconnect handler failed", self.name)
        self._session_ended.set()

    def start(self) -> None:
        self._loop = self._io.loop = asyncio.get_running_loop()
        self._connected_gauge.set(0)
        self._task = self._loop.create_task(self._supervise(), name=f"{self.name}-supervisor")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._first_connected.wait(), timeout)

    async def _open(self):
        """TCP connect + TLS handshake in an executor thread."""
        fut = self._loop.run_in_executor(None, self._client.open_blocking)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_result)  # stopped mid-connect: do not leak the socket
            raise

    async def _supervise(self) -> None:
        s = self.settings
        attempt = 0
        while not self._stopping.is_set():
            if attempt or self.ever_connected:
                MQTT_RECONNECTS.labels(self.name).inc()
            gen_before = self.generation
            try:
                sock = await self._open()
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
                self._session_ended.clear()
                self._client.adopt = BrokerSocket(sock, self._io.kick)
                try:
                    self._client.reconnect()  # on the loop: adopts the socket and queues CONNECT
                except Exception:  # the supervisor must outlive any one attempt
                    log.exception("%s: starting the MQTT session failed", self.name)
                    self._drop_connection()
                    self._session_ended.set()
                await self._run_session()
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

    async def _run_session(self) -> None:
        # paho's loop_misc sends keepalive PINGREQs and drops a connection whose
        # broker went silent (or never sent CONNACK) for a keepalive period.
        while not self._session_ended.is_set():
            try:
                await asyncio.wait_for(self._session_ended.wait(), 1.0)
            except asyncio.TimeoutError:
                if self._io.sock is not None:
                    self._client.loop_misc()

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._io.sock is not None:
            # Written by the next flush; paho then closes the socket.
            self._client.disconnect()
            try:
                await asyncio.wait_for(self._session_ended.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%s: connection to the broker not closed within %.1f s", self.name, timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._drop_connection()
        self._connected_gauge.set(0)

    def _drop_connection(self) -> None:
        self._io.drop()

    # --- operations (call on the loop thread) --------------------------------

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False, properties=None):
        """properties: paho Properties or PublishProperties (MQTT 5 only; dropped on 3.1.1)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties if self.v5 else None)

    def publish_events(self, on: bool) -> None:
        """Report publishes done to on_publish, or stop (only publishes done while on are reported)."""
        want = self._p_publish if on and self._cb_publish is not None else None
        if self._client.on_publish != want:
            self._client.on_publish = want

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        if topics:
            self._client.subscribe(topics)

    def unsubscribe(self, topics: list[str]) -> None:
        if topics:
            self._client.unsubscribe(topics)

    def ack(self, mid: int, qos: int, generation: int) -> None:
        if qos > 0 and generation == self.generation and self.connected:
            self._client.ack(mid, qos)


def _close_result(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()
