"""tegrastats lines in the formats NVIDIA documents and jetson-stats parses, one per module/JetPack,
and a fake ``tegrastats`` executable that replays them (put first on a test daemon's PATH)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

# AGX Xavier, JetPack 5.1 (L4T 35), idle; then the same unit under GPU load.
XAVIER_IDLE = ("RAM 2446/31920MB (lfb 6859x4MB) SWAP 0/15960MB (cached 0MB) CPU [2%@1190,1%@1190,0%@1190,0%@1190,off,off,off,off] "
               "EMC_FREQ 0%@2133 GR3D_FREQ 0%@114 APE 150 MTS fg 0% bg 0% AO@30C GPU@30.5C PMIC@50C AUX@29.5C CPU@31.5C "
               "thermal@30.4C Tboard@31C Tdiode@30.5C GPU 0mW/0mW CPU 311mW/311mW SOC 1245mW/1245mW CV 0mW/0mW "
               "VDDRQ 155mW/155mW SYS5V 1297mW/1297mW")
XAVIER_BUSY = ("RAM 9120/31920MB (lfb 3121x4MB) SWAP 12/15960MB (cached 0MB) CPU [38%@2265,41%@2265,35%@2265,30%@2265,"
               "22%@2265,19%@2265,25%@2265,28%@2265] EMC_FREQ 47%@2133 GR3D_FREQ 98%@1377 APE 150 MTS fg 0% bg 3% "
               "AO@41C GPU@52.5C PMIC@50C AUX@41.5C CPU@45C thermal@46.1C Tboard@40C Tdiode@43.25C "
               "GPU 11932mW/9876mW CPU 2451mW/2210mW SOC 3532mW/3401mW CV 0mW/0mW VDDRQ 1244mW/1102mW SYS5V 3960mW/3811mW")
# AGX Orin, JetPack 5.1.2 (L4T 35.4): timestamp first, GPU clock per GPC, sensors that are off at -256C.
ORIN_JP5 = ("12-05-2026 20:10:01 RAM 3422/30536MB (lfb 5733x4MB) SWAP 0/15268MB (cached 0MB) CPU [1%@729,0%@729,0%@729,"
            "0%@729,0%@729,0%@729,0%@729,0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 61%@[918,918] VIC_FREQ 729 "
            "APE 174 CV0@-256C CPU@45.5C Tboard@34C SOC2@41.843C Tdiode@36.5C SOC0@42.343C CV1@-256C GPU@-256C tj@45.5C "
            "SOC1@41.5C CV2@-256C VDD_GPU_SOC 1234mW/1234mW VDD_CPU_CV 400mW/398mW VIN_SYS_5V0 3224mW/3224mW NC 0mW/0mW "
            "VDDQ_VDD2_1V8AO 402mW/402mW NC 0mW/0mW")
# Orin Nano, JetPack 6.0 (L4T 36.3): lower-case sensors, GR3D load without a clock, VDD_IN rails.
ORIN_JP6 = ("12-05-2026 20:11:07 RAM 2085/7620MB (lfb 1x2MB) SWAP 0/3810MB (cached 0MB) CPU [3%@729,2%@729,0%@729,1%@729,"
            "off,off] GR3D_FREQ 12% cpu@47.125C soc2@46.375C soc0@46.406C gpu@96.718C tj@97.5C soc1@47.125C "
            "VDD_IN 4602mW/4587mW VDD_CPU_GPU_CV 520mW/515mW VDD_SOC 1434mW/1430mW")
# Jetson Nano, JetPack 4.6 (L4T 32): POM_ rails without units, no clocks on EMC/GR3D.
NANO_JP4 = ("RAM 1766/3964MB (lfb 197x4MB) SWAP 0/2048MB (cached 0MB) CPU [24%@1224,15%@1224,13%@1224,10%@1224] "
            "EMC_FREQ 0% GR3D_FREQ 0% PLL@21C CPU@25C PMIC@100C GPU@23.5C AO@33.5C thermal@24.5C "
            "POM_5V_IN 2545/2547 POM_5V_GPU 0/0 POM_5V_CPU 549/529")

FAKE = """#!{python}
# A stand-in for L4T's tegrastats: prints the lines of $FAKE_TEGRASTATS_LINES, one per --interval ms,
# in a loop; records each start (its pid) in $FAKE_TEGRASTATS_STARTS; exits with status 3 after
# $FAKE_TEGRASTATS_EXIT_AFTER lines when set (a tegrastats that crashes); on SIGTERM records its pid in
# $FAKE_TEGRASTATS_STARTS.term and exits; prints nothing more after $FAKE_TEGRASTATS_HANG_AFTER lines (a hung one).
import os, signal, sys, time
def terminated(signum, frame):
    with open(os.environ["FAKE_TEGRASTATS_STARTS"] + ".term", "a") as f:
        f.write("%d\\n" % os.getpid())
    sys.exit(0)
signal.signal(signal.SIGTERM, terminated)
lines = open(os.environ["FAKE_TEGRASTATS_LINES"]).read().splitlines()
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000.0
with open(os.environ["FAKE_TEGRASTATS_STARTS"], "a") as f:
    f.write("%d\\n" % os.getpid())
exit_after = int(os.environ.get("FAKE_TEGRASTATS_EXIT_AFTER", "0"))
hang_after = int(os.environ.get("FAKE_TEGRASTATS_HANG_AFTER", "0"))
n = 0
while True:
    for line in lines:
        print(line, flush=True)
        n += 1
        if exit_after and n >= exit_after:
            sys.exit(3)
        while hang_after and n >= hang_after:
            time.sleep(1)
        time.sleep(interval)
"""


def fake_tegrastats(root: Path, lines: list, exit_after: int = 0, hang_after: int = 0) -> dict:
    """Install the fake as ``root/bin/tegrastats``; returns the environment a daemon needs to find it first on PATH."""
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / "tegrastats"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    (root / "lines.txt").write_text("\n".join(lines) + "\n")
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_TEGRASTATS_LINES": str(root / "lines.txt"),
           "FAKE_TEGRASTATS_STARTS": str(root / "starts.txt")}
    if exit_after:
        env["FAKE_TEGRASTATS_EXIT_AFTER"] = str(exit_after)
    if hang_after:
        env["FAKE_TEGRASTATS_HANG_AFTER"] = str(hang_after)
    return env


def starts(root: Path, suffix: str = "") -> list:
    """PIDs of the fake's runs so far (``suffix`` ".term": of those ended by SIGTERM)."""
    try:
        return [int(x) for x in (root / f"starts.txt{suffix}").read_text().split()]
    except FileNotFoundError:
        return []
