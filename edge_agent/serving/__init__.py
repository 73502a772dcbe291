"""The transport-independent core: admit -> route -> cache -> batch -> respond.

What lives here:
  service.py     InferenceService, what every transport calls (start / settle, infer)
  admission.py   how long a request waited for the event loop: deadlines, load shedding
  repository.py  the model repository: every version on disk loaded, each with its batcher
  model_control.py  the operator's load / unload, persisted; refuses what conflicts with OTA
  batcher.py     the dynamic batcher, one per model version: queue, worker threads, deadlines
  codec.py       KServe v2 bodies (JSON and binary tensors) <-> InferRequest / InferResponse
"""
