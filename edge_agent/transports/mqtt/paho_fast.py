"""Every use of paho-mqtt's private API, in one place, each guarded.

paho-mqtt 2.x has no public seam for the two things the bridge needs to be
fast, so this module reaches into it; a paho upgrade that moves a name shows up
here and nowhere else. The private names it touches:

- ``paho.mqtt._packet`` (module), its ``decode_publish`` and ``PublishPacket``:
  the incoming PUBLISH decoder is replaced (``install()``). Missing (paho-mqtt
  2.1.0, the last release for Python 3.8, the JetPack 5 stack, decodes inside
  ``client.py``): ``install()`` warns once and paho's own, slower decoder stays.
- ``paho.mqtt.properties.Properties.__dict__`` keys ``packetType``, ``types``,
  ``names``, ``properties`` (its bookkeeping, copied from one template) and the
  ``Properties`` attribute names of the PUBLISH properties: the decoder builds the
  same object paho would. Only used where ``_packet`` is there (same releases).
- ``paho.mqtt.client.Client._create_socket``: ``LoopClient`` overrides it so
  ``reconnect()`` adopts a socket opened off the loop. Missing: ``HAS_SOCKET_SEAM``
  is False and ``PahoBridge`` refuses to start with a clear ``RuntimeError`` (the
  module still imports). There is no public fallback: paho's public ``connect()``
  / ``reconnect()`` do the TCP connect and TLS handshake on the calling thread and
  put their own socket object in place, so the bridge could neither keep the
  loop free of blocking I/O nor stand its batching ``_BrokerSocket`` between paho
  and the wire, which its read/write driving depends on (bridge.py, pump.py).
  Running paho's threaded loop instead would be a second bridge, not a fallback.

The fast decoder: paho decodes every incoming PUBLISH's properties with
``Properties.unpack``, which rescans all 27 property names (``str.replace`` on
each) for every attribute it sets: about 25 us per request message here, a fifth
of what the daemon spends on one MQTT round trip. ``decode_publish`` below reads
the properties a PUBLISH may carry in one pass and fills the same ``Properties``
object paho would have built (same class, same attribute names and values).
Anything it does not handle plainly (a property id a PUBLISH may not carry, a
repeated property, a value paho would refuse, a truncated packet) goes to paho's
own decoder, so errors and edge cases are exactly paho's. ``install()`` puts it in
place of ``paho.mqtt._packet.decode_publish``, which paho's client looks up on each
PUBLISH; tests compare the two decoders.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as paho
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


# paho 2.x calls _create_socket() from reconnect() only; LoopClient relies on that.
HAS_SOCKET_SEAM = callable(getattr(paho.Client, "_create_socket", None))


class LoopClient(paho.Client):
    """paho.Client whose reconnect() adopts a connection opened beforehand, off the loop.

    paho's connect()/reconnect() would do the TCP connect and TLS handshake on
    the calling thread. Here the executor only runs paho's own socket creation
    (which reads settings, nothing else); reconnect() then runs on the loop
    thread with no blocking I/O, so paho's state is only ever touched there.
    """

    adopt = None  # the bridge's _BrokerSocket, handed to the next reconnect()

    def _create_socket(self):
        sock, self.adopt = self.adopt, None
        if sock is None:
            raise ConnectionError("no connection opened for paho to adopt")
        return sock

    def open_blocking(self):
        return paho.Client._create_socket(self)


def require_socket_seam() -> None:
    """Raise RuntimeError (at bridge construction, not import) when paho lacks the seam."""
    if not HAS_SOCKET_SEAM:
        raise RuntimeError(
            f"paho-mqtt {getattr(paho, '__version__', '?')} has no Client._create_socket: the MQTT bridge needs "
            "paho-mqtt 2.x (2.1 or 2.2); see edge_agent/transports/mqtt/paho_fast.py"
        )
