"""Recorded /proc/cpuinfo entries (first processor) of the CPU kinds this project meets.

- EPYC_7551_VM: AMD EPYC 7551 (Zen 1) as a CI VM sees it: AVX2, no VNNI. ONNX
  Runtime's U8S8 kernels saturate here (MiniLM v2 with int8 weights failed its gate).
- XEON_AMX: this project's build machine, an Intel Xeon (Sapphire Rapids class,
  family 6 model 167) in a VM: avx512_vnni, avx_vnni, amx_int8.
- CARMEL: one core of a Jetson AGX Xavier (NVIDIA Carmel, ARMv8.2): asimd, no
  asimddp / i8mm; ``carmel_cpuinfo(8)``: the whole module's (8 cores).

Shared by the artifact chooser's tests (tests/quantize/) and the doctor's recorded
Xavier (tests/ops/test_doctor.py).
"""

EPYC_7551_VM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC 7551 32-Core Processor
stepping\t: 2
microcode\t: 0x8001279
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm rep_good nopl xtopology cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy svm cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext perfctr_core ssbd ibpb vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr virt_ssbd arat npt nrip_save vgif overflow_recov succor arch_capabilities
"""

XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 1
microcode\t: 0x1
cpu MHz\t\t: 2600.000
cache size\t: 491520 KB
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch cpuid_fault fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b fsrm serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities
bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass swapgs retbleed bhi spectre_v2_user its its_native_only
"""

_CARMEL_CORE = """processor\t: {n}
model name\t: ARMv8 Processor rev 0 (v8l)
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm dcpop
CPU implementer\t: 0x4e
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0x004
CPU revision\t: 0
MTS version\t: 55637613
"""


def carmel_cpuinfo(cores: int) -> str:
    """A Jetson AGX Xavier's /proc/cpuinfo with ``cores`` Carmel entries, numbered from 0."""
    return "\n".join(_CARMEL_CORE.format(n=n) for n in range(cores))


CARMEL = carmel_cpuinfo(1)
