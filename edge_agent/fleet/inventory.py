"""The fleet as the broker knows it: every unit's retained status and OTA state.

A unit publishes ``{prefix}/{device}/status`` (online, or offline by its Last
Will; with its group and labels) and ``{prefix}/{device}/ota/state`` retained,
so a controller that subscribes learns the whole fleet at once, and then every
change as it happens. ``Inventory`` folds those messages into one ``Unit`` per
device; it does no I/O (fleet/bus.py feeds it), so it is tested on documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

#: OTA states in which a unit still serves the version it had before the update.
_SERVES_FALLBACK = frozenset({"downloading", "verifying", "staged", "canary", "rolled_back", "failed"})


@dataclass
class Unit:
    device: str
    online: Optional[bool] = None  # None: only its OTA state was seen
    reason: Optional[str] = None  # why offline: "lost" (Last Will) or "stopped"
    group: Optional[str] = None
    labels: Dict[str, str] = field(default_factory=dict)
    agent_version: Optional[str] = None
    models: Dict[str, dict] = field(default_factory=dict)  # model -> {"versions": [...], "default": v}
    ota: Dict[str, dict] = field(default_factory=dict)  # model -> the unit's update record

    def follows(self, model: str) -> bool:
        return model in self.models or model in self.ota

    def served(self, model: str) -> Optional[str]:
        """The version serving the model's default traffic, as far as the broker shows."""
        rec = self.ota.get(model) or {}
        state = rec.get("state")
        if state == "active" and rec.get("target"):
            return rec["target"]
        if state in _SERVES_FALLBACK and rec.get("fallback"):
            return rec["fallback"]
        return (self.models.get(model) or {}).get("default")

    def previous(self, model: str) -> Optional[str]:
        """What an update from the served version falls back to (``fallback`` of a finished one)."""
        rec = self.ota.get(model) or {}
        return rec.get("fallback") if rec.get("state") == "active" else None

    def to_json(self) -> dict:
        return {"device": self.device, "online": self.online, "reason": self.reason, "group": self.group,
                "labels": self.labels, "agent_version": self.agent_version,
                "models": {m: {"served": self.served(m), "previous": self.previous(m),
                               "versions": (self.models.get(m) or {}).get("versions", []),
                               "ota_state": (self.ota.get(m) or {}).get("state"),
                               "ota_target": (self.ota.get(m) or {}).get("target"),
                               "code": (self.ota.get(m) or {}).get("code")}
                           for m in sorted(set(self.models) | set(self.ota))}}


class Inventory:
    def __init__(self) -> None:
        self.units: Dict[str, Unit] = {}
        self.changes = 0  # bumped on every message: a waiter's cheap "anything new?"

    def unit(self, device: str) -> Unit:
        u = self.units.get(device)
        if u is None:
            u = self.units[device] = Unit(device)
        return u

    def on_status(self, device: str, doc: object) -> None:
        """A retained status document; anything not an object is ignored (a cleared topic: b"")."""
        if not isinstance(doc, dict):
            return
        u = self.unit(device)
        u.online = doc.get("state") == "online"
        u.reason = None if u.online else str(doc.get("reason") or "unknown")
        if isinstance(doc.get("group"), str):
            u.group = doc["group"]
        if isinstance(doc.get("labels"), dict):
            u.labels = {str(k): str(v) for k, v in doc["labels"].items()}
        u.agent_version = doc.get("version") if isinstance(doc.get("version"), str) else u.agent_version
        if u.online and isinstance(doc.get("models"), list):
            u.models = _models(doc["models"])
        self.changes += 1

    def on_ota_state(self, device: str, doc: object) -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
            return
        u = self.unit(device)
        for model, rec in doc["models"].items():
            if isinstance(rec, dict):
                u.ota[str(model)] = rec
        self.changes += 1

    def select(self, model: str, group: Optional[str] = None, labels: Optional[Mapping[str, str]] = None) -> List[Unit]:
        """Units of the group (None: any) carrying every label, that follow the model, by device id."""
        want = dict(labels or {})
        return [u for _, u in sorted(self.units.items())
                if (group is None or u.group == group) and u.follows(model)
                and all(u.labels.get(k) == v for k, v in want.items())]

    def listing(self, group: Optional[str] = None) -> List[Unit]:
        return [u for _, u in sorted(self.units.items()) if group is None or u.group == group]


def _models(index: list) -> Dict[str, dict]:
    """The repository index of a status document -> model -> versions and the default one."""
    out: Dict[str, dict] = {}
    for row in index:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        m = out.setdefault(row["name"], {"versions": [], "default": None})
        v = row.get("version")
        if v is not None:
            m["versions"].append(str(v))
            if row.get("default"):
                m["default"] = str(v)
    return out
