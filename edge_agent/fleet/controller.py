"""The rollout loop: command a wave, watch it settle, go on, halt, or roll back.

Every decision is a pure look at the record and the inventory (``tick``), taken
again whenever a message arrives or half a second passes, so a controller that
starts over from the persisted record (``fleet resume`` after ``kill -9``)
simply carries on: units marked commanded are never commanded again, outcomes
already recorded stay. The record is saved *before* a command is published
(at most once per unit; a crash in between leaves a unit commanded on paper
that never heard it, which the wave timeout reports) and after every outcome.

A unit's outcome in a started wave, read from its retained OTA state:
``success`` (active on the version), ``error`` (rolled_back / failed on it,
with the unit's code and reason), ``offline`` (its status is offline: Last
Will or clean stop), ``timeout`` (none of those within --wave-timeout).
Offline and timeout may still turn into success or error while the rollout
runs. The next wave starts when the wave's successes reach the success
threshold of its units that are not offline; errors beyond the error
threshold halt the rollout at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

from ..errors import BrokerLost, RolloutLeaseHeld
from .bus import FleetBus
from .plan import allowed_errors, needed, parse_threshold
from .record import FINAL, SETTLED, Lease, RolloutRecord, RolloutStore, UnitEntry, check_lease

log = logging.getLogger(__name__)

_RESTING = frozenset({"idle", "active", "rolled_back", "failed"})


class Controller:
    def __init__(self, bus: FleetBus, store: RolloutStore, rec: RolloutRecord, owner: str, *, lease_s: float = 30.0,
                 on_change: Optional[Callable[[RolloutRecord], None]] = None, tick_s: float = 0.5) -> None:
        self.bus, self.store, self.rec, self.owner = bus, store, rec, owner
        self.lease_s, self.tick_s = lease_s, tick_s
        self.on_change = on_change
        self._success = parse_threshold(rec.success_threshold, "--success-threshold")
        self._errors = parse_threshold(rec.error_threshold, "--error-threshold")
        self._published_at = 0.0
        self._dirty = False

    # --- lease and persistence -------------------------------------------------------

    def take_lease(self) -> None:
        """Refuse when the retained record (or the local one) shows another live owner; else own it."""
        for other in (self.bus.records.get(self.rec.id), self.rec):
            if other is not None:
                check_lease(other, self.owner)
        self.rec.lease = Lease(owner=self.owner, expires_at=time.time() + self.lease_s)
        self.save(publish_now=True)

    def save(self, publish_now: bool = False) -> None:
        """Persist now (always); publish the retained record at most once a second unless asked."""
        self.store.save(self.rec)
        self._dirty = True
        if self.on_change is not None:
            self.on_change(self.rec)
        if publish_now or time.monotonic() - self._published_at >= 1.0:
            self._publish()

    def _publish(self) -> None:
        self.bus.publish_record(self.rec)
        self._published_at = time.monotonic()
        self._dirty = False

    def _renew(self) -> None:
        if self.rec.lease is not None and self.rec.lease.expires_at - time.time() < self.lease_s * 2 / 3:
            self.rec.lease = Lease(owner=self.owner, expires_at=time.time() + self.lease_s)
            self.save(publish_now=True)
        elif self._dirty and time.monotonic() - self._published_at >= 1.0:
            self._publish()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> RolloutRecord:
        self.take_lease()
        while self.rec.state not in FINAL:
            self._check_broker()
            self._check_still_ours()
            self.apply_control()
            self._renew()
            if self.rec.state in ("running", "rolling_back"):
                self.tick(time.time())
            self.bus.changed.clear()
            try:
                await asyncio.wait_for(self.bus.changed.wait(), self.tick_s)
            except asyncio.TimeoutError:
                pass
        self.rec.lease = None  # released: `fleet resume` elsewhere need not wait for it
        self.rec.finished_at = self.rec.finished_at or time.time()
        self.save(publish_now=True)
        await self.bus.drained()
        return self.rec

    def _check_broker(self) -> None:
        """Fail stop when the broker is gone (disconnected, or publishes unacknowledged for a
        lease): the record is saved as it stands (lease kept), and `fleet resume` carries on
        once the broker is back, from the units' own retained states."""
        if self.bus.lost or self.bus.unacked_for() > self.lease_s:
            self.store.save(self.rec)
            raise BrokerLost(f"rollout {self.rec.id}: lost the broker; stopped with the record saved "
                             f"(state {self.rec.state}, wave {self.rec.wave + 1}): run `edge-agent fleet resume "
                             f"{self.rec.id}` when it is back")

    def _check_still_ours(self) -> None:
        """Another controller took the record (our lease ran out while we were stopped): stop."""
        seen = self.bus.records.get(self.rec.id)
        if seen is not None and seen.lease is not None and seen.lease.owner != self.owner \
                and seen.updated_at > self.rec.updated_at:
            raise RolloutLeaseHeld(f"rollout {self.rec.id} was taken over by {seen.lease.owner}", owner=seen.lease.owner)

    def apply_control(self) -> None:
        """pause / resume (also: approve the next wave) / abort, from `fleet pause|resume|abort`."""
        doc = self.bus.controls.get(self.rec.id)
        if not doc:
            return
        action, state = doc.get("action"), self.rec.state
        if action == "pause" and state in ("running", "awaiting_approval"):
            self.rec.state = "paused"
        elif action == "resume" and state in ("paused", "awaiting_approval"):
            self.rec.state = "running"
            if state == "awaiting_approval":
                self.rec.approved = self.rec.wave + 1
        elif action == "abort" and state not in FINAL:
            self.halt("aborted by an operator", final="aborted")
        log.info("fleet: %s: %s -> %s", self.rec.id, action, self.rec.state)
        self.bus.clear_control(self.rec.id)
        self.save(publish_now=True)

    def tick(self, now: float) -> None:
        rec = self.rec
        changed = any([self._observe(dev, u, now) for dev, u in rec.units.items() if u.wave <= rec.wave])
        if rec.state == "rolling_back":
            changed |= self._roll_back(now)
            if changed:
                self.save()
            return
        errors = rec.counts()["error"]
        if errors > allowed_errors(self._errors, len(rec.units)):
            self.halt(f"{errors} unit(s) failed the update (error threshold {rec.error_threshold})")
            return
        k = rec.wave
        if k < 0:
            self._start_wave(0, now)
            return
        c = rec.counts(k)
        live = len(rec.in_wave(k)) - c["offline"]
        if c["success"] >= needed(self._success, live):
            if rec.wave_finished_at[k] is None:
                rec.wave_finished_at[k] = now
                changed = True
            if k == len(rec.waves) - 1:
                if rec.counts()["pending"] == 0:
                    rec.state, rec.finished_at = "done", now
                    changed = True
            elif rec.approve_each_wave and rec.approved <= k:
                rec.state = "awaiting_approval"
                changed = True
            else:
                self._start_wave(k + 1, now)
                return
        elif c["pending"] == 0:
            self.halt(f"wave {k + 1}: {c['success']} successes, {needed(self._success, live)} needed "
                      f"(success threshold {rec.success_threshold} of {live} units online)")
            return
        if changed:
            self.save()

    # --- steps -------------------------------------------------------------------------

    def _start_wave(self, k: int, now: float) -> None:
        """Mark the wave's commands in the record, save, then publish them (at most once per unit)."""
        rec = self.rec
        rec.wave = k
        rec.wave_started_at.append(now)
        rec.wave_finished_at.append(None)
        todo = [dev for dev in rec.in_wave(k) if self._prepare(dev, rec.units[dev], now)]
        self.save(publish_now=True)
        for dev in todo:
            self.bus.command(dev, rec.model, rec.version, rec.controller)
        log.info("fleet: %s: wave %d of %d started: %d unit(s) commanded", rec.id, k + 1, len(rec.waves), len(todo))

    def _prepare(self, dev: str, u: UnitEntry, now: float) -> Optional[bool]:
        """Decide one not yet commanded unit: True to command it (marked so already), False when
        its outcome is known without a command, None to wait: a unit busy with another update
        refuses a command until that ends, so it is commanded once it rests (or times out)."""
        unit = self.bus.inventory.units.get(dev)
        ota = (unit.ota.get(self.rec.model) or {}) if unit else {}
        if unit is not None and unit.served(self.rec.model) == self.rec.version and ota.get("state") in _RESTING:
            u.outcome, u.reason, u.finished_at = "success", "already serving the version", now
            return False
        if unit is None or unit.online is False:
            u.outcome, u.reason = "offline", f"offline when its wave started ({unit.reason if unit else 'never seen'})"
            return False
        if self.rec.version in (ota.get("rejected") or []):
            u.outcome, u.code, u.finished_at = "error", ota.get("code") or "rejected_before", now
            u.reason = f"the unit refused version {self.rec.version} before"
            return False
        u.outcome = None
        if ota.get("state") not in _RESTING and ota.get("state") is not None:
            u.reason = f"waiting: busy with an update ({ota.get('state')} {ota.get('target')})"
            return None
        u.previous = unit.served(self.rec.model)
        u.seen_at = ota.get("updated_at")
        u.commanded_at, u.reason = now, None
        self.rec.commands += 1
        return True

    def _observe(self, dev: str, u: UnitEntry, now: float) -> bool:
        """Read the unit's outcome from the broker's view; True when the record changed."""
        if u.outcome in SETTLED:
            return False
        unit = self.bus.inventory.units.get(dev)
        if u.commanded_at is None:
            return self._not_commanded(dev, u, now)
        ota = (unit.ota.get(self.rec.model) or {}) if unit else {}
        fresh = ota.get("updated_at") != u.seen_at
        outcome = None
        if fresh and ota.get("target") == self.rec.version and ota.get("state") == "active":
            outcome = "success"
        elif fresh and ota.get("target") == self.rec.version and ota.get("state") in ("rolled_back", "failed"):
            outcome = "error"
        elif unit is not None and unit.online is False:
            outcome = "offline"
        elif now > self.rec.wave_started_at[u.wave] + self.rec.wave_timeout_s:
            outcome = "timeout"
        if outcome is None or outcome == u.outcome:
            return False
        u.outcome, u.finished_at = outcome, now
        if outcome == "error":
            u.code, u.reason = ota.get("code"), ota.get("reason")
        elif outcome == "offline":
            u.reason = f"status offline ({unit.reason})"
        elif outcome == "timeout":
            u.reason = f"no outcome within {self.rec.wave_timeout_s:g} s (OTA state {ota.get('state')})"
        else:
            u.code = u.reason = None
        return True

    def _not_commanded(self, dev: str, u: UnitEntry, now: float) -> bool:
        """A unit of a started wave not commanded yet (offline, or busy, when its wave started):
        command it once it can take the command, within the wave's timeout."""
        if self.rec.state != "running":
            return False
        before = (u.outcome, u.reason)
        verdict = self._prepare(dev, u, now)
        if verdict:
            self.save(publish_now=True)
            self.bus.command(dev, self.rec.model, self.rec.version, self.rec.controller)
            return True
        if verdict is None and now > self.rec.wave_started_at[u.wave] + self.rec.wave_timeout_s:
            u.outcome, u.finished_at = "timeout", now
        return (u.outcome, u.reason) != before

    def halt(self, reason: str, final: str = "halted") -> None:
        rec = self.rec
        rec.halt_reason = reason
        log.warning("fleet: %s: %s: %s", rec.id, final, reason)
        if rec.rollback_on_halt:
            rec.state = "rolling_back"
            rec.final_state = final
            rec.rollback_started_at = time.time()
            self._roll_back(time.time())
        else:
            rec.state, rec.finished_at = final, time.time()
        self.save(publish_now=True)

    def _roll_back(self, now: float) -> bool:
        """Command every updated unit back to its previous version, once; watch them get there."""
        rec, changed, todo = self.rec, False, []
        for dev, u in rec.units.items():
            unit = self.bus.inventory.units.get(dev)
            if u.outcome == "success" and u.rollback is None and u.previous and u.commanded_at is not None:
                u.rollback, u.rollback_at = "commanded", now
                rec.commands += 1
                todo.append((dev, u.previous))
            elif u.rollback == "commanded" and unit is not None:
                ota = unit.ota.get(rec.model) or {}
                if unit.served(rec.model) == u.previous and ota.get("state") in _RESTING:
                    u.rollback, changed = "restored", True
                elif now > (u.rollback_at or now) + rec.wave_timeout_s:
                    u.rollback, changed = "timeout", True
        if todo:
            self.save(publish_now=True)
            for dev, previous in todo:
                self.bus.command(dev, rec.model, previous, rec.controller, force=True)
            changed = True
        pending = any(u.commanded_at is not None and u.outcome is None for u in rec.units.values())
        waiting = any(u.rollback == "commanded" for u in rec.units.values())
        timed_out = now > (rec.rollback_started_at or now) + rec.wave_timeout_s
        if not waiting and (not pending or timed_out):
            rec.state, rec.finished_at = rec.final_state or "halted", now
            changed = True
        return changed
