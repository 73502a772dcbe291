"""Orin's over-current throttling events, from the ``soctherm_oc`` hwmon device (sysfs).

tegrastats prints no throttling. On Orin (tegra234) the kernel's over-current
event driver registers a hwmon device named ``soctherm_oc`` with, per
over-current sensor N (1..3), ``ocN_event_cnt`` (how often the power supply
hit its limit and the SoC throttled, as counted by the BPMP) and
``ocN_throt_en``. Xavier and older JetPacks have no such device: then
nothing is read and nothing exported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional

HWMON = Path("/sys/class/hwmon")
_EVENT = re.compile(r"(oc\d+)_event_cnt$")


def find_soctherm_oc(root: Path = HWMON) -> Optional[Path]:
    """The ``soctherm_oc`` hwmon directory, or None."""
    try:
        for d in sorted(root.iterdir()):
            try:
                if (d / "name").read_text().strip() == "soctherm_oc":
                    return d
            except OSError:
                continue
    except OSError:
        pass
    return None


def overcurrent_events(device: Path) -> Dict[str, int]:
    """``{"oc1": count, ...}`` from the device's ``ocN_event_cnt`` files (unreadable ones left out)."""
    out = {}
    for f in sorted(device.glob("oc*_event_cnt")):
        m = _EVENT.match(f.name)
        if m:
            try:
                out[m.group(1)] = int(f.read_text().strip())
            except (OSError, ValueError):
                continue
    return out
