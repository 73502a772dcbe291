"""Wave planning: what ``fleet rollout``'s arguments mean, as pure functions.

``--waves 1,10%,50%,100%`` gives cumulative sizes: the first wave is one unit,
the second brings the rollout to 10 % of the selected units, and so on; every
wave has at least one unit and the last takes whatever is left. Units are
ordered by device id, so the same arguments over the same inventory give the
same plan (an operator can predict which units go first).
"""

from __future__ import annotations

import math
import re
from typing import Dict, Iterable, List, Sequence, Tuple

from ..config.mqtt import check_label

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_waves(spec: str) -> List[Tuple[str, float]]:
    """``"1,10%,50%,100%"`` -> ``[("count", 1), ("share", .1), ...]``; ValueError on anything else."""
    steps: List[Tuple[str, float]] = []
    for part in (p.strip() for p in spec.split(",")):
        if part.endswith("%"):
            pct = float(part[:-1]) if _number(part[:-1]) else -1
            if not 0 < pct <= 100:
                raise ValueError(f"wave {part!r}: a share is 0% < N <= 100%")
            steps.append(("share", pct / 100))
        elif part.isdigit() and int(part) > 0:
            steps.append(("count", int(part)))
        else:
            raise ValueError(f"wave {part!r}: a unit count (5) or a share of the selected units (10%)")
    if not steps:
        raise ValueError("--waves needs at least one wave")
    return steps


def plan_waves(devices: Iterable[str], steps: Sequence[Tuple[str, float]]) -> List[List[str]]:
    """Split the (sorted) devices into waves by cumulative size; empty waves are dropped."""
    units = sorted(set(devices))
    n, waves, done = len(units), [], 0
    for i, (kind, value) in enumerate(steps):
        last = i == len(steps) - 1
        upto = n if last else min(n, int(value) if kind == "count" else math.ceil(value * n))
        upto = max(upto, min(n, done + 1))  # every wave moves the rollout on by one unit at least
        if upto > done:
            waves.append(units[done:upto])
            done = upto
    return waves


def parse_threshold(text: str, what: str) -> Tuple[str, float]:
    """``"100%"`` -> ("share", 1.0); ``"0"`` / ``"3"`` -> ("count", 3)."""
    t = text.strip()
    if t.endswith("%") and _number(t[:-1]) and 0 <= float(t[:-1]) <= 100:
        return "share", float(t[:-1]) / 100
    if t.isdigit():
        return "count", float(t)
    raise ValueError(f"{what} {text!r}: a count (0, 3) or a share (5%, 100%)")


def needed(threshold: Tuple[str, float], units: int) -> int:
    """How many of ``units`` a threshold asks for (a share rounds up: 90% of 5 is 5)."""
    kind, value = threshold
    return min(units, int(value)) if kind == "count" else math.ceil(value * units - 1e-9)


def allowed_errors(threshold: Tuple[str, float], units: int) -> int:
    """Errors the rollout tolerates; one more halts it (a share of all units in the rollout)."""
    kind, value = threshold
    return int(value) if kind == "count" else math.floor(value * units + 1e-9)


def parse_duration(text: str) -> float:
    """``"30m"``, ``"90s"``, ``"1.5h"``, ``"500ms"`` or plain seconds -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"duration {text!r}: a positive number with ms, s, m or h")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_selectors(items: Iterable[str]) -> Dict[str, str]:
    """``["site=berlin", "ring=1"]`` -> {"site": "berlin", "ring": "1"} (every one must match)."""
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--select {item!r}: expected label=value")
        out[check_label(key, "label key")] = check_label(value, f"label {key!r}'s value")
    return out


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
