"""How to reach the broker: BrokerSettings, TlsSettings and the password file reader,
shared by the transport, the CLI client and scripts (re-exported by bridge.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...config import read_secret

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
    return read_secret(password_file, "mqtt.password_file")
