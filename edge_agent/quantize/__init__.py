"""Model quantization (INT8 QDQ / dynamic, FP16) behind an accuracy gate.

Heavy imports (onnxruntime.quantization) stay in the submodules so that the
daemon importing ``edge_agent.quantize.cli`` to register the subcommand does
not pay for them.
"""
