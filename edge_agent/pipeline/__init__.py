"""Multi-model pipelines: several graphs of one version folder served as one model.

What lives here:
  spec.py    model.yaml ``pipeline:``: the steps, their ops and batching
  ops.py     what a step does around its graph: OCR detection (db), angle (angle), recognition (ctc)
  step.py    StepModel: one step's graph and op, run by a serving/batcher.py Batcher
  runner.py  PipelineRunner: one request through the step batchers (the batcher of a pipeline)
  model.py   PipelineModel: a pipeline version as one model (checks, warm-up, prepare, metadata)
"""
