"""Images in: decoding with limits, declared pre-processing, and the vision post-processing ops
(the OCR pipeline's ops among them).

Everything here is a plain function of numpy arrays (no model, no transport), run on a
batcher's worker thread, never on the event loop. Images are ``(H, W, 3)`` uint8 BGR.

  image.py       encoded bytes -> BGR array: size, pixel-count (before decoding) and channel limits
  preprocess.py  PreprocessSpec (model.yaml) -> tensor + Transform (tensor px -> original px)
  dbnet.py       DB post-processing: a text detector's probability map -> text boxes
  crops.py       boxes -> filtered, reading-ordered, upright crops for the recogniser
  ctc.py         CTC greedy decoding with the rec model's character list
  angle.py       the text-angle classifier's 180 degree decision
  detect.py      YOLO-style box decoding and non-maximum suppression for object detectors
"""
