"""The fast PUBLISH decoder is used where paho has ``_packet`` (paho-mqtt >= 2.2)
and left out, with a warning, where it has not (2.1.0, the Python 3.8 stack).
Runs on both stacks against the paho that is installed."""

from __future__ import annotations

import importlib.util
import logging

import paho.mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from edge_agent.transports.mqtt import paho_fast as fast

HAS_PACKET = importlib.util.find_spec("paho.mqtt._packet") is not None


def test_install_uses_the_fast_decoder_only_where_paho_has_packet(caplog):
    with caplog.at_level(logging.WARNING, logger=fast.__name__):
        installed = fast.install()
    assert installed is HAS_PACKET
    if HAS_PACKET:
        from paho.mqtt import _packet

        assert _packet.decode_publish is fast.decode_publish
        assert not caplog.records
    else:
        assert fast._packet is None and fast._PAHO_DECODE is None
        [rec] = caplog.records
        assert rec.levelno == logging.WARNING and paho.mqtt.__version__ in rec.getMessage()
        assert "slower decoder" in rec.getMessage()


def test_mqtt_bridge_imports_with_either_paho():
    # The bridge installs the decoder at import; with paho 2.1.0 that must not raise.
    from edge_agent.transports.mqtt import bridge as mqtt_bridge

    assert mqtt_bridge.paho_fast is fast
    assert MQTTProtocolVersion.MQTTv5  # paho 2.x enums exist on both stacks
