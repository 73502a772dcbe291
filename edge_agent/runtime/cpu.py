"""What this CPU offers for INT8 inference, read from ``/proc/cpuinfo``.

One reader for the daemon (which model artifact to serve, runtime/artifacts.py),
`edge-agent quantize` (whether an artifact's accuracy gate can run faithfully
here) and `edge-agent doctor` (the ``cpu_int8`` check). It imports nothing
but the standard library: the doctor must work when the serving stack does
not.

The flag names are the kernel's: the ``flags`` line on x86 (``avx2``,
``avx512_vnni``, ``avx_vnni``, ``amx_int8``), the ``Features`` line on aarch64
(``asimd``, ``asimddp``, ``i8mm``). They are what ONNX Runtime's MLAS library
asks CPUID / HWCAP for when it picks its integer GEMM kernels, which is what
decides both the speed and the exactness of a quantized graph:

- x86 with VNNI (``avx512_vnni``, ``avx_vnni``) or AMX (``amx_int8``): the
  U8S8 kernels (uint8 activations x int8 weights) sum products exactly in
  int32 and are the fastest.
- x86 with AVX2 but no VNNI: the U8S8 kernels add pairs of products in int16
  (``vpmaddubsw``), which saturates; the U8U8 kernels (uint8 weights) widen
  to int16 first and are exact.
- aarch64: NEON, dot-product (``asimddp``) and i8mm kernels accumulate in
  32 bits: exact for either weight type.
"""

from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import FrozenSet, Optional

CPUINFO = Path("/proc/cpuinfo")

INT8_X86 = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2")
INT8_ARM = ("i8mm", "asimddp")
# CPUs on which ONNX Runtime's U8S8 (int8-weight) kernels accumulate exactly.
EXACT_U8S8_X86 = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Arm cores by (CPU implementer, CPU part) from /proc/cpuinfo, which names no model on arm64.
ARM_CORES = {("0x4e", "0x004"): "NVIDIA Carmel (Xavier)", ("0x41", "0xd42"): "Cortex-A78AE (Orin)",
             ("0x41", "0xd08"): "Cortex-A72", ("0x41", "0xd0c"): "Neoverse N1", ("0x41", "0xd40"): "Neoverse V1"}

# Feature names a model.yaml artifact may require. A closed list so that a typo
# ("avx512vnni") is refused when the version loads instead of silently never
# matching. Extend it when a new instruction set matters to a kernel.
KNOWN_FEATURES = frozenset({
    # x86
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
    "avx512_vnni", "avx_vnni", "avx_vnni_int8", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    # aarch64
    "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2",
})


@dataclass(frozen=True)
class CpuInfo:
    """The first processor's entry: every core of the units this project serves is the same kind."""

    arch: str  # "x86_64" | "arm64" | what platform.machine() says when /proc/cpuinfo has no flags line
    model: str
    flags: FrozenSet[str]

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def int8_features(self) -> list:
        """The INT8-relevant flags this CPU has, best first (for logs, doctor and benchmark reports)."""
        return [f for f in (INT8_ARM if self.arch == "arm64" else INT8_X86) if f in self.flags]

    @property
    def exact_u8s8(self) -> bool:
        """Whether ONNX Runtime's U8S8 (int8-weight) kernels are exact here (no int16 saturation)."""
        return self.arch == "arm64" or bool(EXACT_U8S8_X86 & self.flags)

    def describe(self) -> str:
        feats = ", ".join(self.int8_features) or "no INT8 features"
        return f"{self.model} ({self.arch}; {feats})"


def parse_cpuinfo(text: str, machine: Optional[str] = None) -> CpuInfo:
    """``/proc/cpuinfo`` text -> CpuInfo. ``machine`` (default platform.machine()) names the
    architecture only when the text has no flags line at all."""
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    flags = frozenset(m.group(1).split()) if m else frozenset()
    arm = bool(re.search(r"^Features\s*:", text, re.M))
    name = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    model = name.group(1).strip() if name else ""
    if arm:
        impl = re.search(r"^CPU implementer\s*:\s*(\S+)", text, re.M)
        part = re.search(r"^CPU part\s*:\s*(\S+)", text, re.M)
        model = ARM_CORES.get((impl.group(1), part.group(1)) if impl and part else ("", ""), model)
    if m:
        arch = "arm64" if arm else "x86_64"
    else:
        arch = machine or platform.machine()
    return CpuInfo(arch, model or arch, flags)


def read_cpuinfo(path: Path = CPUINFO) -> CpuInfo:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


@functools.lru_cache(maxsize=1)
def this_cpu() -> CpuInfo:
    """This machine's CPU, read once per process (it does not change while the daemon runs)."""
    return read_cpuinfo()
