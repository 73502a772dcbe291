"""edge-agent packaging. Versions are the ones the test suite ran with.

Every runtime dependency installs on aarch64 (manylinux2014_aarch64 wheels or
pure Python). On a Jetson, ONNX Runtime with the CUDA and TensorRT providers
comes from NVIDIA's JetPack builds, not from PyPI: see docs/INSTALL.md.
"""

from setuptools import find_packages, setup

RUNTIME = [
    "onnxruntime==1.32.0",
    "numpy==2.4.6",
    "aiohttp==3.14.5",
    "uvloop==0.23.0",
    "orjson==3.13.0",
    "pydantic==2.14.4",
    "PyYAML==6.0.4",
    "prometheus-client==0.26.0",
    "psutil==7.2.2",
    "paho-mqtt==2.2.0",
    "cryptography==50.0.2",
    "tokenizers==0.23.3",
    "requests==2.34.2",
    "tqdm==4.70.1",
]

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
        "dev": [
            "onnx==1.23.2",
            "scikit-learn==1.9.1",
            "matplotlib==3.11.2",
            "pytest==9.2.0",
            "pytest-asyncio==1.5.0",
            "pytest-timeout==2.4.0",
            "tritonclient[http]==2.73.0",
        ],
    },
    entry_points={"console_scripts": ["edge-agent=edge_agent.cli:main"]},
)
