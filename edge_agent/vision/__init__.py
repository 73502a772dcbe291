"""Image models: decoding, declared pre- and post-processing, and the OCR pipeline's ops.

What lives here (visops' modules; imgin's and pipe's are listed beside them):
  dbnet.py        DB post-processing: a text detector's probability map -> text boxes
  crops.py        boxes -> filtered, reading-ordered, upright crops for the recogniser
  ctc.py          CTC greedy decoding with the rec model's character list
  angle.py        the text-angle classifier's 180° decision
  detect.py       YOLO-style box decoding and non-maximum suppression for object detectors
"""
