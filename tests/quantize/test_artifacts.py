"""model.yaml ``artifacts``: the schema and the choice of the file this machine serves.

The chooser gets the CPU as recorded /proc/cpuinfo text (cpuinfo_samples.py):
an AVX2-only EPYC as CI runs on, the VNNI/AMX Xeon this project is built on,
and a Jetson AGX Xavier's Carmel core.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cpuinfo_samples import CARMEL, EPYC_7551_VM, XEON_AMX
from edge_agent.config import RuntimeConfig
from edge_agent.runtime.artifacts import choose_artifact, serving_providers
from edge_agent.runtime.cpu import parse_cpuinfo
from edge_agent.runtime.model_spec import ModelSpec

IO = {"inputs": [{"name": "x", "datatype": "FP32", "dims": [4]}], "outputs": [{"name": "y", "datatype": "FP32", "dims": [3]}]}
# What `edge-agent quantize --targets avx512vnni,avxvnni,avx2` writes, with a hand-added TensorRT file in front.
CPU_SET = [
    {"file": "model.u8s8.onnx", "requires": ["avx512_vnni"], "target": "avx512vnni"},
    {"file": "model.u8s8.onnx", "requires": ["avx_vnni"], "target": "avxvnni"},
    {"file": "model.onnx", "requires": ["avx2"], "target": "avx2"},
    {"file": "model.onnx"},
]
TRT = {"file": "model.qdq.onnx", "provider": "tensorrt", "precision": "int8-qdq", "target": "tensorrt"}
ARM = {"file": "model.arm64.onnx", "requires": ["asimd"], "target": "arm64"}
ARM_DOT = {"file": "model.dot.onnx", "requires": ["asimddp"], "target": "arm64dot"}


def spec(artifacts, precision="int8-dynamic") -> ModelSpec:
    return ModelSpec(**IO, precision=precision, artifacts=artifacts)


def test_cpuinfo_parsing_of_the_recorded_cpus():
    epyc, xeon, carmel = (parse_cpuinfo(t) for t in (EPYC_7551_VM, XEON_AMX, CARMEL))
    assert (epyc.arch, epyc.model, epyc.int8_features, epyc.exact_u8s8) == ("x86_64", "AMD EPYC 7551 32-Core Processor", ["avx2"], False)
    assert xeon.arch == "x86_64" and xeon.int8_features == ["amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2"] and xeon.exact_u8s8
    assert (carmel.arch, carmel.model, carmel.int8_features, carmel.exact_u8s8) == ("arm64", "NVIDIA Carmel (Xavier)", [], True)
    assert carmel.has("asimd") and not carmel.has("asimddp")


@pytest.mark.parametrize("cpuinfo,providers,file,target,reason", [
    (XEON_AMX, ["cpu"], "model.u8s8.onnx", "avx512vnni", "CPU has avx512_vnni"),
    (EPYC_7551_VM, ["cpu"], "model.onnx", "avx2", "CPU has avx2"),
    (CARMEL, ["cpu"], "model.onnx", "default",
     "default (this CPU/provider does not fit: tensorrt: no tensorrt provider; avx512vnni: no avx512_vnni; avxvnni: no avx_vnni; "
     "avx2: no avx2)"),
    # A TensorRT file is first choice wherever TensorRT is configured and present, whatever the CPU.
    (CARMEL, ["tensorrt", "cuda", "cpu"], "model.qdq.onnx", "tensorrt", "tensorrt provider configured and available"),
    (XEON_AMX, ["cuda", "cpu"], "model.u8s8.onnx", "avx512vnni", "CPU has avx512_vnni"),
])
def test_choice_per_cpu_and_provider(cpuinfo, providers, file, target, reason):
    c = choose_artifact(spec([TRT, *CPU_SET]), parse_cpuinfo(cpuinfo), providers)
    assert (c.file, c.target, c.reason) == (file, target, reason)
    assert c.precision == ("int8-qdq" if file == "model.qdq.onnx" else "int8-dynamic")


def test_avx_vnni_alone_takes_the_int8_weight_file():
    """An Alder Lake-class client CPU: VNNI without AVX-512."""
    alder = parse_cpuinfo("processor\t: 0\nmodel name\t: 12th Gen Intel(R) Core(TM) i7-1265U\nflags\t\t: fpu sse2 avx avx2 fma avx_vnni\n")
    c = choose_artifact(spec(CPU_SET), alder, ["cpu"])
    assert (c.file, c.target) == ("model.u8s8.onnx", "avxvnni")


def test_arm_entries_by_feature():
    s = spec([ARM_DOT, ARM, *CPU_SET])
    assert choose_artifact(s, parse_cpuinfo(CARMEL)).target == "arm64"  # Carmel has no dot product
    orin = parse_cpuinfo(CARMEL.replace("asimdrdm", "asimdrdm asimddp").replace("0x4e", "0x41").replace("0x004", "0xd42"))
    assert orin.model == "Cortex-A78AE (Orin)"
    assert choose_artifact(s, orin).target == "arm64dot"
    assert choose_artifact(s, parse_cpuinfo(XEON_AMX)).target == "avx512vnni"


def test_no_artifacts_is_model_onnx_as_before():
    c = choose_artifact(ModelSpec(**IO), parse_cpuinfo(XEON_AMX), ["tensorrt", "cpu"])
    assert (c.file, c.entry, c.target, c.precision, c.reason) == ("model.onnx", None, "", "fp32", "no artifacts declared")
    assert ModelSpec(**IO).artifact_files() == ["model.onnx"]
    assert spec([TRT, *CPU_SET]).artifact_files() == ["model.qdq.onnx", "model.u8s8.onnx", "model.onnx"]


def test_no_flags_readable_takes_the_default():
    c = choose_artifact(spec(CPU_SET), parse_cpuinfo("", machine="x86_64"))
    assert c.file == "model.onnx" and c.target == "default"


def test_serving_providers_are_configured_and_available():
    cfg = RuntimeConfig(providers=["tensorrt", "cuda", "cpu"])
    assert serving_providers(cfg, ["CPUExecutionProvider"]) == ["cpu"]
    assert serving_providers(cfg, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == ["tensorrt", "cuda", "cpu"]
    assert serving_providers(RuntimeConfig(providers=["cpu"]), ["TensorrtExecutionProvider", "CPUExecutionProvider"]) == ["cpu"]


@pytest.mark.parametrize("artifacts,words", [
    ([], "last entry must be the default"),
    ([{"file": "model.u8s8.onnx", "requires": ["avx512_vnni"]}], "last entry must be the default"),
    ([{"file": "model.other.onnx"}], "last entry must be the default"),
    ([{"file": "model.onnx", "requires": ["avx2"]}], "last entry must be the default"),
    ([{"file": "a.onnx", "requires": ["avx512vnni"]}, {"file": "model.onnx"}], "unknown CPU features ['avx512vnni']"),
    ([{"file": "../a.onnx"}, {"file": "model.onnx"}], "plain file name"),
    ([{"file": "sub/a.onnx"}, {"file": "model.onnx"}], "plain file name"),
    ([{"file": "a.bin"}, {"file": "model.onnx"}], "ending in .onnx"),
    ([{"file": "a.onnx", "provider": "vulkan"}, {"file": "model.onnx"}], "provider"),
    ([{"file": "a.onnx", "requires": ["avx2"]}, {"file": "b.onnx", "requires": ["avx2", "avx512_vnni"]}, {"file": "model.onnx"}],
     "entry 2 (b.onnx, needs avx2 + avx512_vnni) can never be chosen: entry 1 (a.onnx, needs avx2)"),
    ([{"file": "a.onnx", "provider": "tensorrt"}, {"file": "b.onnx", "provider": "tensorrt", "requires": ["avx2"]}, {"file": "model.onnx"}],
     "entry 2 (b.onnx"),
    ([{"file": "a.onnx"}, {"file": "model.onnx"}], "entry 2 (model.onnx, needs always) can never be chosen"),
    ([{"file": "a.onnx", "requires": ["avx2"], "speed": "fast"}, {"file": "model.onnx"}], "speed"),
])
def test_schema_refuses(artifacts, words):
    with pytest.raises(ValidationError) as e:
        spec(artifacts)
    assert words in str(e.value)


def test_schema_accepts_the_shapes_it_documents():
    spec([TRT, ARM_DOT, ARM, *CPU_SET])
    spec([{"file": "model.onnx"}])
    # Different providers do not shadow each other; a provider entry does not shadow a CPU one.
    spec([{"file": "a.onnx", "provider": "tensorrt"}, {"file": "b.onnx", "provider": "cuda"}, {"file": "model.onnx"}])
