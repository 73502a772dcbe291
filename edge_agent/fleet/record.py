"""The rollout record: what a rollout is and how far it got, persisted after every change.

One JSON document per rollout: its arguments, the planned waves, each unit's
outcome, and the lease. It is written to ``{state_dir}/{id}.json`` by
atomic_write (temp file, fsync, rename) *before* the step it records takes
effect (a unit is marked commanded before the command is published), so a
controller killed with ``kill -9`` at any moment finds on restart every command
it may have sent and every outcome it saw: ``fleet resume`` never commands a
unit twice. The same document is published retained on
``fleet/{group}/rollouts/{id}`` (fleet/bus.py) for every operator to see.

The lease (``owner``, ``expires_at``) makes one controller the rollout's only
driver: it is renewed in the retained record while the controller runs, and a
second controller that finds it unexpired refuses (``rollout_lease_held``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import atomic_write_json
from ..errors import RolloutLeaseHeld

log = logging.getLogger(__name__)

#: States in which the rollout is over; nothing commands a unit again.
FINAL = frozenset({"done", "halted", "aborted"})
#: A unit's outcomes that end its part of the rollout (offline and timeout may still turn into these).
SETTLED = frozenset({"success", "error"})


class UnitEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wave: int
    previous: Optional[str] = Field(None, description="The version it served before: what --rollback-on-halt restores.")
    commanded_at: Optional[float] = None
    seen_at: Optional[str] = Field(None, description="updated_at of its OTA state when commanded: older news is no outcome.")
    outcome: Optional[str] = Field(None, description="success | error | offline | timeout; None while pending.")
    code: Optional[str] = None
    reason: Optional[str] = None
    finished_at: Optional[float] = None
    rollback: Optional[str] = Field(None, description="commanded | restored | timeout, with --rollback-on-halt.")
    rollback_at: Optional[float] = None


class Lease(BaseModel):
    owner: str
    expires_at: float


class RolloutRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    version: str
    group: str
    prefix: str = "edge"
    controller: str
    selectors: Dict[str, str] = Field(default_factory=dict)
    wave_spec: str
    waves: List[List[str]]
    success_threshold: str = "100%"
    error_threshold: str = "0"
    wave_timeout_s: float
    approve_each_wave: bool = False
    rollback_on_halt: bool = False
    state: str = Field("running", description="running | paused | awaiting_approval | rolling_back | done | halted | aborted")
    wave: int = Field(-1, description="Index of the latest wave started; -1 before the first.")
    wave_started_at: List[float] = Field(default_factory=list)
    wave_finished_at: List[Optional[float]] = Field(default_factory=list)
    units: Dict[str, UnitEntry] = Field(default_factory=dict)
    approved: int = Field(0, description="With approve_each_wave: the last wave index an operator let start.")
    halt_reason: Optional[str] = None
    final_state: Optional[str] = Field(None, description="halted or aborted, while rolling back before it.")
    rollback_started_at: Optional[float] = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    finished_at: Optional[float] = None
    commands: int = Field(0, description="OTA commands published (rollout and rollback).")
    lease: Optional[Lease] = None

    def in_wave(self, k: int) -> List[str]:
        return self.waves[k] if 0 <= k < len(self.waves) else []

    def counts(self, k: Optional[int] = None) -> Dict[str, int]:
        """Units per outcome (pending for none yet, untouched for waves not started), of wave k or all."""
        out = {"success": 0, "error": 0, "offline": 0, "timeout": 0, "pending": 0, "untouched": 0}
        for dev, u in self.units.items():
            if k is not None and u.wave != k:
                continue
            if u.outcome:
                out[u.outcome] += 1
            elif u.commanded_at is None and u.wave > self.wave:
                out["untouched"] += 1
            else:
                out["pending"] += 1
        return out


def new_owner() -> str:
    """This controller's lease identity: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def check_lease(rec: RolloutRecord, owner: str, now: Optional[float] = None) -> None:
    """Raise RolloutLeaseHeld when another owner's lease has not expired."""
    now = time.time() if now is None else now
    lease = rec.lease
    if lease is not None and lease.owner != owner and lease.expires_at > now:
        raise RolloutLeaseHeld(f"rollout {rec.id} is driven by {lease.owner} (lease valid for another "
                               f"{lease.expires_at - now:.0f} s); a second controller refuses", owner=lease.owner,
                               expires_at=lease.expires_at)


def parse_record(payload: bytes) -> Optional[RolloutRecord]:
    """A retained record from the broker; None when empty or not a record (logged)."""
    if not payload:
        return None
    try:
        return RolloutRecord.model_validate(json.loads(payload))
    except (ValueError, ValidationError) as e:
        log.warning("fleet: ignored a rollout record that does not parse: %s", str(e)[:200])
        return None


class RolloutStore:
    """``{dir}/{id}.json``, replaced atomically on every save."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def path(self, rollout_id: str) -> Path:
        return self.dir / f"{rollout_id}.json"

    def save(self, rec: RolloutRecord) -> None:
        rec.updated_at = time.time()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path(rec.id), rec.model_dump(mode="json"))

    def load(self, rollout_id: str) -> Optional[RolloutRecord]:
        try:
            return RolloutRecord.model_validate(json.loads(self.path(rollout_id).read_text()))
        except FileNotFoundError:
            return None
