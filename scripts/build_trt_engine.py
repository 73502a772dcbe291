#!/usr/bin/env python3
"""Build a standalone TensorRT engine from an ONNX model (on a Jetson / GPU host).

    scripts/build_trt_engine.py MODEL.onnx ENGINE.plan [--fp16] [--int8] [--dla-core N]
        [--workspace-mb 1024] [--timing-cache FILE] [--shape input_ids=1x16:8x64:32x256 ...]

--int8 is for explicitly quantized (QDQ) models: the scales come from the
graph, so no calibrator is used. Exit 2 when the tensorrt module is missing.
The daemon does not need this: ONNX Runtime's TensorRT provider builds and
caches engines itself; this is for trtexec-style inspection and pre-building.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_shape(s: str) -> tuple[str, tuple, tuple, tuple]:
    name, _, dims = s.partition("=")
    mn, opt, mx = (tuple(int(d) for d in part.split("x")) for part in dims.split(":"))
    return name, mn, opt, mx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("engine", type=Path)
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--int8", action="store_true", help="explicit INT8 from QDQ nodes")
    ap.add_argument("--dla-core", type=int, choices=[0, 1])
    ap.add_argument("--workspace-mb", type=int, default=1024)
    ap.add_argument("--timing-cache", type=Path)
    ap.add_argument("--shape", action="append", default=[], help="NAME=MINxD:OPTxD:MAXxD for dynamic inputs")
    args = ap.parse_args(argv)
    try:
        import tensorrt as trt
    except ImportError:
        print("build_trt_engine: the tensorrt Python module is not installed (JetPack ships it: "
              "python3-libnvinfer); nothing built", file=sys.stderr)
        return 2
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(args.onnx.read_bytes()):
        for i in range(parser.num_errors):
            print(f"build_trt_engine: {parser.get_error(i)}", file=sys.stderr)
        return 1
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if args.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if args.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if args.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = args.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if args.shape:
        profile = builder.create_optimization_profile()
        for s in args.shape:
            profile.set_shape(*parse_shape(s))
        config.add_optimization_profile(profile)
    cache = None
    if args.timing_cache:
        data = args.timing_cache.read_bytes() if args.timing_cache.exists() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        print("build_trt_engine: TensorRT failed to build the engine", file=sys.stderr)
        return 1
    args.engine.write_bytes(bytes(engine))
    if cache is not None:
        args.timing_cache.write_bytes(bytes(cache.serialize()))
    print(f"wrote {args.engine} ({args.engine.stat().st_size} bytes) with TensorRT {trt.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
