"""OTA commands from outside (MQTT ``{prefix}/{device}/ota``, ``fleet/{group}/ota``, local):
what a command may say, checked before anything is queued.

``{"model": "digits", "version": "3", "force": false}`` installs that version
(force: a downgrade, or a version refused before); ``{"model": "digits",
"channel": "canary"}`` checks that channel now; without ``model`` a channel
command applies to every followed model. Anything else is refused with
``malformed_request`` or ``unknown_model``.
"""

from __future__ import annotations

from typing import Collection, Dict, List, Tuple

from ..errors import MalformedRequest, UnknownModel
from .manifest import safe_name

KEYS = frozenset({"model", "version", "channel", "force"})


def parse_command(doc: object, followed: Collection[str]) -> Tuple[List[str], Dict]:
    """(models it applies to, ``{"version"?, "channel"?, "force"}``); raises EdgeError."""
    if not isinstance(doc, dict):
        raise MalformedRequest("an OTA command is a JSON object")
    unknown = set(doc) - KEYS
    if unknown:
        raise MalformedRequest(f"OTA command: unknown keys {sorted(unknown)}")
    model, version, channel = doc.get("model"), doc.get("version"), doc.get("channel")
    cmd: dict = {"force": bool(doc.get("force", False))}
    try:
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, (str, int)):
                raise ValueError("version must be a string")
            cmd["version"] = safe_name(str(version))
        if channel is not None:
            cmd["channel"] = safe_name(str(channel))
        if model is not None:
            safe_name(str(model))
    except ValueError as e:
        raise MalformedRequest(f"OTA command: {e}") from None
    if version is None and channel is None:
        raise MalformedRequest("OTA command needs 'version' or 'channel'")
    if model is None:
        if version is not None:
            raise MalformedRequest("OTA command with 'version' needs 'model'")
        return list(followed), cmd
    if str(model) not in followed:
        # A typo must not start following a new model; list models to install in ota.models.
        raise UnknownModel(f"OTA command for model '{model}', which this unit does not follow "
                           f"(follows {sorted(followed)})")
    return [str(model)], cmd
