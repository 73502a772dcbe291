"""``edge-agent fleet units | rollout | status | pause | resume | abort``.

``register(subparsers)`` adds the ``fleet`` command to the main CLI. Exit codes:
0 done, 1 the rollout halted or was aborted (or another controller holds it),
2 bad arguments (also: no unit matches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from ..errors import EdgeError, RolloutLeaseHeld, RolloutNotFound

DONE, HALTED, BAD_ARGS = 0, 1, 2


def register(subparsers) -> argparse.ArgumentParser:
    fleet = subparsers.add_parser("fleet", help="Fleet rollouts: inventory, waves, halt, resume (docs/FLEET.md).")
    fleet.set_defaults(func=lambda args: (fleet.print_help(), BAD_ARGS)[1])
    sub = fleet.add_subparsers(dest="fleet_command", metavar="{units,rollout,status,pause,resume,abort}")

    def common(p, rollout_id: bool = False) -> None:
        if rollout_id:
            p.add_argument("rollout", metavar="ROLLOUT", help="rollout id")
        p.add_argument("--mqtt", required=True, metavar="HOST:PORT", help="the fleet's broker")
        p.add_argument("--group", default="default", help="fleet group (mqtt.group of the units)")
        p.add_argument("--prefix", default="edge", help="topic prefix (mqtt.prefix of the units)")
        p.add_argument("--username", help="broker account (the controller's, for rollout/resume)")
        p.add_argument("--password-file", type=Path, help="file holding the broker password")
        p.add_argument("--cafile", type=Path, help="CA certificate: connect with TLS")
        p.add_argument("--state-dir", type=Path, help="where rollout records are kept (default "
                       "$EDGE_AGENT_FLEET_DIR or ~/.local/state/edge-agent/fleet)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--settle", type=float, default=1.0, help="seconds without a retained message before acting")

    p = sub.add_parser("units", help="every unit seen on the broker: status, labels, versions, OTA state")
    common(p)
    p.set_defaults(func=cmd_units)

    p = sub.add_parser("rollout", help="roll MODEL VERSION over the units in waves")
    p.add_argument("model")
    p.add_argument("version")
    common(p)
    p.add_argument("--select", action="append", default=[], metavar="LABEL=VALUE", help="only units with this label (repeat: all must match)")
    p.add_argument("--waves", default="1,10%,50%,100%", help="cumulative wave sizes: counts or shares (default 1,10%%,50%%,100%%)")
    p.add_argument("--success-threshold", default="100%", help="successes (of a wave's online units) to start the next wave")
    p.add_argument("--error-threshold", default="0", help="errors tolerated (count, or share of the rollout's units); one more halts")
    p.add_argument("--wave-timeout", default="30m", help="a unit with no outcome this long after its wave started counts as timeout")
    p.add_argument("--approve-each-wave", action="store_true", help="wait for `fleet resume ROLLOUT` before each wave after the first")
    p.add_argument("--rollback-on-halt", action="store_true", help="on halt or abort, command updated units back to their previous version")
    p.add_argument("--controller", default="fleet-controller", help="controller identity the units obey (their mqtt.controllers)")
    p.add_argument("--id", dest="rollout_id", help="rollout id (default MODEL-VERSION-TIMESTAMP)")
    p.add_argument("--lease", default="30s", help="lease held in the retained record; a second controller refuses while it is valid")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("status", help="rollouts retained on the broker (or one of them)")
    p.add_argument("rollout", nargs="?", metavar="ROLLOUT")
    common(p)
    p.set_defaults(func=cmd_status)

    for name, text in (("pause", "stop starting waves (units already commanded carry on)"),
                       ("resume", "continue a paused rollout, approve the next wave, or take over one whose controller died"),
                       ("abort", "end the rollout now (with its --rollback-on-halt: roll back the updated units)")):
        p = sub.add_parser(name, help=text)
        common(p, rollout_id=True)
        if name == "resume":
            p.add_argument("--lease", default="30s", help="lease to hold while driving the rollout")
        p.set_defaults(func=cmd_control, action=name)
    return fleet


# --- plumbing ------------------------------------------------------------------------------


def _bus(args):
    from ..transports.mqtt.bridge import BrokerSettings, TlsSettings, read_password
    from ..transports.mqtt.client import parse_hostport
    from .bus import FleetBus

    host, port = parse_hostport(args.mqtt)
    settings = BrokerSettings(host=host, port=port, client_id=f"edge-fleet-{uuid.uuid4().hex[:10]}", persistent=False,
                              tls=TlsSettings(ca_file=args.cafile) if args.cafile else None, username=args.username,
                              password=read_password(args.password_file), reconnect_min_s=0.2, reconnect_max_s=5.0)
    return FleetBus(settings, args.prefix, args.group)


def _store(args):
    from .record import RolloutStore

    d = args.state_dir or os.environ.get("EDGE_AGENT_FLEET_DIR") or Path.home() / ".local/state/edge-agent/fleet"
    return RolloutStore(Path(d))


def _run(args, body) -> int:
    """Connect, wait for the retained messages, run ``body(bus)``, close; errors become exit codes."""
    async def main() -> int:
        bus = _bus(args)
        try:
            await bus.connect(10.0)
            await bus.settle(quiet_s=min(args.settle, 1.0), max_s=max(args.settle * 10, 5.0))
            return await body(bus)
        finally:
            await bus.close()

    try:
        return asyncio.run(main())
    except ValueError as e:
        print(f"edge-agent fleet: {e}", file=sys.stderr)
        return BAD_ARGS
    except EdgeError as e:
        print(f"edge-agent fleet: error [{e.code}]: {e.message}", file=sys.stderr)
        return BAD_ARGS if isinstance(e, RolloutNotFound) else HALTED
    except (OSError, asyncio.TimeoutError) as e:
        print(f"edge-agent fleet: cannot reach the broker {args.mqtt}: {e or 'timed out'}", file=sys.stderr)
        return HALTED


def _print(args, doc: dict, text: str) -> None:
    print(json.dumps(doc, indent=None if args.json else 2) if args.json else text, flush=True)


def _exit_code(state: str) -> int:
    return DONE if state == "done" else HALTED


async def _drive(args, bus, store, rec, lease: str) -> int:
    from .controller import Controller
    from .plan import parse_duration
    from .record import new_owner
    from .view import Progress, render_summary, summary

    ctl = Controller(bus, store, rec, new_owner(), lease_s=parse_duration(lease), on_change=Progress())
    rec = await ctl.run()
    s = summary(rec, {"published": bus.published, "received": bus.received})
    _print(args, s, render_summary(s))
    return _exit_code(rec.state)


# --- commands --------------------------------------------------------------------------------


def cmd_units(args) -> int:
    from .view import render_units

    async def body(bus) -> int:
        units = bus.inventory.listing(args.group)
        _print(args, {"units": [u.to_json() for u in units]}, render_units(units))
        return DONE

    return _run(args, body)


def cmd_rollout(args) -> int:
    from .plan import parse_duration, parse_selectors, parse_threshold, parse_waves, plan_waves
    from .record import RolloutRecord, UnitEntry

    try:
        steps = parse_waves(args.waves)
        selectors = parse_selectors(args.select)
        parse_threshold(args.success_threshold, "--success-threshold")
        parse_threshold(args.error_threshold, "--error-threshold")
        timeout_s, _ = parse_duration(args.wave_timeout), parse_duration(args.lease)
        rollout_id = args.rollout_id or f"{args.model}-{args.version}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        from ..config.mqtt import check_label
        check_label(rollout_id, "rollout id")
    except ValueError as e:
        print(f"edge-agent fleet rollout: {e}", file=sys.stderr)
        return BAD_ARGS
    store = _store(args)

    async def body(bus) -> int:
        if store.load(rollout_id) is not None or rollout_id in bus.records:
            raise ValueError(f"rollout {rollout_id} exists already: `fleet resume {rollout_id}` continues it")
        units = bus.inventory.select(args.model, args.group, selectors)
        if not units:
            raise ValueError(f"no unit of group {args.group!r} follows {args.model!r}"
                             + (f" with labels {selectors}" if selectors else ""))
        waves = plan_waves([u.device for u in units], steps)
        rec = RolloutRecord(
            id=rollout_id, model=args.model, version=args.version, group=args.group, prefix=args.prefix,
            controller=args.controller, selectors=selectors, wave_spec=args.waves, waves=waves,
            success_threshold=args.success_threshold, error_threshold=args.error_threshold, wave_timeout_s=timeout_s,
            approve_each_wave=args.approve_each_wave, rollback_on_halt=args.rollback_on_halt,
            units={d: UnitEntry(wave=k) for k, ds in enumerate(waves) for d in ds})
        print(f"rollout {rollout_id}: {len(units)} unit(s) in {len(waves)} wave(s) of "
              f"{', '.join(str(len(w)) for w in waves)}", file=sys.stderr, flush=True)
        return await _drive(args, bus, store, rec, args.lease)

    return _run(args, body)


def _find(bus, store, rollout_id: str):
    rec = store.load(rollout_id)
    seen = bus.records.get(rollout_id)
    if rec is None or (seen is not None and seen.updated_at > rec.updated_at):
        rec = seen  # another operator's machine drove it last
    if rec is None:
        raise RolloutNotFound(f"no rollout {rollout_id!r} in {store.dir} nor retained on the broker")
    return rec


def cmd_status(args) -> int:
    from .view import render_rollouts, render_summary, summary

    store = _store(args)

    async def body(bus) -> int:
        if args.rollout:
            s = summary(_find(bus, store, args.rollout))
            _print(args, s, render_summary(s))
            return DONE
        recs = list(bus.records.values())
        _print(args, {"rollouts": [summary(r) for r in recs]}, render_rollouts(recs))
        return DONE

    return _run(args, body)


def cmd_control(args) -> int:
    """pause / abort / resume: ask the live controller, or (none alive) act on the record itself."""
    from .record import FINAL
    from .view import render_summary, summary

    store = _store(args)

    async def body(bus) -> int:
        rec = _find(bus, store, args.rollout)
        live: Optional[str] = rec.lease.owner if rec.lease and rec.lease.expires_at > time.time() else None
        if rec.state in FINAL:
            s = summary(rec)
            _print(args, s, render_summary(s))
            return _exit_code(rec.state)
        if live is not None and args.action == "resume" and rec.state not in ("paused", "awaiting_approval"):
            raise RolloutLeaseHeld(f"rollout {rec.id} is {rec.state}, driven by {live} (lease valid for another "
                                   f"{rec.lease.expires_at - time.time():.0f} s); a second controller refuses. "
                                   "If that controller died, resume after its lease expires", owner=live)
        if live is not None:
            bus.control(rec.id, args.action)
            await bus.drained()
            print(f"asked controller {live} to {args.action} rollout {rec.id}", file=sys.stderr)
            return DONE
        if args.action == "pause":
            rec.state = "paused"
        elif args.action == "abort" and not rec.rollback_on_halt:
            rec.state, rec.halt_reason, rec.finished_at = "aborted", "aborted by an operator", time.time()
        else:  # resume, or abort that must roll back: this process becomes the controller
            if args.action == "abort":
                bus.controls[rec.id] = {"action": "abort"}
            elif rec.state in ("paused", "awaiting_approval"):
                if rec.state == "awaiting_approval":
                    rec.approved = rec.wave + 1
                rec.state = "running"
            return await _drive(args, bus, store, rec, getattr(args, "lease", "30s"))
        store.save(rec)
        bus.publish_record(rec)
        await bus.drained()
        print(f"rollout {rec.id}: {rec.state}", file=sys.stderr)
        return DONE

    return _run(args, body)
