"""What people and programs see of a rollout and the fleet: progress lines, the
summary (one JSON object with --json), the unit table. Pure formatting."""

from __future__ import annotations

import sys
import time
from typing import IO, List, Optional

from .inventory import Unit
from .record import RolloutRecord

OUTCOMES = ("success", "error", "offline", "timeout", "pending", "untouched")


def summary(rec: RolloutRecord, messages: Optional[dict] = None) -> dict:
    waves = []
    for k, devices in enumerate(rec.waves):
        started = rec.wave_started_at[k] if k < len(rec.wave_started_at) else None
        finished = rec.wave_finished_at[k] if k < len(rec.wave_finished_at) else None
        waves.append({"wave": k + 1, "units": len(devices), **rec.counts(k), "started_at": started,
                      "seconds": round(finished - started, 2) if started and finished else None})
    by = {o: sorted(d for d, u in rec.units.items() if u.outcome == o) for o in ("error", "offline", "timeout")}
    out = {
        "id": rec.id, "model": rec.model, "version": rec.version, "group": rec.group, "state": rec.state,
        "halt_reason": rec.halt_reason, "units": len(rec.units), "totals": rec.counts(), "waves": waves,
        "errors": [{"device": d, "code": rec.units[d].code, "reason": rec.units[d].reason} for d in by["error"]],
        "offline": by["offline"], "timeouts": by["timeout"],
        "rollback": {s: sorted(d for d, u in rec.units.items() if u.rollback == s)
                     for s in ("commanded", "restored", "timeout")} if rec.rollback_on_halt else None,
        "commands": rec.commands,
        "seconds": round((rec.finished_at or time.time()) - rec.created_at, 2),
    }
    if messages is not None:
        out["messages"] = messages
    return out


class Progress:
    """One line per change of the per-wave counts (stderr): a live view that also reads well in a log."""

    def __init__(self, stream: IO = sys.stderr) -> None:
        self.stream = stream
        self._last: Optional[tuple] = None

    def __call__(self, rec: RolloutRecord) -> None:
        k = max(rec.wave, 0)
        c = rec.counts(k)
        key = (rec.state, k) + tuple(c[o] for o in OUTCOMES)
        if key == self._last:
            return
        self._last = key
        t = rec.counts()
        shown = " ".join(f"{o} {c[o]}" for o in OUTCOMES[:5] if c[o] or o == "success")
        print(f"[{time.strftime('%H:%M:%S')}] {rec.id} {rec.state}: wave {k + 1}/{len(rec.waves)} ({shown}) "
              f"| all: {t['success']}/{len(rec.units)} success, {t['error']} error", file=self.stream, flush=True)


def render_summary(s: dict) -> str:
    lines = [f"rollout {s['id']}: {s['model']} {s['version']} on group {s['group']} -- {s['state'].upper()}"
             + (f" ({s['halt_reason']})" if s["halt_reason"] else "")]
    lines.append(f"{'wave':>4} {'units':>5} " + " ".join(f"{o:>9}" for o in OUTCOMES) + "  seconds")
    for w in s["waves"]:
        lines.append(f"{w['wave']:>4} {w['units']:>5} " + " ".join(f"{w[o]:>9}" for o in OUTCOMES)
                     + f"  {'' if w['seconds'] is None else w['seconds']}")
    for e in s["errors"]:
        lines.append(f"  error   {e['device']}: [{e['code']}] {e['reason']}")
    for d in s["offline"]:
        lines.append(f"  offline {d}")
    for d in s["timeouts"]:
        lines.append(f"  timeout {d}")
    if s["rollback"]:
        lines.append("  rollback: " + ", ".join(f"{k} {len(v)}" for k, v in s["rollback"].items()))
    lines.append(f"{s['commands']} OTA command(s), {s['seconds']} s")
    return "\n".join(lines)


def render_units(units: List[Unit]) -> str:
    rows = [("DEVICE", "STATUS", "GROUP", "LABELS", "MODEL", "SERVED", "PREVIOUS", "OTA")]
    for u in units:
        status = "online" if u.online else (f"offline ({u.reason})" if u.online is False else "unknown")
        labels = ",".join(f"{k}={v}" for k, v in sorted(u.labels.items())) or "-"
        models = u.to_json()["models"] or {"-": {}}
        for name, m in models.items():
            ota = m.get("ota_state") or "-"
            if m.get("ota_target") and ota not in ("-", "idle"):
                ota += f" {m['ota_target']}" + (f" [{m['code']}]" if m.get("code") else "")
            rows.append((u.device, status, u.group or "-", labels, name, m.get("served") or "-",
                         m.get("previous") or "-", ota))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render_rollouts(records: List[RolloutRecord]) -> str:
    if not records:
        return "no rollouts"
    lines = []
    for rec in sorted(records, key=lambda r: r.created_at):
        t = rec.counts()
        lease = f", lease {rec.lease.owner}" if rec.lease and rec.lease.expires_at > time.time() else ""
        lines.append(f"{rec.id}: {rec.model} {rec.version} {rec.state} wave {max(rec.wave, 0) + 1}/{len(rec.waves)} "
                     f"success {t['success']}/{len(rec.units)} error {t['error']} offline {t['offline']} "
                     f"timeout {t['timeout']}{lease}" + (f" -- {rec.halt_reason}" if rec.halt_reason else ""))
    return "\n".join(lines)
