"""Models in ONNX Runtime: one version loaded, what it declares, where it runs.

What lives here:
  session.py     LoadedModel: one version in an ORT session: checks against
                 model.yaml, warm-up, request validation, batch runs
  ortsession.py  opening one ONNX file in an ORT session (options, threads, providers)
  model_spec.py  model.yaml: a version's signature, batching, warm-up and extras
  artifacts.py   which of a version's ONNX files (model.yaml artifacts) this machine serves
  cpu.py         what this CPU offers for INT8, from /proc/cpuinfo (daemon, quantize, doctor)
  providers.py   execution providers (TensorRT, CUDA, CPU), their options per
                 ONNX Runtime version, and the check of what bound
  text.py        text models: UTF-8 in, tokenized and padded; pooled embedding out
  memory.py      memory admission: a version's estimated need against available memory, before it loads
  input_limits.py  model.yaml limits: a request's elements, pixels, text bytes, tokens, before queueing
  image_model.py image models (model.yaml image:): encoded image in, decoded and pre-processed
                 on the batcher thread; outputs mapped back to the image's pixels
  detect_post.py image models' detector post-processing (model.yaml image.detect): YOLO
                 boxes decoded, NMS, mapped to the original image's pixels
"""
