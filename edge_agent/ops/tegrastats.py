"""One line of NVIDIA's ``tegrastats`` into numbers: the Jetson's GPU, memory, thermal and power state.

tegrastats (L4T's ``/usr/bin/tegrastats``) prints one line per interval. The
fields vary by module and JetPack; what this reads, as documented by NVIDIA
(Jetson Linux Developer Guide, "tegrastats Utility") and as jetson-stats
parses it:

  ``MM-DD-YYYY HH:MM:SS``          a timestamp, JetPack 5.1 on (ignored)
  ``RAM 2446/31920MB (lfb 6859x4MB)``  used/total, and the largest free block: count x size
  ``SWAP 0/15960MB (cached 0MB)``   used/total
  ``CPU [2%@1190,off,...]``         per core load % @ MHz, ``off`` for a core that is down
  ``EMC_FREQ 0%@2133``              memory controller load % @ MHz (the shared DRAM's bandwidth)
  ``GR3D_FREQ 0%@114``              GPU load % @ MHz; Orin JetPack 5 prints ``0%@[305,305]`` (per GPC),
                                    JetPack 6 often the load alone (``GR3D_FREQ 0%``)
  ``GPU@30.5C`` / ``tj@45.5C``      temperatures; sensor names are upper case on Xavier and JetPack 5
                                    Orin, lower case on JetPack 6; ``-256C`` is a sensor that is off
  ``VDD_GPU_SOC 1234mW/1234mW``     power rails, current/average; Xavier: ``GPU 0mW/0mW``;
                                    Nano/TX2 (JetPack 4): ``POM_5V_IN 2545/2547`` without units

Anything else (``APE 150``, ``MTS fg 0% bg 0%``, ``VIC_FREQ``, ``NVENC``) is
left out. A field that is missing leaves its value out of the sample, so its
gauge is absent rather than 0.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from ..compat import slotted_dataclass

_MB = 1024 * 1024
_UNITS = {"K": 1024, "M": _MB, "G": 1024 * _MB}

_RAM = re.compile(r"\bRAM (\d+)/(\d+)([KMG])B(?: \(lfb (\d+)x(\d+)([KMG])B\))?")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([KMG])B")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"(\d+)%(?:@(\d+))?")
# GR3D_FREQ 12%@1377 | 0%@[305,305] | 0%
_LOAD = re.compile(r"\b(EMC_FREQ|GR3D_FREQ) (\d+)%(?:@(\d+)|@\[([\d,]+)\])?")
# A sensor name then @ then degrees: PLL@21C, Tboard@31C, soc2@41.843C, CV0@-256C.
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
# A rail: NAME cur[mW]/avg[mW]; CPU [ is not one (no slash right after a number).
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_NOT_RAILS = frozenset(("RAM", "SWAP", "IRAM", "NC"))  # NC: a rail not connected (Orin)
# Temperatures at or below this are sensors that are switched off (tegrastats prints -256C).
_SENSOR_OFF_C = -100.0


@slotted_dataclass
class TegraSample:
    """One tegrastats line. None / empty: the field was not in the line."""

    ram_used_bytes: Optional[int] = None
    ram_total_bytes: Optional[int] = None
    ram_lfb_bytes: Optional[int] = None  # largest free block: count x block size
    swap_used_bytes: Optional[int] = None
    swap_total_bytes: Optional[int] = None
    cpu: Optional[List[Tuple[str, float, Optional[float]]]] = None  # (core, load ratio, Hz); offline cores left out
    gpu_load: Optional[float] = None  # ratio 0..1
    gpu_hz: Optional[float] = None  # the highest GPC's clock when several are printed
    emc_load: Optional[float] = None
    emc_hz: Optional[float] = None
    temperatures: Optional[Dict[str, float]] = None  # sensor (lower case) -> °C
    power_mw: Optional[Dict[str, Tuple[float, float]]] = None  # rail -> (current, average) mW


def parse(line: str) -> Optional[TegraSample]:
    """The sample in ``line``; None when it holds none of the fields above
    (not a tegrastats line: an error message, a blank line)."""
    s = TegraSample()
    found = False
    m = _RAM.search(line)
    if m:
        unit = _UNITS[m.group(3)]
        s.ram_used_bytes, s.ram_total_bytes = int(m.group(1)) * unit, int(m.group(2)) * unit
        if m.group(4):
            s.ram_lfb_bytes = int(m.group(4)) * int(m.group(5)) * _UNITS[m.group(6)]
        found = True
    m = _SWAP.search(line)
    if m:
        unit = _UNITS[m.group(3)]
        s.swap_used_bytes, s.swap_total_bytes = int(m.group(1)) * unit, int(m.group(2)) * unit
        found = True
    m = _CPU.search(line)
    if m:
        s.cpu = []
        for i, core in enumerate(m.group(1).split(",")):
            c = _CORE.fullmatch(core.strip())
            if c:  # "off": the core is down, no sample
                s.cpu.append((str(i), int(c.group(1)) / 100.0, int(c.group(2)) * 1e6 if c.group(2) else None))
        found = True
    for m in _LOAD.finditer(line):
        load = int(m.group(2)) / 100.0
        if m.group(3):
            hz: Optional[float] = int(m.group(3)) * 1e6
        elif m.group(4):
            hz = max(int(f) for f in m.group(4).split(",")) * 1e6
        else:
            hz = None
        if m.group(1) == "GR3D_FREQ":
            s.gpu_load, s.gpu_hz = load, hz
        else:
            s.emc_load, s.emc_hz = load, hz
        found = True
    temps = {}
    for m in _TEMP.finditer(line):
        value = float(m.group(2))
        if value > _SENSOR_OFF_C:
            temps[m.group(1).lower()] = value
    if temps:
        s.temperatures = temps
        found = True
    rails = {}
    for m in _RAIL.finditer(line):
        if m.group(1) not in _NOT_RAILS:
            rails[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    if rails:
        s.power_mw = rails
        found = True
    return s if found else None
