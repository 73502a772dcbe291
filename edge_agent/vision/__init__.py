"""Images in: decoding with limits, declared pre-processing, and the vision post-processing ops.

Everything here is a plain function of numpy arrays (no model, no transport), run on a
batcher's worker thread, never on the event loop. Images are ``(H, W, 3)`` uint8 BGR.

  image.py       encoded bytes -> BGR array: size, pixel-count (before decoding) and channel limits
  preprocess.py  PreprocessSpec (model.yaml) -> tensor + Transform (tensor px -> original px)
"""
