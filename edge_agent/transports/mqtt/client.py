"""A small asyncio MQTT inference client: `edge-agent infer --mqtt`, tests and bench.

Sends KServe v2 bodies to ``{prefix}/{device}/infer/{model}`` and matches
answers by CorrelationData (MQTT 5) or ``parameters.id`` (3.1.1). With
``persistent=True`` it keeps a broker session and paho re-sends unacknowledged
QoS 1 requests after a reconnect, so a broker restart loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from ...serving.codec import HEADER_LENGTH
from .bridge import BrokerSettings, PahoBridge, PublishProperties, TlsSettings
from .rpc import Calls
from .topics import client_reply_topic, infer_image_topic, infer_topic


@dataclass
class MqttAnswer:
    payload: bytes
    header_length: int | None
    correlation: bytes | str | None

    @property
    def doc(self) -> dict:
        return orjson.loads(self.payload[: self.header_length] if self.header_length is not None else self.payload)

    @property
    def error_code(self) -> str | None:
        d = self.doc
        return d.get("code") if "error" in d else None


def parse_hostport(value: str, default_port: int = 1883) -> tuple[str, int]:
    """"HOST:PORT" (or "HOST", or "[v6]:PORT") -> (host, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {value!r}") from None


class MqttInferClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        device: str,
        prefix: str = "edge",
        protocol: str = "5",
        client_id: str | None = None,
        persistent: bool = False,
        session_expiry_s: int = 600,
        tls: TlsSettings | None = None,
        username: str | None = None,
        password: str | None = None,
        reply_topic: str | None = None,
    ) -> None:
        self.client_id = client_id or f"edge-infer-{uuid.uuid4().hex[:12]}"
        self.prefix, self.device = prefix, device
        self.reply_topic = reply_topic or client_reply_topic(prefix, self.client_id)
        self.v5 = protocol == "5"
        self._calls = Calls()
        # How often each correlation was answered: tests assert exactly once.
        self.answers: collections.Counter = collections.Counter()
        self.unmatched = 0
        # QoS 1 answers the broker re-sent (DUP) because our PUBACK was cut off:
        # the broker<->client leg's at-least-once, dropped here.
        self.redelivered = 0
        settings = BrokerSettings(
            host=host, port=port, client_id=self.client_id, protocol=protocol, persistent=persistent,
            session_expiry_s=session_expiry_s, tls=tls, username=username, password=password,
            reconnect_min_s=0.2, reconnect_max_s=2.0,
        )
        self._subscribed = asyncio.Event()
        self._bridge = PahoBridge(
            settings, on_connect=self._on_connect, on_disconnect=lambda: None,
            on_message=self._on_message, name="client",
        )

    async def connect(self, timeout: float = 10.0) -> None:
        self._bridge.start()
        await self._bridge.wait_connected(timeout)
        await asyncio.sleep(0)

    async def close(self) -> None:
        await self._bridge.stop(timeout=2.0)
        self._calls.cancel_all()

    def _on_connect(self, session_present: bool) -> None:
        self._bridge.subscribe([(self.reply_topic, 1)])

    def _on_message(self, msg) -> None:
        header_length = None
        corr: bytes | str | None = None
        if self.v5 and msg.properties is not None:
            corr = getattr(msg.properties, "CorrelationData", None)
            for k, v in getattr(msg.properties, "UserProperty", None) or []:
                if k.lower() == HEADER_LENGTH.lower():
                    header_length = int(v)
        if corr is None:
            try:
                rid = orjson.loads(msg.payload[:header_length] if header_length else msg.payload).get("id")
            except (orjson.JSONDecodeError, AttributeError):
                rid = None
            corr = str(rid) if rid is not None else None
        if msg.dup and corr in self.answers:
            self.redelivered += 1
            return
        self.answers[corr] += 1
        if not self._calls.resolve(corr, MqttAnswer(bytes(msg.payload), header_length, corr)):
            self.unmatched += 1

    def send(
        self,
        model: str,
        body: dict | bytes,
        *,
        version: str | None = None,
        qos: int = 1,
        correlation: str | None = None,
        user_properties: list[tuple[str, str]] | None = None,
        expiry_s: int | None = None,
        header_length: int | None = None,
        topic: str | None = None,
        content_type: str | None = None,
    ) -> asyncio.Future:
        """Publish one request; the future resolves with its MqttAnswer.

        ``content_type`` ``image/png`` or ``image/jpeg``: ``body`` is the encoded image (MQTT 5:
        the content type; 3.1.1: a topic suffix, and the answer goes to the unit's default
        response topic, as a raw image carries no id or reply topic)."""
        corr = correlation or uuid.uuid4().hex
        if topic is None and content_type is not None and not self.v5:
            topic = infer_image_topic(self.prefix, self.device, model, version, content_type.partition("/")[2])
        topic = topic or infer_topic(self.prefix, self.device, model, version)
        props = None
        if self.v5:
            user = list(user_properties or [])
            if header_length is not None:
                user.append((HEADER_LENGTH, str(header_length)))
            props = PublishProperties(
                correlation=corr.encode(), response_topic=self.reply_topic, expiry_s=expiry_s or None, user=user,
                content_type=content_type,
            )
            key: bytes | str = corr.encode()
            payload = body if isinstance(body, bytes) else orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        else:
            key = corr
            if isinstance(body, bytes):
                payload = body
            else:
                params = dict(body.get("parameters") or {})
                params.update(reply_to=self.reply_topic, id=corr)
                payload = orjson.dumps({**body, "parameters": params}, option=orjson.OPT_SERIALIZE_NUMPY)
        fut = self._calls.register(key)
        self._bridge.publish(topic, payload, qos, False, props)
        return fut

    async def infer(self, model: str, body: dict | bytes, *, timeout: float = 30.0, **kw) -> MqttAnswer:
        fut = self.send(model, body, **kw)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer from {self.prefix}/{self.device} for {model} within {timeout:g} s") from None


def run_infer(
    target: str,
    model: str,
    body: dict | bytes,
    *,
    device: str,
    prefix: str = "edge",
    version: str | None = None,
    protocol: str = "5",
    qos: int = 1,
    timeout: float = 30.0,
    tls: TlsSettings | None = None,
    username: str | None = None,
    password_file: Path | None = None,
    content_type: str | None = None,
) -> dict:
    """One request for the CLI: returns the answer's JSON document (or its error)."""
    from .bridge import read_password

    host, port = parse_hostport(target)

    async def main() -> dict:
        c = MqttInferClient(
            host, port, device=device, prefix=prefix, protocol=protocol, tls=tls,
            username=username, password=read_password(password_file),
        )
        try:
            await c.connect(timeout)
            ans = await c.infer(model, body, version=version, qos=qos, timeout=timeout, content_type=content_type)
            return ans.doc
        finally:
            await c.close()

    return asyncio.run(main())
