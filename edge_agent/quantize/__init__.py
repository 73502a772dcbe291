"""Model quantization (INT8 QDQ / dynamic, FP16) behind an accuracy gate.

Heavy imports (onnxruntime.quantization) stay in the submodules so that the
daemon importing ``edge_agent.quantize.cli`` to register the subcommand does
not pay for them.

What lives here:
  cli.py          `edge-agent quantize`
  version.py      one version directory in, one gated quantized version directory out
  convert.py      FP32 -> INT8 static QDQ, INT8 dynamic, or FP16
  calibration.py  where calibration and evaluation batches come from
  targets.py      the CPU targets of --targets, and how each one's gate runs faithfully here
  smooth.py       SmoothQuant for weight MatMuls
  gate.py         the accuracy gate against the FP32 reference
  pipeline_version.py  a pipeline version's conv-net step (OCR det) as gated static INT8
  ocr_gate.py     the OCR pipeline in-process, and the det gate: box F1 and character error rate
"""
