"""CTC greedy decoding of a text recogniser's output, the rule of RapidOCR 1.4.4's
``CTCLabelDecode`` for PP-OCR rec models, with the character list the model carries.

PP-OCR rec ONNX files store their dictionary in the model metadata (``character``, one
character a line). The class order the net was trained with is: 0 = CTC blank, then the
dictionary, then a space as the last class; ``charset_from_metadata`` rebuilds exactly that.
"""

from __future__ import annotations

from typing import List, Mapping, Sequence, Tuple

import numpy as np

BLANK = 0


def charset_from_metadata(meta: Mapping[str, str], key: str = "character") -> List[str]:
    """The class list of a PP-OCR rec model from its custom metadata map (ONNX Runtime's
    ``session.get_modelmeta().custom_metadata_map``): blank, the dictionary, space."""
    if key not in meta:
        raise KeyError(f"the model's metadata has no {key!r} (the rec model's character list)")
    return ["blank"] + meta[key].splitlines() + [" "]


def ctc_greedy(probs: np.ndarray, charset: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """(N, T, C) per-step class probabilities -> N texts and N scores.

    Best class per step; a step repeating the previous step's class is the same character
    held (dropped), blanks are dropped; the score is the mean probability of the kept
    steps (0.0 when nothing is kept)."""
    if probs.ndim != 3 or probs.shape[2] != len(charset):
        raise ValueError(f"ctc_greedy wants (N, T, {len(charset)}) probabilities, got shape {probs.shape}")
    best = probs.argmax(axis=2)
    best_p = probs.max(axis=2)
    keep = np.ones(best.shape, bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != BLANK
    texts, scores = [], np.zeros(len(best), np.float64)
    for i in range(len(best)):
        texts.append("".join(charset[c] for c in best[i][keep[i]]))
        if keep[i].any():
            scores[i] = float(np.mean(best_p[i][keep[i]].tolist()))
    return texts, scores
