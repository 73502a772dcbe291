"""MQTT transport: KServe v2 over a broker (docs/MQTT.md is the wire reference).

One concern per module:

- ``transport.py``    MqttTransport: routes incoming messages, runs requests, owns start/stop (ordered shutdown).
- ``topics.py``       every topic name and topic parser; the only place a topic string is built.
- ``inbound.py``      parse_request: one request message -> InferRequest or coded EdgeError, and its Reply.
- ``reply_topics.py`` where answers may be published (the reply-topic rule).
- ``delivery.py``     publish, track, flush, persist: outbox, at-least-once bookkeeping, redelivery LRU.
- ``outbox.py``       the SQLite outbox of answers and telemetry produced while the broker is away.
- ``ratelimit.py``    token buckets per reply namespace.
- ``rpc.py``          futures by correlation: offloaded requests and the CLI client's answers.
- ``companion.py``    companion side of offloading: shared subscriptions per served model.
- ``offload.py``      edge side of offloading: Offloader, which requests leave the unit and how.
- ``ota_commands.py`` OTA commands from controllers in, OTA state out.
- ``telemetry.py``    MQTT request statistics (kept once, Prometheus included) and the telemetry/status JSON.
- ``bridge.py``       PahoBridge: paho-mqtt driven by the asyncio loop: the connection's life, reconnect with backoff.
- ``pump.py``         SocketPump: the open connection's reads and writes on the loop (one recv, one send per turn).
- ``paho_fast.py``    every use of paho's private API (fast PUBLISH decoder, socket adoption), guarded.
- ``wire.py``        the bytes between paho and the broker: PUBLISH properties encoded once, the socket.
- ``settings.py``    how to reach the broker: BrokerSettings, TlsSettings, the password file.
- ``client.py``       MqttInferClient and run_infer, for ``edge-agent infer --mqtt``, tests and scripts.

Other packages import from here: ``from edge_agent.transports.mqtt import MqttTransport``.
The names are loaded on first use, so importing the package (e.g. for ``topics``) does
not import paho.
"""

from __future__ import annotations

_EXPORTS = {
    "MqttTransport": ".transport",
    "MqttInferClient": ".client",
    "MqttAnswer": ".client",
    "run_infer": ".client",
    "parse_hostport": ".client",
    "Offloader": ".offload",
    "PahoBridge": ".bridge",
    "BrokerSettings": ".bridge",
    "TlsSettings": ".bridge",
    "PublishProperties": ".bridge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
