"""CPU targets of `edge-agent quantize --targets`, and how each one's gate runs faithfully anywhere.

Dynamic INT8 multiplies uint8 activations by the weights in ONNX Runtime's
integer GEMM kernels (MLAS), chosen per CPU (runtime/cpu.py):

- int8 weights (U8S8 kernels): exact and fastest with VNNI / AMX on x86; on
  x86 AVX2 without VNNI the kernel adds pairs of u8 x s8 products in int16
  (``vpmaddubsw``), which saturates, so the same file is less accurate there.
- uint8 weights (U8U8 kernels): widened to int16 before multiplying, exact on
  every CPU; on a VNNI CPU they run at about FP32 speed.
- aarch64: both weight types run exact kernels (NEON, or UDOT with asimddp).
  No aarch64 target is offered: which weight type is faster on a Carmel has
  not been measured, and the default is exact there.

So a version ships an int8-weight file for VNNI CPUs and a uint8-weight
default for everything else (model.onnx). Targets that need the same build
share one file.

The accuracy gate of an int8-weight file must see what a VNNI CPU computes.
On a build machine without exact U8S8 kernels it evaluates the file's *exact
twin* instead: every int8 weight w (zero point z) of a MatMulInteger stored as
uint8 w + 128 (zero point z + 128). (w - z) is unchanged, so the twin's
integer sums are the same numbers; it runs on the exact U8U8 kernels. On a
VNNI Xeon the twin and the file give bit-identical outputs
(tests/quantize/test_quantize_targets.py checks it wherever the CPU has VNNI).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..runtime.cpu import CpuInfo
from ..runtime.model_spec import DEFAULT_ARTIFACT
from .convert import QuantizationError


@dataclass(frozen=True)
class Target:
    name: str
    requires: Tuple[str, ...]
    weights: str  # "int8" | "uint8": the dynamic weight type of its build
    why: str


# In order of preference: the daemon takes the first artifact this CPU fits.
TARGETS: Dict[str, Target] = {t.name: t for t in (
    Target("avx512vnni", ("avx512_vnni",), "int8", "AVX-512 VNNI (Xeon Cascade Lake and later, AMD Zen 4 and later): exact, fastest U8S8 kernels"),
    Target("avxvnni", ("avx_vnni",), "int8", "AVX-VNNI without AVX-512 (Intel Alder Lake and later client cores): exact U8S8 kernels"),
    Target("avx2", ("avx2",), "uint8", "AVX2 without VNNI (AMD Zen 1-3, Xeon before Cascade Lake): U8S8 would saturate, U8U8 is exact"),
)}
DEFAULT_WEIGHTS = "uint8"  # model.onnx, served where no target fits: exact on every CPU
BUILD_FILES = {"uint8": DEFAULT_ARTIFACT, "int8": "model.u8s8.onnx"}


def parse_targets(names: Sequence[str]) -> List[Target]:
    """Known names, without repeats, in the order of preference of TARGETS (not the order given)."""
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise QuantizationError(f"unknown targets {unknown}; known: {', '.join(TARGETS)}")
    if not names:
        raise QuantizationError("no targets given")
    return [t for name, t in TARGETS.items() if name in names]


def gate_method(weights: str, cpu: CpuInfo) -> Dict[str, str]:
    """How the gate of a build with ``weights`` runs faithfully on ``cpu``, as recorded in model.yaml (``gated_on``)."""
    if weights == "uint8":
        return {"method": "direct", "cpu": cpu.describe(), "note": "U8U8 kernels are exact on every CPU"}
    if cpu.exact_u8s8:
        return {"method": "direct", "cpu": cpu.describe(), "note": "this CPU runs exact U8S8 kernels, as the target does"}
    return {"method": "exact-u8u8-twin", "cpu": cpu.describe(),
            "note": "this CPU's U8S8 kernels saturate (no VNNI); evaluated the file's exact twin (int8 weights stored as "
                    "uint8 + 128), whose integer sums equal what a VNNI CPU computes"}


def exact_u8u8_twin(path: Path) -> bytes:
    """The ONNX bytes of ``path`` with every int8 MatMulInteger weight (and its zero point) as uint8 + 128."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: Dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    shifted = 0
    for n in model.graph.node:
        if n.op_type != "MatMulInteger" or len(n.input) < 2:
            continue
        b, zp = n.input[1], (n.input[3] if len(n.input) > 3 else "")
        if b not in inits or inits[b].data_type != onnx.TensorProto.INT8:
            continue
        if zp and (zp not in inits or inits[zp].data_type != onnx.TensorProto.INT8):
            raise QuantizationError(f"{path}: MatMulInteger {n.name}: int8 weight with a zero point that is not an int8 constant")
        for slot, name in ((1, b), (3, zp)):
            if not name:
                continue
            arr = (numpy_helper.to_array(inits[name]).astype(np.int16) + 128).astype(np.uint8)
            if consumers[name] > 1:  # shared with another node: give this one its own copy
                name = f"{name}_u8twin_{n.name}"
                model.graph.initializer.append(numpy_helper.from_array(arr, name))
                n.input[slot] = name
            else:
                inits[name].CopyFrom(numpy_helper.from_array(arr, name))
        if not zp:
            # Without a zero point int8 weights are centred on 0: the uint8 twin's is 128.
            zname = f"{b}_u8twin_zero_point_{n.name}"
            model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), zname))
            while len(n.input) < 3:
                n.input.append("")
            if len(n.input) == 3:
                n.input.append(zname)
        shifted += 1
    if not shifted:
        raise QuantizationError(f"{path}: no MatMulInteger with int8 weights; nothing to twin")
    return model.SerializeToString()
