"""A faster decoder for incoming MQTT 5 PUBLISH packets, for paho-mqtt 2.x.

paho decodes every incoming PUBLISH's properties with ``Properties.unpack``,
which rescans all 27 property names (``str.replace`` on each) for every
attribute it sets: about 25 us per request message here, a fifth of what the
daemon spends on one MQTT round trip. ``decode_publish`` below reads the
properties a PUBLISH may carry in one pass and fills the same ``Properties``
object paho would have built (same class, same attribute names and values).
Anything it does not handle plainly (a property id a PUBLISH may not carry, a
repeated property, a value paho would refuse, a truncated packet) goes to
paho's own decoder, so errors and edge cases are exactly paho's.

``install()`` puts it in place of ``paho.mqtt._packet.decode_publish``, which
paho's client looks up on each PUBLISH; tests compare the two decoders.
paho-mqtt 2.1.0 (the last release for Python 3.8, the JetPack 5 stack) has no
``paho.mqtt._packet``: it decodes inside ``client.py``, so there ``install()``
warns once and leaves paho's own decoder in place.
"""

from __future__ import annotations

import logging

from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

try:
    from paho.mqtt import _packet
except ImportError:  # paho-mqtt < 2.2
    _packet = None

log = logging.getLogger(__name__)

_PAHO_DECODE = getattr(_packet, "decode_publish", None)
_V5 = MQTTProtocolVersion.MQTTv5

# The property identifiers a PUBLISH may carry (MQTT 5.0, 3.3.2.3).
_BYTE, _INT16, _INT32, _VBI, _BINARY, _UTF8, _PAIR = range(7)
_PUBLISH_PROPS = {
    1: ("PayloadFormatIndicator", _BYTE),
    2: ("MessageExpiryInterval", _INT32),
    3: ("ContentType", _UTF8),
    8: ("ResponseTopic", _UTF8),
    9: ("CorrelationData", _BINARY),
    11: ("SubscriptionIdentifier", _VBI),  # may repeat: a list
    35: ("TopicAlias", _INT16),
    38: ("UserProperty", _PAIR),  # may repeat: a list of (name, value)
}
_MULTIPLE = frozenset((11, 38))

# paho's Properties keeps four bookkeeping attributes (the same for every
# PUBLISH); one template's are shared instead of rebuilding them per message.
_TEMPLATE = Properties(PacketTypes.PUBLISH)
_SHARED = {k: _TEMPLATE.__dict__[k] for k in ("packetType", "types", "names", "properties")}


class _Fallback(Exception):
    """Not a plain case: let paho decode it (and raise what paho raises)."""


def _vbi(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(4):
        if i >= len(buf):
            raise _Fallback
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    raise _Fallback


def _utf8(buf, i: int, end: int) -> tuple[str, int]:
    if i + 2 > end:
        raise _Fallback
    n = (buf[i] << 8) | buf[i + 1]
    j = i + 2 + n
    if j > end:
        raise _Fallback
    try:
        s = bytes(buf[i + 2 : j]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Fallback from None
    if "\x00" in s or "\ufeff" in s:  # refused by MQTT (and by paho's readUTF)
        raise _Fallback
    return s, j


def _properties(buf, i: int) -> tuple[Properties, int]:
    """Properties starting at ``buf[i]`` (their length prefix); returns the end offset."""
    length, i = _vbi(buf, i)
    end = i + length
    if end > len(buf):
        raise _Fallback
    props = object.__new__(Properties)
    d = props.__dict__
    d.update(_SHARED)
    while i < end:
        ident, i = _vbi(buf, i)
        spec = _PUBLISH_PROPS.get(ident)
        if spec is None:
            raise _Fallback
        name, kind = spec
        if kind == _UTF8:
            value, i = _utf8(buf, i, end)
        elif kind == _BINARY:
            if i + 2 > end:
                raise _Fallback
            n = (buf[i] << 8) | buf[i + 1]
            if i + 2 + n > end:
                raise _Fallback
            value = bytes(buf[i + 2 : i + 2 + n])
            i += 2 + n
        elif kind == _PAIR:
            k, i = _utf8(buf, i, end)
            v, i = _utf8(buf, i, end)
            value = (k, v)
        elif kind == _INT32:
            if i + 4 > end:
                raise _Fallback
            value = int.from_bytes(buf[i : i + 4], "big")
            i += 4
        elif kind == _INT16:
            if i + 2 > end:
                raise _Fallback
            value = (buf[i] << 8) | buf[i + 1]
            i += 2
            if not 1 <= value <= 65535:
                raise _Fallback
        elif kind == _VBI:
            value, i = _vbi(buf, i)
            if not 1 <= value <= 268435455 or i > end:
                raise _Fallback
        else:  # _BYTE
            if i >= end:
                raise _Fallback
            value = buf[i]
            i += 1
            if value not in (0, 1):
                raise _Fallback
        if ident in _MULTIPLE:
            d.setdefault(name, []).append(value)
        elif name in d:
            raise _Fallback  # a property given twice: paho refuses it
        else:
            d[name] = value
    if i != end:
        raise _Fallback
    return props, end


def decode_publish(header: int, packet, protocol) -> _packet.PublishPacket:
    """Same result as ``paho.mqtt._packet.decode_publish``."""
    if protocol != _V5:
        return _PAHO_DECODE(header, packet, protocol)
    try:
        qos = (header & 0x06) >> 1
        if len(packet) < 2:
            raise _Fallback
        slen = (packet[0] << 8) | packet[1]
        i = 2 + slen
        topic = bytes(packet[2:i])
        mid = 0
        if qos > 0:
            if i + 2 > len(packet):
                raise _Fallback
            mid = (packet[i] << 8) | packet[i + 1]
            i += 2
        if i > len(packet):
            raise _Fallback
        props, i = _properties(packet, i)
        return _packet.PublishPacket(dup=bool(header & 0x08), qos=qos, retain=bool(header & 0x01), topic=topic,
                                     mid=mid, properties=props, payload=bytes(packet[i:]))
    except _Fallback:
        return _PAHO_DECODE(header, packet, protocol)


def install() -> bool:
    """Use this decoder for every paho client in the process; False if paho has changed shape."""
    if _PAHO_DECODE is None or not hasattr(_packet, "PublishPacket"):
        import paho.mqtt

        log.warning("mqtt: paho-mqtt %s has no _packet.decode_publish; incoming PUBLISH properties use paho's slower decoder",
                    getattr(paho.mqtt, "__version__", "?"))
        return False
    _packet.decode_publish = decode_publish
    return True
