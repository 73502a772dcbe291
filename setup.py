"""edge-agent packaging. Versions are the ones the test suite ran with.

Every runtime dependency installs on aarch64 (manylinux2014_aarch64 wheels or
pure Python). On a Jetson, ONNX Runtime with the CUDA and TensorRT providers
comes from NVIDIA's JetPack builds, not from PyPI: see docs/INSTALL.md.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
RUNTIME = [ln.strip() for ln in (HERE / "requirements.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]

setup(
    name="edge-agent",
    version="0.1.0",
    description="ONNX Runtime inference daemon for edge AI units: socket + MQTT serving, cache, OTA model updates",
    packages=find_packages(include=["edge_agent", "edge_agent.*"]),
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={
        # x86_64 / server GPUs; on Jetson use NVIDIA's JetPack wheel instead.
        "gpu": ["onnxruntime-gpu==1.32.0"],
        "trt": ["tensorrt==10.13.3.9"],
        # Model building: quantization, export of the demo models.
        "build": ["onnx==1.23.2", "scikit-learn==1.9.1", "matplotlib==3.11.2"],
        # The benchmarks' comparison server (scripts/mosec_digits.py) and plots.
        "bench": ["mosec==0.9.8", "matplotlib==3.11.2"],
        "dev": [
            "onnx==1.23.2",
            "scikit-learn==1.9.1",
            "matplotlib==3.11.2",
            "hypothesis==6.151.9",
            "pytest==9.2.0",
            "pytest-asyncio==1.5.0",
            "pytest-timeout==2.4.0",
            "tritonclient[http]==2.73.0",
        ],
    },
    entry_points={"console_scripts": ["edge-agent=edge_agent.cli:main"]},
)
