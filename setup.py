"""edge-agent packaging. Versions are the ones the test suite ran with.

Two pin sets, chosen by the Python that installs (environment markers):

- Python >= 3.11: ``requirements.txt`` (numpy 2, ONNX Runtime 1.32; JetPack 6,
  x86_64 hosts). Tested on 3.11; 3.12 installs it too.
- Python 3.8 - 3.10: ``requirements-jetpack5.txt`` (numpy 1.24, ONNX Runtime
  1.16.3), the JetPack 5.1.x / Xavier set, tested on 3.8. 3.9 and 3.10 get it
  as well because requirements.txt does not install there (numpy 2.4 and
  ONNX Runtime 1.32 need 3.11) and every pin of this set has wheels for them
  (checked with ``pip install --dry-run`` on 3.9 and 3.10); JetPack 6's
  Python 3.10 is such a case.

Every runtime dependency installs on aarch64 (manylinux wheels or pure Python;
scripts/check_aarch64_wheels.sh). On a Jetson, ONNX Runtime with the CUDA and
TensorRT providers comes from NVIDIA's JetPack builds, not from the package
registry: see docs/INSTALL.md (scripts/install.sh --ort-wheel).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
NEW = 'python_version >= "3.11"'
OLD = 'python_version < "3.11"'
# requirements-jetpack5.txt pins for exactly 3.8: cffi 1.17.1 is the last cffi
# for 3.8, and cryptography 47.0.0 asks for cffi >= 2.0 from Python 3.9 on.
ONLY_38 = {"cffi"}


def pins(name: str, marker: str) -> list:
    """The pins of one requirements file, each limited to the Pythons it is for."""
    out = []
    for ln in (HERE / name).read_text().splitlines():
        req = ln.split("#", 1)[0].strip()
        if req:
            pkg = req.split("=", 1)[0].strip().lower()
            out.append(f"{req}; " + ('python_version < "3.9"' if marker == OLD and pkg in ONLY_38 else marker))
    return out


def both(new: list, old: list) -> list:
    return [f"{r}; {NEW}" for r in new] + [f"{r}; {OLD}" for r in old]


setup(
    name="edge-agent",
    version="0.1.0",
    description="ONNX Runtime inference daemon for edge AI units: socket + MQTT serving, cache, OTA model updates",
    packages=find_packages(include=["edge_agent", "edge_agent.*"]),
    python_requires=">=3.8",
    install_requires=pins("requirements.txt", NEW) + pins("requirements-jetpack5.txt", OLD),
    extras_require={
        # x86_64 / server GPUs (Python >= 3.11); on Jetson use NVIDIA's JetPack wheel instead.
        "gpu": both(["onnxruntime-gpu==1.32.0"], []),
        "trt": both(["tensorrt==10.13.3.9"], []),
        # dGPU telemetry on companion hosts (ops/nvml.py): NVIDIA's NVML bindings, pure Python (py3-none-any,
        # installs on aarch64 and 3.8); without it the edge_agent_gpu_* gauges are absent.
        "nvml": both(["nvidia-ml-py==13.615.71"], ["nvidia-ml-py==13.615.71"]),
        # Model building: quantization, export of the demo models.
        "build": both(["onnx==1.23.2", "scikit-learn==1.9.1", "matplotlib==3.11.2"],
                      ["onnx==1.17.0", "scikit-learn==1.3.2", "matplotlib==3.7.5"]),
        # The benchmarks' comparison server (scripts/mosec_digits.py) and plots.
        "bench": both(["mosec==0.9.8", "matplotlib==3.11.2"], ["matplotlib==3.7.5"]),
        # The test suite. On Python < 3.11 (the JetPack 5 stack, run on 3.8):
        # the last releases for 3.8 (tritonclient 2.51.0: later ones need geventhttpclient
        # >= 2.3.3, which has no 3.8 wheel; hypothesis 6.113.0, its last for 3.8); no matplotlib (only the bench scripts plot).
        "dev": both(
            ["onnx==1.23.2", "scikit-learn==1.9.1", "matplotlib==3.11.2", "pytest==9.2.0", "pytest-asyncio==1.5.0",
             "pytest-timeout==2.4.0", "tritonclient[http]==2.73.0", "vermin==1.9.2", "hypothesis==6.151.9"],
            ["onnx==1.17.0", "scikit-learn==1.3.2", "pytest==8.3.5", "pytest-asyncio==0.24.0",
             "pytest-timeout==2.4.0", "tritonclient[http]==2.51.0", "vermin==1.9.2", "hypothesis==6.113.0"],
        ),
    },
    entry_points={"console_scripts": ["edge-agent=edge_agent.cli:main"]},
)
