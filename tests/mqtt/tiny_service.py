"""A real tiny ONNX model (y = x @ W + b, dynamic batch) and a real service over it.

Stands in for the daemon's InferenceService in the MQTT tests: it validates
names, shapes and dtypes like the real one and runs a real ORT session. Also
runnable as a script to serve over MQTT in a child process (Last Will test).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge_agent.errors import InvalidInput, UnknownModel, UnknownVersion
from edge_agent.types import InferResponse

W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10).astype(np.float32)
B = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def expected(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) @ W + B


def build_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "tiny", [x], [y], initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class TinyService:
    def __init__(self, model_path: Path, name: str = "tiny", version: str = "1", delay_s: float = 0.0) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.name = name
        self.version = version
        self.delay_s = delay_s
        self.calls = 0
        self.requests = []  # the InferRequests seen, for assertions

    async def infer(self, req, transport="socket"):
        self.requests.append(req)
        if req.model != self.name:
            raise UnknownModel(f"model '{req.model}' is not served")
        if req.version not in (None, self.version):
            raise UnknownVersion(f"model '{req.model}' has no version '{req.version}'")
        x = req.inputs.get("x")
        if x is None or set(req.inputs) != {"x"}:
            raise InvalidInput(f"model '{self.name}' takes exactly one input 'x', got {sorted(req.inputs)}")
        if x.dtype != np.float32:
            raise InvalidInput(f"input 'x' must be FP32, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != 4:
            raise InvalidInput(f"input 'x' must have shape [-1, 4], got {list(x.shape)}")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.calls += 1
        (y,) = self.session.run(["y"], {"x": x})
        return InferResponse(model=self.name, version=self.version, outputs={"y": y}, id=req.id)

    def info(self) -> dict:
        return {"models": {self.name: [self.version]}, "queue_depth": 0}



class GatedService:
    """Holds every request until ``gate`` is set (so answers are produced
    while the broker is away, or a redelivery meets a request still running)."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = asyncio.Event()
        self.calls = 0
        self.info = inner.info

    async def infer(self, req, transport="socket"):
        self.calls += 1
        await self.gate.wait()
        return await self.inner.infer(req, transport)


async def _serve(argv: list[str]) -> None:
    """argv: model_path host port prefix device outbox_dir"""
    import signal

    from edge_agent.config import MqttConfig
    from edge_agent.transports.mqtt import MqttTransport

    model_path, host, port, prefix, device, outbox = argv
    svc = TinyService(Path(model_path))
    cfg = MqttConfig(enabled=True, host=host, port=int(port), prefix=prefix, reconnect_min_s=0.1, reconnect_max_s=1.0, keepalive_s=5)
    t = MqttTransport(cfg, device, svc, Path(outbox), svc.info, "test")
    await t.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("serving", flush=True)
    await stop.wait()
    await t.stop()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1:]))
